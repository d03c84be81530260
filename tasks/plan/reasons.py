"""The reasons column of a plan: every rule that kept a node, or why none did, per row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.plan.codes import large_strings

CAP = 5                      # reasons of one rule listed per digest; the rest are counted


class Reasons:
    """Keep reasons and 'why not kept' notes per node, assembled into one Arrow list column.

    Texts are codes into a table of distinct strings, so a note shared by a million nodes is
    one string. Notes that apply to every deleted node (`common`) are not stored per node.
    Parts are added in rule order, so a stable sort by node keeps each node's reasons in order.
    """

    wants_text = True   # rules may skip building texts when False (NoReasons)

    def __init__(self, n: int):
        self.n = n
        self.table: list[pa.Array] = []
        self.size = 0
        self.parts: list[tuple[np.ndarray, np.ndarray, int, bool]] = []
        self.common: list[int] = []   # codes of notes every deleted node gets, first

    def _intern(self, values: pa.Array) -> int:
        self.table.append(values)
        at = self.size
        self.size += len(values)
        return at

    def add(self, nodes, texts, order: int, keep: bool = True) -> None:
        nodes = np.asarray(nodes, dtype=np.int64)
        if not len(nodes):
            return
        if isinstance(texts, str):
            codes = np.full(len(nodes), self._intern(pa.array([texts], pa.large_string())), np.int64)
        else:
            enc = pc.dictionary_encode(large_strings(texts))
            if isinstance(enc, pa.ChunkedArray):
                enc = enc.combine_chunks()
            codes = enc.indices.to_numpy().astype(np.int64) + self._intern(enc.dictionary)
        self.parts.append((nodes, codes, order, keep))

    def add_coded(self, nodes, codes, table: list[str], order: int, keep: bool = True) -> None:
        nodes = np.asarray(nodes, dtype=np.int64)
        if len(nodes):
            base = self._intern(pa.array(table, pa.large_string()))
            self.parts.append((nodes, np.asarray(codes, np.int64) + base, order, keep))

    def add_common(self, text: str) -> None:
        self.common.append(self._intern(pa.array([text], pa.large_string())))

    def build(self, kept: np.ndarray, row_node: np.ndarray) -> pa.ListArray:
        """The reasons of each row (rows name nodes; several rows may share one)."""
        planned = np.zeros(self.n, bool)
        planned[row_node] = True
        if self.parts:
            node = np.concatenate([p[0] for p in self.parts])
            code = np.concatenate([p[1] for p in self.parts])
            order = np.concatenate([np.full(len(p[0]), p[2], np.int8) for p in self.parts])
            keep = np.concatenate([np.full(len(p[0]), p[3], bool) for p in self.parts])
            sel = (keep == kept[node]) & planned[node]
            node, code, order = node[sel], code[sel], order[sel]
        else:
            node, code, order = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8)
        n_common = np.where(kept, 0, len(self.common))
        missing = planned & (np.bincount(node, minlength=self.n) + n_common == 0)
        if missing.any():
            ids = np.flatnonzero(missing)
            base = self._intern(pa.array(["no keep rule applies", "kept"], pa.large_string()))
            node = np.concatenate([node, ids])
            code = np.concatenate([code, base + kept[ids].astype(np.int64)])
            order = np.concatenate([order, np.full(len(ids), 99, np.int8)])
        srt = np.argsort(node, kind="stable")
        node, code, order = node[srt], code[srt], order[srt]
        # Cap each rule's reasons per node, counting the rest.
        grp = np.r_[True, (node[1:] != node[:-1]) | (order[1:] != order[:-1])] if len(node) else np.zeros(0, bool)
        starts = np.flatnonzero(grp)
        sizes = np.diff(np.r_[starts, len(node)])
        if len(sizes) and sizes.max() > CAP + 1:
            rank = np.arange(len(node)) - np.repeat(starts, sizes)
            keep_row = rank < CAP
            keep_row[starts[sizes == CAP + 1] + CAP] = True   # one more is shown, not counted
            over = sizes > CAP + 1
            pos = starts[over] + CAP   # the (CAP+1)th reason becomes "… and N more"
            base = self._intern(pa.array([f"… and {k - CAP} more" for k in sizes[over]], pa.large_string()))
            code = code.copy()
            code[pos] = base + np.arange(len(pos))
            keep_row[pos] = True
            node, code = node[keep_row], code[keep_row]
        # per node: [common notes if deleted] + its own; then gathered in row order
        own = np.bincount(node, minlength=self.n)
        own_start = np.r_[0, np.cumsum(own)[:-1]]
        cnt = own[row_node] + n_common[row_node]
        offsets = np.zeros(len(row_node) + 1, np.int64)
        np.cumsum(cnt, out=offsets[1:])
        total = int(offsets[-1])
        codes = np.empty(total, np.int64)
        c_rows = np.flatnonzero(n_common[row_node] > 0)
        for k, c in enumerate(self.common):
            codes[offsets[c_rows] + k] = c
        o = own[row_node]
        rep = np.repeat(np.arange(len(row_node)), o)          # the row of each own reason
        within = np.arange(int(o.sum())) - np.repeat(np.cumsum(o) - o, o)
        codes[(offsets[:-1] + n_common[row_node])[rep] + within] = code[own_start[row_node][rep] + within]
        table = pa.concat_arrays(self.table) if self.table else pa.array([], pa.large_string())
        values = table.take(pa.array(codes)).cast(pa.string())
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()), values)

    def recorded(self, orders: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(node, text): each node the rules in `orders` kept, once, with its first text in the
        order texts were added (as NoReasons.recorded gives it)."""
        parts = [(p[0], p[1]) for p in self.parts if p[2] in orders and p[3]]
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, object)
        node, first = _first_per_node(np.concatenate([p[0] for p in parts]))
        code = np.concatenate([p[1] for p in parts])[first]
        table = pa.concat_arrays(self.table)
        return node, table.take(pa.array(code)).to_numpy(zero_copy_only=False).astype(object)


class NoReasons:
    """A Reasons that keeps no texts (the what-if's decide-only evaluation), except those of the
    rules named in `record`: node and first text each, for `recorded()`."""

    # Only the recorded rules' texts are kept (IN_USE, HELM: they always build theirs); other rules
    # skip formatting texts nobody reads.
    wants_text = False

    def __init__(self, n: int, record: tuple[int, ...] = ()):
        self.n = n
        self.record = record
        self.parts: list[tuple[np.ndarray, np.ndarray, int]] = []

    def add(self, nodes, texts, order: int, keep: bool = True) -> None:
        if keep and order in self.record and len(nodes):
            nodes = np.asarray(nodes, dtype=np.int64)
            texts = np.full(len(nodes), texts, object) if isinstance(texts, str) else np.asarray(texts, dtype=object)
            self.parts.append((nodes, texts, order))

    def add_coded(self, nodes, codes, table: list[str], order: int, keep: bool = True) -> None:
        pass

    def add_common(self, text: str) -> None:
        pass

    def recorded(self, orders: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(node, text): each node the rules in `orders` (recorded ones) kept, once, with its
        first text in the order texts were added."""
        parts = [p for p in self.parts if p[2] in orders]
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, object)
        node, first = _first_per_node(np.concatenate([p[0] for p in parts]))
        return node, np.concatenate([p[1] for p in parts])[first]


def _first_per_node(node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each node once, in the order of its first occurrence, and the index of that occurrence."""
    _, first = np.unique(node, return_index=True)
    first.sort()
    return node[first], first
