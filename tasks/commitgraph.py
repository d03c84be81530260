"""The snapshot's commit graph as integer ids: committer dates, parents in CSR arrays, reachability."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.codes import to_us


def _flatten(parents: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(length per row, all values) of a list column, Arrow-backed or Python."""
    if isinstance(parents.dtype, pd.ArrowDtype):
        arr = pa.array(parents)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        lengths = pc.list_value_length(arr).fill_null(0).to_numpy().astype(np.int64)
        return lengths, np.asarray(pc.list_flatten(arr).to_pylist(), dtype=object)
    vals = parents.to_numpy(dtype=object)
    lengths = np.fromiter((len(p) if p is not None else 0 for p in vals), dtype=np.int64, count=len(vals))
    flat = [x for p in vals if p is not None for x in p]
    return lengths, np.asarray(flat, dtype=object)


class CommitGraph:
    """Commits as integer ids (sorted by sha), committer dates and a CSR array of parents."""

    def __init__(self, commits: pd.DataFrame):
        commits = commits.drop_duplicates("commit")
        sha = commits["commit"].astype(str).str.lower().to_numpy(dtype=object)
        order = np.argsort(sha, kind="stable")
        self.sha = sha[order]
        self.n = len(self.sha)
        self.index = pd.Index(self.sha, dtype=object)
        self.date = to_us(commits["committed"])[order] if self.n else np.array([], dtype="int64")
        lengths, flat = _flatten(commits["parents"])
        rank = np.empty(self.n, np.int64)
        rank[order] = np.arange(self.n)
        owner = rank[np.repeat(np.arange(self.n), lengths)]
        pid = (self.index.get_indexer(pd.Index(flat, dtype=object).str.lower()) if len(flat)
               else np.zeros(0, np.int64))
        keep = pid >= 0   # parents outside the snapshot (shallow history) are simply absent
        owner, pid = owner[keep], pid[keep]
        self.indptr = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=self.n), out=self.indptr[1:])
        self.parents = pid[np.argsort(owner, kind="stable")]
        self._sha_s = self._sha_arrow = None
        self.short = [x[:7] for x in self.sha.tolist()]

    def resolve(self, commits) -> np.ndarray:
        """Commit ids for full or abbreviated shas (any string column): -1 absent, -2 ambiguous prefix."""
        arr = commits if isinstance(commits, (pa.Array, pa.ChunkedArray)) else pa.array(commits, pa.large_string())
        enc = pc.dictionary_encode(pc.utf8_lower(arr))
        if isinstance(enc, pa.ChunkedArray):
            enc = enc.combine_chunks()
        uniq = enc.dictionary
        inverse = enc.indices.fill_null(-1).to_numpy().astype(np.int64)
        out = np.full(len(uniq) + 1, -1, dtype=np.int64)   # last slot: null
        if self.n and len(uniq):
            if self._sha_arrow is None:
                self._sha_arrow = pa.array(self.sha, pa.large_string())
            exact = pc.index_in(uniq, value_set=self._sha_arrow).fill_null(-1).to_numpy().astype(np.int64)
            out[:-1] = exact
            lengths = pc.utf8_length(uniq).to_numpy()
            todo = np.flatnonzero((exact < 0) & (lengths >= 4))
            if len(todo):
                if self._sha_s is None:
                    self._sha_s = self.sha.astype("S")
                pre = np.asarray(uniq.take(pa.array(todo)).to_pylist(), dtype="S")
                lo = np.searchsorted(self._sha_s, pre, side="left")
                hi = np.searchsorted(self._sha_s, np.char.add(pre, b"g"), side="left")  # 'g' sorts after hex
                out[todo] = np.where(hi - lo == 1, lo, np.where(hi - lo > 1, -2, -1))
        return out[inverse]

    def topo_order(self) -> list[int]:
        """Every commit after all of its children (Kahn's algorithm on the parent edges)."""
        indeg = np.bincount(self.parents, minlength=self.n).tolist()
        ptr, par = self.indptr.tolist(), self.parents.tolist()
        stack = [i for i in range(self.n - 1, -1, -1) if indeg[i] == 0]
        order: list[int] = []
        push, pop, add = stack.append, stack.pop, order.append
        while stack:
            c = pop()
            add(c)
            for j in range(ptr[c], ptr[c + 1]):
                p = par[j]
                indeg[p] -= 1
                if indeg[p] == 0:
                    push(p)
        return order

    def reach(self, heads: list[tuple[int, int]], order: list[int]) -> list[int]:
        """Per commit, the bitset of heads ((bit, commit id) pairs) whose history contains it."""
        reach = [0] * self.n
        for bit, c in heads:
            reach[c] |= 1 << bit
        ptr, par = self.indptr.tolist(), self.parents.tolist()
        for c in order:
            r = reach[c]
            if r:
                for j in range(ptr[c], ptr[c + 1]):
                    p = par[j]
                    reach[p] |= r
        return reach
