"""What earlier snapshots saw: the inputs of the two keep rules only history makes possible.

    seen in use   image references that stored snapshots within `keepImagesSeenInUseWithin` of
                  the evaluated one saw in a workload (not a finished Job) or a Helm revision
    first seen    the first snapshot that listed a (repository, digest) with no trustworthy build
                  time: its time stands in as the build time (`firstSeenAsBuildTime`)

Both are read from stored snapshots only and bounded by the evaluated snapshot's own time, so a
plan stays a pure function of (stored snapshots, policy). They reach `evaluate` as extra tables
(`seen_in_use`: SEEN_IN_USE, `first_seen`: FIRST_SEEN); `HistoryInputs` builds them for one
plan or for a replay over many snapshots.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.codes import US
from tasks.errors import StoreError
from tasks.evaluate import _CTYPE, _age_texts, snapshot_now
from tasks.policy import CleanupPolicy
from tasks.reference import registry_key
from tasks.schemas import FIRST_SEEN, FIRST_SEEN_CACHE, SEEN_IN_USE, TS
from tasks.store import ID_FORMAT, Store
from tasks.units import TRUSTED_SINCE, parse_time

FIRST_SEEN_CACHE_NAME = "first-seen"
_WHAT = {"kubernetes": "in use", "helm": "in Helm"}
#: Snapshot ids start with their time (tasks/store.py new_id); only ids this close to a window
#: have their snapshot.json read, whose created_at then decides.
_ID_SLACK = timedelta(days=1)


# ------------------------------------------------------------------ seen in use

def sightings(store: Store, snapshot_id: str, meta: dict[str, Any]) -> pd.DataFrame:
    """What one snapshot saw, one row per (image, image_id, source), SEEN_IN_USE columns but `text`
    (`what` instead: the workload or revision). A source that did not succeed in that snapshot
    contributes nothing: only its ok tables are facts."""
    sources = meta.get("sources") or {}
    parts = []
    if (sources.get("kubernetes") or {}).get("status") == "ok":
        wl = store.snapshot_table(snapshot_id, "workloads", columns=[
            "context", "namespace", "kind", "name", "container", "container_type", "image", "image_id", "finished"])
        if wl is not None:
            w = wl.to_pandas()
            w = w[~w["finished"].astype(bool).to_numpy()]
            parts.append(pd.DataFrame({
                "image": w["image"], "image_id": w["image_id"], "source": "kubernetes",
                "what": (w["context"] + "/" + w["namespace"] + "/" + w["kind"] + "/" + w["name"] + " "
                         + w["container_type"].map(_CTYPE).fillna("container") + " " + w["container"])}))
    if (sources.get("helm") or {}).get("status") == "ok":
        hl = store.snapshot_table(snapshot_id, "helm", columns=["context", "namespace", "release", "revision", "image"])
        if hl is not None:
            h = hl.to_pandas()
            parts.append(pd.DataFrame({
                "image": h["image"], "image_id": None, "source": "helm",
                "what": h["context"] + "/" + h["namespace"] + "/" + h["release"] + " revision " + h["revision"].astype(str)}))
    cols = ["image", "image_id", "source", "what"]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    df = pd.concat(parts, ignore_index=True)[cols].astype(object)
    df["image_id"] = df["image_id"].where(df["image_id"].notna(), None)
    # one row per key, naming the first workload or revision in sort order (deterministic)
    key = df["image_id"].fillna("")
    order = np.lexsort((df["what"].to_numpy(dtype=object).astype(str), df["source"].to_numpy(dtype=object).astype(str),
                        key.to_numpy(dtype=object).astype(str), df["image"].to_numpy(dtype=object).astype(str)))
    df = df.iloc[order]
    return df[~df.assign(_k=key).duplicated(["image", "_k", "source"])].reset_index(drop=True)


def seen_in_use(metas: dict[str, dict[str, Any]], frames, now: datetime, window: timedelta,
                exclude: str | None = None) -> pd.DataFrame:
    """SEEN_IN_USE: every (image, image_id, source) the snapshots in `metas` with created_at in
    [now - window, now] saw (`frames(snapshot_id)` gives their sightings), at its latest sighting.
    `exclude` is the evaluated snapshot: what it sees is rule 1's and 2's, not history's."""
    start = now - window
    rows = []
    for sid, meta in metas.items():
        at = parse_time(meta.get("created_at"))
        if sid == exclude or at is None or not (start <= at <= now):
            continue
        f = frames(sid)
        if len(f):
            rows.append(f.assign(seen_at=int(at.timestamp() * US), snapshot=sid))
    if not rows:
        return SEEN_IN_USE.empty_table().to_pandas()
    df = pd.concat(rows, ignore_index=True)
    key = df["image_id"].fillna("")
    # the latest sighting; between snapshots of one instant the larger id, so the choice is stable
    df = df.assign(_k=key).sort_values(["image", "_k", "source", "seen_at", "snapshot"],
                                       ascending=[True, True, True, False, False], kind="stable")
    df = df[~df.duplicated(["image", "_k", "source"])].reset_index(drop=True)
    codes, fmt = _age_texts(int(now.timestamp() * US) - df["seen_at"].to_numpy(np.int64))
    ages = pd.Series(np.asarray(fmt, dtype=object)[codes] if len(fmt) else [], dtype=object, index=df.index)
    text = ("seen " + df["source"].map(_WHAT) + " " + ages + " ago: " + df["what"] + " (snapshot " + df["snapshot"] + ")")
    return pd.DataFrame({"image": df["image"], "image_id": df["image_id"], "source": df["source"],
                         "seen_at": pd.to_datetime(df["seen_at"], unit="us", utc=True), "snapshot": df["snapshot"],
                         "text": text})[SEEN_IN_USE.names]


