"""The snapshot's commit graph as integer ids: committer dates, parents in CSR arrays, reachability."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.plan.codes import large_strings, to_us


def _flatten(parents: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """(length per row, all values as Arrow strings) of a list column, Arrow-backed or Python."""
    if isinstance(parents.dtype, pd.ArrowDtype):
        arr = _combined(pa.array(parents))
        lengths = pc.list_value_length(arr).fill_null(0).to_numpy().astype(np.int64)
        return lengths, large_strings(_combined(pc.list_flatten(arr)))
    vals = parents.to_numpy(dtype=object)
    lengths = np.fromiter((len(p) if p is not None else 0 for p in vals), dtype=np.int64, count=len(vals))
    flat = [x for p in vals if p is not None for x in p]
    return lengths, pa.array(flat, pa.large_string())


def _combined(arr):
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


_NIBBLE = np.full(256, 255, np.uint8)   # byte → its value as a lowercase hex digit; 255 for any other
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)


def _key(nib: np.ndarray, m: int) -> np.ndarray:
    """The first m hex digits of each row of nibbles, left-aligned in a uint64."""
    key = np.zeros(len(nib), np.uint64)
    for j in range(m):
        key = (key << np.uint64(4)) | nib[:, j]
    return key << np.uint64(4 * (16 - m))


def _fixed_width(arr: pa.Array, width: int) -> np.ndarray:
    """A string array whose values are all `width` bytes long as a numpy bytes array (no copy)."""
    data = arr.buffers()[2]
    start = int(np.frombuffer(arr.buffers()[1], np.int64 if pa.types.is_large_string(arr.type) else np.int32)[arr.offset])
    return np.frombuffer(data, dtype=f"S{width}", count=len(arr), offset=start)


class CommitGraph:
    """Commits as integer ids (sorted by sha), committer dates and a CSR array of parents."""

    def __init__(self, commits: pd.DataFrame):
        # In Arrow (sort, lower-casing, the parent lookup): at 10^6 commits Python strings took seconds.
        commits = commits.drop_duplicates("commit")
        sha = pc.utf8_lower(_combined(large_strings(commits["commit"])))
        order = pc.sort_indices(sha).to_numpy()   # byte order: the order of Python's str sort
        sha = sha.take(pa.array(order))
        self.n = len(sha)
        self.sha = sha.to_numpy(zero_copy_only=False)
        self.date = to_us(commits["committed"])[order] if self.n else np.array([], dtype="int64")
        lengths, flat = _flatten(commits["parents"])
        rank = np.empty(self.n, np.int64)
        rank[order] = np.arange(self.n)
        owner = rank[np.repeat(np.arange(self.n), lengths)]
        pid = (pc.index_in(pc.utf8_lower(flat), value_set=sha).fill_null(-1).to_numpy().astype(np.int64)
               if len(flat) else np.zeros(0, np.int64))
        keep = pid >= 0   # parents outside the snapshot (shallow history) are simply absent
        owner, pid = owner[keep], pid[keep]
        self.indptr = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=self.n), out=self.indptr[1:])
        self.parents = pid[np.argsort(owner, kind="stable")]
        self._keys, self._sha_arrow = None, sha   # see _hex_keys
        self.short = pc.utf8_slice_codeunits(sha, 0, 7).to_pylist()

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
            out[:-1] = self._resolve_hex(uniq) if self._hex_keys() is not None else self._resolve_strings(uniq)
        return out[inverse]

    def _resolve_strings(self, uniq: pa.Array) -> np.ndarray:
        """resolve() for any commit names: a hash lookup, then a binary search for prefixes."""
        exact = pc.index_in(uniq, value_set=pa.array(self.sha, pa.large_string())).fill_null(-1).to_numpy()
        out = exact.astype(np.int64)
        lengths = pc.utf8_length(uniq).to_numpy()
        todo = np.flatnonzero((exact < 0) & (lengths >= 4))
        if len(todo):
            sha_s = self.sha.astype("S")
            pre = np.asarray(uniq.take(pa.array(todo)).to_pylist(), dtype="S")
            lo = np.searchsorted(sha_s, pre, side="left")
            hi = np.searchsorted(sha_s, np.char.add(pre, b"g"), side="left")  # 'g' sorts after hex
            out[todo] = np.where(hi - lo == 1, lo, np.where(hi - lo > 1, -2, -1))
        return out

    def _hex_keys(self) -> np.ndarray | None:
        """The shas' first 16 hex digits as sorted uint64 keys, when every sha is lowercase hex of
        one length of at least 16 (git's are 40, or 64); None otherwise. Made once per graph."""
        if self._keys is None:
            self._keys = False
            lengths = pc.binary_length(self._sha_arrow).to_numpy()
            if not len(lengths) or (lengths != lengths[0]).any():
                return None
            width = int(lengths[0])
            sha_s = _fixed_width(self._sha_arrow, width)
            nib = _NIBBLE[sha_s.view(np.uint8).reshape(self.n, width)] if width >= 16 else None
            if nib is not None and (nib != 255).all():   # every sha: lowercase hex digits only
                self._sha_bytes = sha_s.view(np.uint8).reshape(self.n, width)
                self._keys = _key(nib, 16)
        return self._keys if self._keys is not False else None

    def _resolve_hex(self, uniq: pa.Array) -> np.ndarray:
        """resolve() on hex shas: binary search on integer keys, values grouped by length, the
        full bytes compared only for the (one, rarely more) candidates sharing a key. No hash
        table per call: resolving batch after batch (tasks/plan/batches.py) costs only its values."""
        keys, sha_bytes = self._keys, self._sha_bytes
        full = sha_bytes.shape[1]
        out = np.full(len(uniq), -1, np.int64)
        lengths = pc.binary_length(uniq).to_numpy()
        for width in np.unique(lengths).tolist():
            if width < 4 or width > full:
                continue   # too short to abbreviate (git needs 4), too long to be a sha: absent
            idx = np.flatnonzero(lengths == width)
            vals = _fixed_width(uniq.take(pa.array(idx)), width).view(np.uint8).reshape(len(idx), width)
            nib = _NIBBLE[vals]
            hexes = (nib != 255).all(axis=1)
            m = min(width, 16)
            key = _key(nib, m)
            # searched in key order: each search starts where the last one ended
            order = np.argsort(key)
            lo, hi = np.empty(len(key), np.int64), np.empty(len(key), np.int64)
            lo[order] = np.searchsorted(keys, key[order], side="left")
            hi[order] = np.searchsorted(keys, key[order] | np.uint64((1 << (4 * (16 - m))) - 1), side="right")
            count = hi - lo
            res = np.where(count == 1, lo, np.where(count > 1, -2, -1))
            if width > 16:
                # the key is the first 16 digits only: compare the rest of the one candidate
                one = np.flatnonzero(count == 1)
                same = (sha_bytes[lo[one], :width] == vals[one]).all(axis=1)
                res[one[~same]] = -1
                for i in np.flatnonzero(count > 1).tolist():   # several shas share 16 digits: rare
                    hits = [j for j in range(lo[i], hi[i]) if (sha_bytes[j, :width] == vals[i]).all()]
                    res[i] = hits[0] if len(hits) == 1 else (-2 if hits else -1)
            res[~hexes] = -1
            out[idx] = res
        return out

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
