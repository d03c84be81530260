"""Per-snapshot summaries: what the growth report and the what-if read of each snapshot.

Each snapshot is boiled down once to a small summary (per repository: tags, manifests, image
bytes, unique bytes; HISTORY_SUMMARY), each pair of consecutive snapshots to a diff (tags added,
removed, moved to another digest; HISTORY_DIFF), and its BLOBS to a FootprintIndex. Snapshots never
change once published, so all three are cached in the store (tasks/store/caches.py): the snapshot
flow writes them as a named step (`cache_history_inputs`) right after publishing; the readers in
tasks/history/ build any that are missing (snapshots taken before the caches existed).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.snapshot.footprint import COLUMNS, Footprint, write_index
from tasks.store.caches import diff_name, summary_name
from tasks.store.schemas import HISTORY_DIFF, HISTORY_SUMMARY
from tasks.store.store import Store


def _tags(store: Store, sid: str) -> pa.Table | None:
    t = store.snapshots.table(sid, "tags", columns=["repository", "tag", "digest", "gone"])
    if t is None:
        return None
    return t.filter(pc.and_(pc.invert(t["gone"]), pc.is_valid(t["digest"]))).select(["repository", "tag", "digest"])


def _counted(meta: dict) -> bool:
    """Whether the snapshot's registry source read everything (old snapshots record no sources)."""
    st = (meta.get("sources") or {}).get("registry")
    return st is None or st.get("status") == "ok"


def summarize(store: Store, sid: str, tags: pa.Table | None, index: bool = False) -> pa.Table:
    """HISTORY_SUMMARY of one snapshot; no rows when its registry tables are not there. With
    `index` also caches the snapshot's FootprintIndex (for the what-if) from the same footprint."""
    manifests = store.snapshots.table(sid, "manifests", columns=["repository", "digest", "size", "subject"])
    if tags is None or manifests is None or not _counted(store.snapshots.meta(sid)):
        return HISTORY_SUMMARY.empty_table()
    n_tags = tags.group_by("repository").aggregate([("tag", "count")])
    n_man = manifests.group_by("repository").aggregate([("digest", "count")])
    # Each manifest's size already counts its config and layers (an index: its platforms), so only
    # top-level manifests are summed; shared layers count in every image (the "image bytes").
    top = manifests.filter(pc.is_null(manifests["subject"]))
    children = store.snapshots.table(sid, "children", columns=["child_digest"])
    if children is not None and children.num_rows:
        top = top.filter(pc.invert(pc.is_in(top["digest"], value_set=pc.unique(children["child_digest"]))))
    sizes = top.group_by(["repository", "digest"]).aggregate([("size", "max")]).group_by("repository").aggregate(
        [("size_max", "sum")])
    fp = Footprint.of(store.snapshots.table(sid, "blobs", columns=COLUMNS))
    repos = sorted(set(n_tags["repository"].to_pylist()) | set(n_man["repository"].to_pylist()))

    def per(table: pa.Table, col: str) -> np.ndarray:
        d = dict(zip(table["repository"].to_pylist(), table[col].to_pylist()))
        return np.array([d.get(r) or 0 for r in repos], np.int64)

    tags_n, man_n, img = per(n_tags, "tag_count"), per(n_man, "digest_count"), per(sizes, "size_max_sum")
    uniq = fp.unique_bytes_by_repository() if fp is not None else None
    if index:
        write_index(store, sid, fp)
    return pa.Table.from_pydict({
        "repository": [None, *repos],
        "tags": [int(tags_n.sum()), *tags_n.tolist()],
        "manifests": [int(man_n.sum()), *man_n.tolist()],
        "image_bytes": [int(img.sum()), *img.tolist()],
        "unique_bytes": [None] * (len(repos) + 1) if uniq is None else [fp.unique_bytes, *(uniq.get(r, 0) for r in repos)],
    }, schema=HISTORY_SUMMARY)


def diff(prev: pa.Table, cur: pa.Table) -> pa.Table:
    """Tags added, removed and moved per repository from `prev` to `cur` (by (repository, tag))."""
    j = cur.join(prev, ["repository", "tag"], join_type="full outer", right_suffix="_prev")
    added = pc.is_null(j["digest_prev"])
    removed = pc.is_null(j["digest"])
    moved = pc.fill_null(pc.not_equal(j["digest"], j["digest_prev"]), False)
    t = pa.table({"repository": j["repository"], "added": pc.cast(added, pa.int64()),
                  "removed": pc.cast(removed, pa.int64()), "moved": pc.cast(moved, pa.int64())})
    g = t.group_by("repository").aggregate([("added", "sum"), ("removed", "sum"), ("moved", "sum")])
    return g.rename_columns(["repository", "added", "removed", "moved"]).select(HISTORY_DIFF.names).cast(HISTORY_DIFF)


def summarize_chunk(store_url: str, items: list[tuple[str, str | None]],
                    index: bool = False) -> list[tuple[str, pa.Table, pa.Table | None]]:
    """Summaries and diffs for consecutive (id, previous id) pairs; cached as they are made (with
    `index`, each summarized snapshot's FootprintIndex too)."""
    store = Store(store_url)
    out = []
    last: tuple[str | None, pa.Table | None] = (None, None)
    for sid, prev in items:
        summary = store.caches.read(summary_name(sid))
        d = store.caches.read(diff_name(prev, sid)) if prev else None
        tags = None
        if summary is None:
            tags = _tags(store, sid)
            summary = summarize(store, sid, tags, index)
            store.caches.write(summary_name(sid), summary)
        if prev and d is None and summary.num_rows:
            tags = tags if tags is not None else _tags(store, sid)
            before = last[1] if last[0] == prev else _tags(store, prev)
            d = diff(before, tags) if before is not None and tags is not None else HISTORY_DIFF.empty_table()
            store.caches.write(diff_name(prev, sid), d)
        last = (sid, tags) if tags is not None else (None, None)
        out.append((sid, summary.cast(HISTORY_SUMMARY), d))
    return out


def cache_history_inputs(store: Store, snapshot_id: str) -> dict:
    """Cache what the growth report and the what-if read of a just-published snapshot while its
    tables are at hand (its summary, its diff with the previous snapshot, its FootprintIndex), and
    return its counts for the snapshot's artifact; None counts when its registry source failed or
    was skipped."""
    ids = store.snapshots.list()
    at = ids.index(snapshot_id) if snapshot_id in ids else 0
    (_, summary, _), = summarize_chunk(store.url, [(snapshot_id, ids[at - 1] if at else None)], index=True)
    row = {"snapshot": snapshot_id, "repositories": None, "tags": None, "manifests": None, "bytes": None,
           "unique_bytes": None}
    if summary.num_rows:
        total = summary.to_pylist()[0]
        row.update(repositories=summary.num_rows - 1, tags=total["tags"], manifests=total["manifests"],
                   bytes=total["image_bytes"], unique_bytes=total["unique_bytes"])
    return row
