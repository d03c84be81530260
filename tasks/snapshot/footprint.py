"""What a registry really stores, and what a plan would really free: bytes from the BLOBS table.

Three byte figures, never to be confused (docs/store-format.md):

  image bytes        the sum of image sizes (manifest + config + layers, an index with its
                     platforms): what `docker images` would add up. A base layer shared by a
                     thousand images counts a thousand times.
  unique bytes       every blob (manifest body, config, layer) counted once across the scanned
                     repositories: what the registry's storage holds for them.
  reclaimable bytes  the blobs that deleted manifests reference and no manifest that stays
                     references, anywhere in the scanned repositories: what the registry's
                     garbage collector frees after the sweep.

Blobs of repositories outside `registry.repositories` and of untagged manifests no tag reaches are
not in a snapshot, so a blob they share may be counted as reclaimable that the collector keeps.

The plan (tasks/plan/make.py), the sweep's approval form and its report (tasks/sweep/) all ask
`load` + `Footprint.reclaimable`: one figure, one function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.store.caches import footprint_name
from tasks.store.store import Store

COLUMNS = ["repository", "digest", "blob", "size"]


@dataclass(frozen=True)
class Reclaim:
    """Bytes a set of deleted manifests frees; each freed blob is attributed to one repository
    (the first by name among those whose deletions reference it), so the parts add up to the total."""

    total: int
    blobs: int
    by_repository: dict[str, int] = field(default_factory=dict)


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    enc = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary


class Footprint:
    """One snapshot's BLOBS table as integer codes: built once, asked many times (the what-if asks
    it for every policy of every snapshot)."""

    def __init__(self, blobs: pa.Table):
        blobs = blobs.select(COLUMNS)
        self.repo_code, self.repos = _codes(blobs["repository"])
        dig_code, self.digests = _codes(blobs["digest"])
        self.blob_code, _ = _codes(blobs["blob"])
        self.n_blobs = int(self.blob_code.max()) + 1 if len(self.blob_code) else 0
        size = blobs["size"].to_numpy()
        self.blob_size = np.zeros(self.n_blobs, np.int64)
        self.blob_size[self.blob_code] = size
        # one integer per (repository, manifest digest): the row's node
        self.row_key = self.repo_code * max(len(self.digests), 1) + dig_code

    @classmethod
    def of(cls, blobs: pa.Table | None) -> Footprint | None:
        """None when the snapshot has no BLOBS table (taken before regsweep recorded blobs)."""
        return None if blobs is None else cls(blobs)

    @classmethod
    def load(cls, store: Store, snapshot_id: str) -> Footprint | None:
        """The snapshot's footprint; None for a snapshot without a BLOBS table."""
        return cls.of(store.snapshots.table(snapshot_id, "blobs", columns=COLUMNS))

    @property
    def unique_bytes(self) -> int:
        return int(self.blob_size.sum())

    def unique_bytes_by_repository(self) -> dict[str, int]:
        """Per repository, each of its blobs once (a blob two repositories share counts in both)."""
        if not self.n_blobs:
            return {}
        pairs = np.unique(self.repo_code * self.n_blobs + self.blob_code)
        repo = pairs // self.n_blobs
        sums = np.bincount(repo, weights=self.blob_size[pairs % self.n_blobs], minlength=len(self.repos))
        return {name: int(v) for name, v in zip(self.repos.to_pylist(), sums.tolist())}

    def deleted_rows(self, repositories, digests) -> np.ndarray:
        """Which BLOBS rows belong to one of the given (repository, digest) manifests."""
        if not len(self.row_key):
            return np.zeros(0, bool)
        r = pc.index_in(pa.array(repositories, pa.string()), value_set=self.repos).fill_null(-1)
        d = pc.index_in(pa.array(digests, pa.string()), value_set=self.digests).fill_null(-1)
        r, d = r.to_numpy(zero_copy_only=False), d.to_numpy(zero_copy_only=False)
        ok = (r >= 0) & (d >= 0)
        keys = r[ok].astype(np.int64) * max(len(self.digests), 1) + d[ok]
        return np.isin(self.row_key, keys)

    def reclaimable(self, repositories, digests, *, gone: Iterable[tuple[str, str]] = ()) -> Reclaim:
        """What deleting these (repository, digest) manifests frees once the registry collects.

        `gone` are manifests deleted earlier (a resumed sweep's finished targets): they hold no
        blob, and what only they used is not counted again."""
        gone_before = list(gone)
        earlier = (self.deleted_rows([r for r, _ in gone_before], [d for _, d in gone_before])
                   if gone_before else np.zeros(len(self.row_key), bool))
        gone = self.deleted_rows(repositories, digests) & ~earlier
        if not gone.any():
            return Reclaim(0, 0, {})
        stays = np.zeros(self.n_blobs, bool)
        stays[self.blob_code[~gone & ~earlier]] = True
        freed = np.zeros(self.n_blobs, bool)
        freed[self.blob_code[gone]] = True
        freed &= ~stays
        rows = np.flatnonzero(gone & freed[self.blob_code])
        # attribute each freed blob to the first repository (by name) whose deletions reference it
        rank = np.empty(len(self.repos), np.int64)
        rank[np.argsort(np.asarray(self.repos.to_pylist(), dtype=object))] = np.arange(len(self.repos))
        owner = np.full(self.n_blobs, len(self.repos), np.int64)
        np.minimum.at(owner, self.blob_code[rows], rank[self.repo_code[rows]])
        ids = np.flatnonzero(freed)
        by_rank = np.bincount(owner[ids], weights=self.blob_size[ids], minlength=len(self.repos) + 1)
        order = np.argsort(rank)
        names = self.repos.to_pylist()
        by_repo = {names[order[k]]: int(v) for k, v in enumerate(by_rank[:len(self.repos)].tolist()) if v}
        return Reclaim(int(self.blob_size[ids].sum()), len(ids), by_repo)


