"""What earlier snapshots saw: the inputs of the two keep rules only history makes possible.

    seen in use   image references that stored snapshots within `keepImagesSeenInUseWithin` of
                  the evaluated one saw in a workload (not a finished Job) or a Helm revision
    first seen    the first snapshot that listed a (repository, digest) with no trustworthy build
                  time: its time stands in as the build time (`firstSeenAsBuildTime`)

Both are read from stored snapshots only and bounded by the evaluated snapshot's own time, so a
plan stays a pure function of (stored snapshots, policy). They reach the evaluation as extra tables
(`seen_in_use`: SEEN_IN_USE, `first_seen`: FIRST_SEEN); `HistoryInputs` builds them for one
plan or for a replay over many snapshots.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.plan.codes import US
from tasks.common.errors import StoreError
from tasks.plan.inputs import snapshot_now
from tasks.plan.references import helm_revision_names, workload_names
from tasks.config.policy import CleanupPolicy
from tasks.oci.reference import registry_key
from tasks.store import caches
from tasks.store.schemas import FIRST_SEEN, FIRST_SEEN_CACHE, SEEN_IN_USE, TS
from tasks.store.store import ID_FORMAT, Store
from tasks.common.units import TRUSTED_SINCE, compact_ages, parse_time

FIRST_SEEN_CACHE_NAME = caches.FIRST_SEEN.name()
_WHAT = {"kubernetes": "in use", "helm": "in Helm"}
#: Snapshot ids start with their time (tasks/store/store.py new_id); only ids this close to a window
#: have their snapshot.json read, whose created_at then decides.
_ID_SLACK = timedelta(days=1)


# ------------------------------------------------------------------ seen in use

def sightings(store: Store, snapshot_id: str, meta: dict[str, Any]) -> pa.Table:
    """What one snapshot saw, one row per (image, image_id, source): `key` (the three joined),
    image, image_id, source and `what` (the workload or revision). A source that did not succeed
    in that snapshot contributes nothing: only its ok tables are facts."""
    sources = meta.get("sources") or {}
    parts = []
    if (sources.get("kubernetes") or {}).get("status") == "ok":
        w = store.snapshots.table(snapshot_id, "workloads", columns=[
            "context", "namespace", "kind", "name", "container", "container_type", "image", "image_id", "finished"])
        if w is not None:
            w = w.filter(pc.invert(pc.fill_null(w["finished"], False)))
            parts.append(_seen_rows(w["image"], w["image_id"], "kubernetes", workload_names(w)))
    if (sources.get("helm") or {}).get("status") == "ok":
        h = store.snapshots.table(snapshot_id, "helm", columns=["context", "namespace", "release", "revision", "image"])
        if h is not None:
            # the revision without its status: see helm_revision_names
            parts.append(_seen_rows(h["image"], pa.nulls(h.num_rows, pa.string()), "helm",
                                    helm_revision_names(h, status=False)))
    if not parts:
        return _SIGHTINGS.empty_table()
    t = pa.concat_tables(parts).sort_by([("key", "ascending"), ("what", "ascending")])
    # one row per key, naming the first workload or revision in sort order (deterministic)
    k = t["key"].to_numpy(zero_copy_only=False)
    return t.filter(pa.array(np.r_[True, k[1:] != k[:-1]] if len(k) else np.zeros(0, bool)))


_SIGHTINGS = pa.schema([pa.field(c, pa.string()) for c in ("key", "image", "image_id", "source", "what")])


def _join(*parts) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(*parts, "")


def _seen_rows(image, image_id, source: str, what) -> pa.Table:
    key = _join(image, "\0", pc.fill_null(image_id, ""), "\0", source)
    n = len(image)
    return pa.table({"key": key, "image": image, "image_id": image_id,
                     "source": pa.array([source] * n, pa.string()), "what": what}, schema=_SIGHTINGS)


def seen_in_use(metas: dict[str, dict[str, Any]], frames, now: datetime, window: timedelta,
                exclude: str | None = None) -> pd.DataFrame:
    """SEEN_IN_USE: every (image, image_id, source) the snapshots in `metas` with created_at in
    [now - window, now] saw (`frames(snapshot_id)`: their `sightings` as {column: object array}),
    at its latest sighting. `exclude` is the evaluated snapshot: what it sees is rule 1's and
    2's, not history's."""
    start = now - window
    chosen = []
    for sid, meta in metas.items():
        if sid == exclude or not _within(meta, start, now):
            continue
        f = frames(sid)
        if len(f["key"]):
            chosen.append((int(parse_time(meta["created_at"]).timestamp() * US), sid, f))
    if not chosen:
        return SEEN_IN_USE.empty_table().to_pandas()
    # latest first; between snapshots of one instant the larger id, so the choice is stable
    chosen.sort(key=lambda c: (c[0], c[1]), reverse=True)
    sizes = np.array([len(f["key"]) for *_, f in chosen], np.int64)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    rank = np.repeat(np.arange(len(chosen)), sizes)
    codes = np.concatenate([f["code"] for *_, f in chosen]) if all("code" in f for *_, f in chosen) \
        else pd.factorize(np.concatenate([f["key"] for *_, f in chosen]))[0]
    order = np.lexsort((rank, codes))
    pick = order[np.r_[True, codes[order][1:] != codes[order][:-1]]]
    pick.sort()   # in the order sightings were listed: latest snapshot first
    r = rank[pick]
    # gather only the picked rows, snapshot by snapshot (picks of one snapshot are contiguous)
    bounds = np.searchsorted(r, np.arange(len(chosen) + 1))
    row = pick - starts[r]
    col = {c: np.concatenate([chosen[k][2][c][row[bounds[k]:bounds[k + 1]]] for k in range(len(chosen))])
           for c in ("image", "image_id", "source", "what")}
    at = np.array([c[0] for c in chosen], np.int64)
    sid = np.array([c[1] for c in chosen], dtype=object)
    codes_age, fmt = compact_ages(int(now.timestamp() * US) - at)
    head = np.array([f" {fmt[k]} ago: " for k in codes_age], dtype=object)
    tail = np.array([f" (snapshot {x})" for x in sid], dtype=object)
    label = pd.Series(col["source"]).map({k: f"seen {v}" for k, v in _WHAT.items()}).to_numpy(dtype=object)
    text = label + head[r] + col["what"] + tail[r]
    obj = lambda a: pd.Series(a, dtype=object)  # noqa: E731 - as `references` reads them, no conversion
    return pd.DataFrame({"image": obj(col["image"]), "image_id": obj(col["image_id"]),
                         "source": obj(col["source"]), "seen_at": pd.to_datetime(at[r], unit="us", utc=True),
                         "snapshot": obj(sid[r]), "text": obj(text)})[SEEN_IN_USE.names]


# ------------------------------------------------------------------ first seen

def _untimed(table: pa.Table) -> pa.Table:
    """Manifests with no trustworthy build time. The registry source records none for a time
    before 2013 (reproducible builds' 1970); one found in a table anyway counts as none too."""
    created = table["created"]
    trusted = pc.greater_equal(created, pa.scalar(TRUSTED_SINCE, TS))
    return table.filter(pc.invert(pc.fill_null(trusted, False)))


def update_first_seen(store: Store, snapshot_ids: list[str],
                      meta: Callable[[str], dict[str, Any]] | None = None) -> tuple[pa.Table, set[str]]:
    """FIRST_SEEN_CACHE over `snapshot_ids` (every published snapshot) and the ids folded in;
    `meta` reads a snapshot.json (default: the store's).

    The cache in the store is extended by the snapshots it does not hold yet, reading only their
    (repository, digest, created) columns, and written back. If a snapshot it folded in is gone
    from the store the cache is rebuilt, so it is always exactly a function of the snapshots there.

    Only untimed manifests are recorded: the rule asks about no other. A manifest's build time is
    part of its content (annotation or config), so a digest untimed in one snapshot is untimed in
    all; one whose config could not be read is kept as unreadable whatever this says.
    """
    meta = meta or store.snapshot_meta
    cached = store.caches.read(FIRST_SEEN_CACHE_NAME)
    table, folded = FIRST_SEEN_CACHE.empty_table(), set()
    if cached is not None:
        try:
            folded = set(json.loads((cached.schema.metadata or {}).get(b"snapshots", b"[]")))
            table = cached.select(FIRST_SEEN_CACHE.names).cast(FIRST_SEEN_CACHE)
        except (KeyError, ValueError, pa.ArrowInvalid, TypeError):
            table, folded = FIRST_SEEN_CACHE.empty_table(), set()   # unreadable: only a slower run
    listed = set(snapshot_ids)
    if folded - listed:
        table, folded = FIRST_SEEN_CACHE.empty_table(), set()
    new = sorted(listed - folded)
    if not new:
        return table, folded
    parts = [table]
    for sid in new:
        m = meta(sid)
        at = parse_time(m.get("created_at"))
        t = store.snapshots.table(sid, "manifests", columns=["repository", "digest", "created"])
        folded.add(sid)
        if t is None or at is None:
            continue   # its registry source failed or was skipped: it listed nothing
        t = _untimed(t)
        n = t.num_rows
        parts.append(pa.table({
            "registry": pa.array([registry_key(m.get("registry"))] * n, pa.string()),
            "repository": t["repository"], "digest": t["digest"],
            "first_seen": pa.array([at] * n, TS), "snapshot": pa.array([sid] * n, pa.string()),
        }, schema=FIRST_SEEN_CACHE))
    combined = pa.concat_tables(parts)
    keys = ["registry", "repository", "digest"]
    # the earliest snapshot per key (ties: the smaller id), whatever order snapshots were folded in
    combined = combined.sort_by([(k, "ascending") for k in keys] + [("first_seen", "ascending"), ("snapshot", "ascending")])
    g = combined.group_by(keys, use_threads=False).aggregate([("first_seen", "first"), ("snapshot", "first")])
    table = pa.table({**{k: g[k] for k in keys}, "first_seen": g["first_seen_first"], "snapshot": g["snapshot_first"]},
                     schema=FIRST_SEEN_CACHE)
    table = table.sort_by([(k, "ascending") for k in keys])
    try:
        store.caches.write(FIRST_SEEN_CACHE_NAME, table.replace_schema_metadata(
            {"snapshots": json.dumps(sorted(folded))}))
    except StoreError:
        pass   # a cache that cannot be written is only a slower next run
    return table, folded


def first_seen(table: pa.Table, registry: str | None, now: datetime) -> pd.DataFrame:
    """FIRST_SEEN for one registry as of `now`.

    The earliest snapshot over all stored snapshots equals the earliest over those up to the
    evaluated one for every digest the evaluated snapshot lists (it lists it itself at `now`), and
    the rule only asks about those: later snapshots change nothing, so the plan stays pure.
    Rows first seen after `now` are dropped so the table says so too.
    """
    keep = pc.and_(pc.equal(table["registry"], registry_key(registry)),
                   pc.less_equal(table["first_seen"], pa.scalar(now, TS)))
    return table.filter(keep).select(FIRST_SEEN.names).cast(FIRST_SEEN).to_pandas()


# ------------------------------------------------------------------ for plans and replays

class HistoryInputs:
    """The extra evaluation tables for plans of snapshots of one store.

    Reuse one instance to evaluate many snapshots (a what-if replay): snapshot ids are listed
    once, each snapshot.json and each snapshot's workload and Helm tables are read at most once,
    and the first-seen cache is brought up to date once.
    """

    def __init__(self, store: Store):
        self.store = store
        self._ids: list[str] | None = None
        self._metas: dict[str, dict[str, Any]] = {}
        self._frames: dict[str, dict[str, np.ndarray]] = {}
        self._keys = pd.Index([], dtype=object)   # every sighting key seen so far, coded by position
        self._first: pa.Table | None = None
        self._folded: set[str] = set()

    def for_snapshot(self, snapshot_id: str, cleanup: CleanupPolicy) -> dict[str, pd.DataFrame]:
        """Tables to add to `read_tables`' (or `read_frames`') before evaluating: `seen_in_use` when
        keepImagesSeenInUseWithin is set, `first_seen` when firstSeenAsBuildTime is on (and the
        fresh rule is); {} when neither is."""
        out: dict[str, pd.DataFrame] = {}
        if cleanup.keepImagesSeenInUseWithin is not None:
            out["seen_in_use"] = self.seen_in_use(snapshot_id, cleanup.keepImagesSeenInUseWithin)
        if cleanup.firstSeenAsBuildTime and not cleanup.disableBuiltWithinLastNHoursPolicy:
            out["first_seen"] = self.first_seen(snapshot_id)
        return out

    def seen_in_use(self, snapshot_id: str, window: timedelta) -> pd.DataFrame:
        now = snapshot_now(self.meta(snapshot_id))
        lo, hi = now - window - _ID_SLACK, now + _ID_SLACK
        near = {sid: self.meta(sid) for sid in self.ids() if _id_time_between(sid, lo, hi)}
        self._read_sightings([sid for sid, m in near.items() if _within(m, now - window, now) and sid != snapshot_id])
        return seen_in_use(near, self._sightings, now, window, exclude=snapshot_id)

    def first_seen(self, snapshot_id: str) -> pd.DataFrame:
        meta = self.meta(snapshot_id)
        if self._first is None or snapshot_id not in self._folded:
            if self._first is not None:
                self._ids = None   # published since this replay listed the store
            self._first, self._folded = update_first_seen(self.store, self.ids(), self.meta)
        return first_seen(self._first, meta.get("registry"), snapshot_now(meta))

    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = self.store.snapshots.list()
        return self._ids

    def meta(self, snapshot_id: str) -> dict[str, Any]:
        if snapshot_id not in self._metas:
            self._metas[snapshot_id] = self.store.snapshots.meta(snapshot_id)
        return self._metas[snapshot_id]

    def _sightings(self, snapshot_id: str) -> dict[str, np.ndarray]:
        return self._frames[snapshot_id]

    def _read_sightings(self, snapshot_ids: list[str]) -> None:
        """Read the sightings of snapshots not read yet, as object arrays with their keys coded
        over this instance (`code`), so each window sorts integers; one coding pass per batch."""
        todo = [sid for sid in snapshot_ids if sid not in self._frames]
        if not todo:
            return
        frames = []
        for sid in todo:
            t = sightings(self.store, sid, self.meta(sid))
            frames.append({c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names})
        keys = np.concatenate([f["key"] for f in frames])
        new = pd.unique(keys[self._keys.get_indexer(keys) < 0]) if len(self._keys) else pd.unique(keys)
        if len(new):
            self._keys = self._keys.append(pd.Index(new, dtype=object))
        code = self._keys.get_indexer(keys).astype(np.int64)
        at = 0
        for sid, f in zip(todo, frames):
            n = len(f["key"])
            self._frames[sid] = {**f, "code": code[at:at + n]}
            at += n


def _within(meta: dict[str, Any], start: datetime, end: datetime) -> bool:
    at = parse_time(meta.get("created_at"))
    return at is not None and start <= at <= end


def _id_time_between(snapshot_id: str, lo: datetime, hi: datetime) -> bool:
    """Whether an id's leading time is within [lo, hi]; ids not in new_id's form are let through."""
    try:
        t = datetime.strptime(snapshot_id[:15], ID_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return True
    return lo <= t <= hi