# ------------------------------------------------------------------ first seen

def _untimed(table: pa.Table) -> pa.Table:
    """Manifests with no trustworthy build time: none, or before 2013 (snapshots taken before
    regsweep dropped such times recorded them)."""
    created = table["created"]
    trusted = pc.greater_equal(created, pa.scalar(TRUSTED_SINCE, TS))
    return table.filter(pc.invert(pc.fill_null(trusted, False)))


def update_first_seen(store: Store, snapshot_ids: list[str],
                      meta=None) -> tuple[pa.Table, set[str]]:
    """FIRST_SEEN_CACHE over `snapshot_ids` (every published snapshot) and the ids folded in.

    The cache in the store is extended by the snapshots it does not hold yet, reading only their
    (repository, digest, created) columns, and written back. If a snapshot it folded in is gone
    from the store the cache is rebuilt, so it is always exactly a function of the snapshots there.

    Only untimed manifests are recorded: the rule asks about no other. A manifest's build time is
    part of its content (annotation or config), so a digest untimed in one snapshot is untimed in
    all; one whose config could not be read is kept as unreadable whatever this says.
    """
    meta = meta or store.snapshot_meta
    cached = store.read_cache(FIRST_SEEN_CACHE_NAME)
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
        t = store.snapshot_table(sid, "manifests", columns=["repository", "digest", "created"])
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
        store.write_cache(FIRST_SEEN_CACHE_NAME, table.replace_schema_metadata(
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
        self._frames: dict[str, pd.DataFrame] = {}
        self._first: pa.Table | None = None
        self._folded: set[str] = set()

    def for_snapshot(self, snapshot_id: str, cleanup: CleanupPolicy) -> dict[str, pd.DataFrame]:
        """Tables to add to `load_snapshot`'s before `evaluate`: `seen_in_use` when
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
            self._ids = self.store.list_snapshots()
        return self._ids

    def meta(self, snapshot_id: str) -> dict[str, Any]:
        if snapshot_id not in self._metas:
            self._metas[snapshot_id] = self.store.snapshot_meta(snapshot_id)
        return self._metas[snapshot_id]

    def _sightings(self, snapshot_id: str) -> pd.DataFrame:
        if snapshot_id not in self._frames:
            self._frames[snapshot_id] = sightings(self.store, snapshot_id, self.meta(snapshot_id))
        return self._frames[snapshot_id]


def _id_time_between(snapshot_id: str, lo: datetime, hi: datetime) -> bool:
    """Whether an id's leading time is within [lo, hi]; ids not in new_id's form are let through."""
    try:
        t = datetime.strptime(snapshot_id[:15], ID_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return True
    return lo <= t <= hi