def image_sizes(deleted, children) -> np.ndarray:
    """The image size each deleted (repository, digest, size) row adds to "image bytes": its
    MANIFESTS size, but 0 for a platform manifest whose index is deleted too, since an index's
    size already includes its platforms (as the sweep's targets count it: tasks/sweep/targets.py)."""
    import pandas as pd

    size = deleted["size"].fillna(0).to_numpy(dtype=np.int64)
    if children is None or not len(children) or not len(deleted):
        return size
    keys = pd.MultiIndex.from_arrays([deleted["repository"], deleted["digest"]])
    index_gone = pd.MultiIndex.from_arrays([children["repository"], children["index_digest"]]).isin(keys)
    platforms = pd.MultiIndex.from_arrays([children["repository"][index_gone], children["child_digest"][index_gone]])
    return np.where(keys.isin(platforms), 0, size)


def reclaim_of(fp: Footprint | None, deleted: Iterable[tuple[str, str]],
               gone: Iterable[tuple[str, str]] = ()) -> Reclaim | None:
    """`fp.reclaimable` of (repository, digest) pairs; None without a footprint (unknown)."""
    if fp is None:
        return None
    keys = list(deleted)
    return fp.reclaimable([r for r, _ in keys], [d for _, d in keys], gone=gone)


# ------------------------------------------------------------------ the compact per-snapshot index

#: One row holding the whole index as lists: a snapshot's BLOBS table is written once and never
#: changes, so its integer form is a derivable cache (tasks/store/caches.py FOOTPRINT_INDEX).
INDEX_SCHEMA = pa.schema([
    pa.field("repos", pa.list_(pa.string()), nullable=False),
    pa.field("digests", pa.list_(pa.string()), nullable=False),
    pa.field("node_key", pa.list_(pa.int64()), nullable=False),     # sorted: repo code * len(digests) + digest code
    pa.field("node_start", pa.list_(pa.int64()), nullable=False),   # CSR offsets into row_blob, len(node_key) + 1
    pa.field("row_blob", pa.list_(pa.int32()), nullable=False),     # each BLOBS row's blob code, rows by node
    pa.field("blob_size", pa.list_(pa.int64()), nullable=False),
])


class FootprintIndex:
    """A snapshot's BLOBS as a CSR (manifest node -> blob codes, per-blob row counts): the
    what-if's reclaimable total touches only the deleted manifests' rows, and reading it back
    decodes no BLOBS strings besides each manifest's digest once."""

    def __init__(self, repos: pa.Array, digests: pa.Array, node_key: np.ndarray, node_start: np.ndarray,
                 row_blob: np.ndarray, blob_size: np.ndarray):
        self.repos, self.digests = repos, digests
        self.node_key, self.node_start, self.row_blob, self.blob_size = node_key, node_start, row_blob, blob_size
        # a blob is freed when every BLOBS row naming it belongs to a deleted manifest
        self.refs = np.bincount(row_blob, minlength=len(blob_size))

    @classmethod
    def of(cls, fp: Footprint) -> FootprintIndex:
        order = np.argsort(fp.row_key, kind="stable")
        keys, counts = np.unique(fp.row_key[order], return_counts=True)
        start = np.zeros(len(keys) + 1, np.int64)
        np.cumsum(counts, out=start[1:])
        return cls(fp.repos.cast(pa.string()), fp.digests.cast(pa.string()), keys, start,
                   fp.blob_code[order].astype(np.int32), fp.blob_size)

    def to_table(self) -> pa.Table:
        one = lambda a, t: pa.array([a], pa.list_(t))  # noqa: E731
        return pa.table([pa.array([self.repos.to_pylist()], pa.list_(pa.string())),
                         pa.ListArray.from_arrays(pa.array([0, len(self.digests)], pa.int32()), self.digests),
                         one(self.node_key, pa.int64()), one(self.node_start, pa.int64()),
                         one(self.row_blob, pa.int32()), one(self.blob_size, pa.int64())], schema=INDEX_SCHEMA)

    @classmethod
    def from_table(cls, t: pa.Table) -> FootprintIndex:
        v = lambda c: t[c].combine_chunks().values  # noqa: E731
        n = lambda c: v(c).to_numpy(zero_copy_only=False)  # noqa: E731
        return cls(v("repos"), v("digests"), n("node_key"), n("node_start"), n("row_blob"), n("blob_size"))

    def total(self, repositories: pa.Array, digests: pa.Array) -> int:
        """Reclaimable bytes (as `Footprint.reclaimable(...).total`) of deleting these manifests."""
        r = pc.index_in(repositories, value_set=self.repos).fill_null(-1).to_numpy(zero_copy_only=False)
        d = pc.index_in(digests, value_set=self.digests).fill_null(-1).to_numpy(zero_copy_only=False)
        ok = (r >= 0) & (d >= 0)
        keys = r[ok].astype(np.int64) * max(len(self.digests), 1) + d[ok]
        if not len(keys) or not len(self.node_key):
            return 0
        pos = np.minimum(np.searchsorted(self.node_key, keys), len(self.node_key) - 1)
        # each deleted manifest once (a digest under several deleted tags), without sorting
        mark = np.zeros(len(self.node_key), bool)
        mark[pos[self.node_key[pos] == keys]] = True
        pos = np.flatnonzero(mark)
        lo, hi = self.node_start[pos], self.node_start[pos + 1]
        n = hi - lo
        rows = np.repeat(lo - np.r_[0, np.cumsum(n)[:-1]], n) + np.arange(int(n.sum()))
        hits = np.bincount(self.row_blob[rows], minlength=len(self.blob_size))
        return int(self.blob_size[(hits > 0) & (hits == self.refs)].sum())


def write_index(store: Store, snapshot_id: str, fp: Footprint | None) -> FootprintIndex | None:
    """Cache the snapshot's FootprintIndex (the snapshot flow does, from the footprint it builds
    for the summary anyway); None for a snapshot without BLOBS."""
    if fp is None:
        return None
    idx = FootprintIndex.of(fp)
    store.caches.write(footprint_name(snapshot_id), idx.to_table())
    return idx


def load_index(store: Store, snapshot_id: str) -> FootprintIndex | None:
    """The snapshot's FootprintIndex: from the cache, else built from BLOBS and cached (first use)."""
    t = store.caches.read(footprint_name(snapshot_id))
    if t is not None and t.schema.equals(INDEX_SCHEMA) and t.num_rows == 1:
        return FootprintIndex.from_table(t)
    return write_index(store, snapshot_id, Footprint.load(store, snapshot_id))
