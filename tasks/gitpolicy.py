"""Git-history keep rules (werf keep policies) evaluated over a snapshot's commit graph.

werf walks each selected reference on its own and lets the last policy that selects a reference
decide its `imagesPerReference`. regsweep keeps the union of every policy instead, so the order
of `keepPolicies` never changes a plan: a digest is kept when any policy, through any reference
it selects, would keep it.

Other deliberate differences from werf, all on the side of keeping more:
- `limit: {}` (neither `last` nor `in`) selects every matching reference (werf selects none);
- `keepPolicies: []` means werf's defaults, as in werf (see CleanupPolicy.effective_keep_policies);
- `imagesPerReference: {in: D}` without `last` keeps every image within D (werf's code; only a
  missing `imagesPerReference`, or one without `in`, means `last: 1`).
- an abbreviated commit (tag patterns) that names several commits keeps its image: any of
  them may be the one a kept reference reaches.

How it scales. Commits become integer ids with numpy parent arrays. Instead of one walk per
reference (and per repository), the graph is walked once in topological order carrying, per
commit, a bitset (a Python int) of the branches that reach it; a tag reaches only its own commit.
Linked commits are then visited once, newest first, for every repository at once; per
(reference, repository) a counter stops counting as soon as that pair has its `last` images, so
the work is bounded by the linked commits plus the images actually kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.policy import KeepPolicy
from tasks.units import format_duration

INF = 1 << 60          # "no count limit"
US = 1_000_000
MAX_REF_REASONS = 3    # references named per kept digest; the rest are counted


# ------------------------------------------------------------------ durations and small helpers

def to_us(series: pd.Series) -> np.ndarray:
    """UTC timestamps (any unit, tz-aware or naive UTC) as int64 microseconds; NaT → INT64 min."""
    s = pd.to_datetime(series, utc=True)
    return s.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]").to_numpy().view("int64")


def _limit_text(limit) -> str:
    parts = []
    if limit.last is not None:
        parts.append(f"last {limit.last}")
    if limit.in_ is not None:
        parts.append(f"in {format_duration(limit.in_)}")
    if limit.last is not None and limit.in_ is not None:
        parts.append(limit.operator)
    return ", ".join(parts)


def policy_text(p: KeepPolicy) -> str:
    """`branch /.*/ (limit last 10, in 168h, And)` — a policy as a reason names it."""
    r = p.references
    s = f"{r.kind} {r.branch if r.kind == 'branch' else r.tag}"
    if r.limit is not None and (r.limit.last is not None or r.limit.in_ is not None):
        s += f" (limit {_limit_text(r.limit)})"
    return s


# ------------------------------------------------------------------ imagesPerReference as numbers

@dataclass(frozen=True)
class ImageRule:
    """One policy's imagesPerReference: keep slot i (0-based) dated d when the rule says so."""

    last: int              # INF = no count limit
    cut: int | None        # microseconds; "within `in`" means d > cut
    op: str                # And | Or
    in_text: str = ""

    @classmethod
    def of(cls, policy: KeepPolicy, now_us: int) -> "ImageRule":
        ipr = policy.imagesPerReference
        if ipr is None:
            return cls(1, None, "And")
        cut = None if ipr.in_ is None else now_us - int(ipr.in_.total_seconds() * US)
        in_text = format_duration(ipr.in_) if ipr.in_ is not None else ""
        if ipr.last is None:
            # `in` alone: every image within it (werf); nothing given at all: the newest one.
            return cls(INF, cut, "And", in_text) if cut is not None else cls(1, None, "And")
        last = INF if ipr.last == -1 else ipr.last
        return cls(last, cut, ipr.operator if cut is not None else "And", in_text)

    @property
    def unlimited(self) -> bool:
        """Keeps every reached image whatever its date."""
        return self.last >= INF and (self.cut is None or self.op == "Or")


# ------------------------------------------------------------------ reference selection

@dataclass
class Selection:
    """References in bit order (branches newest first, then tags) and what selected them."""

    names: list[str]
    kinds: list[str]
    commits: list[str]
    dates: np.ndarray
    rules: dict[int, list[ImageRule]]          # selected reference bit → its policies' rules
    why_not: dict[int, str]                    # unselected reference bit → why
    mask: int = 0                              # bits of selected references

    def label(self, x: int) -> str:
        return f"{self.kinds[x]} {self.names[x]}"


def select_references(refs: pd.DataFrame, policies: list[KeepPolicy], now_us: int) -> Selection:
    """Apply every policy's `references` (pattern + limit) to the snapshot's refs."""
    refs = refs.assign(_d=to_us(refs["date"]) if len(refs) else np.array([], dtype="int64"))
    refs = refs.assign(_k=(refs["kind"] != "branch").astype(int))
    refs = refs.sort_values(["_k", "_d", "name"], ascending=[True, False, True], kind="mergesort")
    names = refs["name"].astype(str).tolist()
    kinds = refs["kind"].astype(str).tolist()
    dates = refs["_d"].to_numpy(dtype="int64")
    sel = Selection(names, kinds, refs["commit"].astype(str).tolist(), dates, {}, {})
    matched_any: dict[int, list[str]] = {}
    for p in policies:
        kind = p.references.kind
        rx: re.Pattern = p.references.pattern
        cand = [i for i, (n, k) in enumerate(zip(names, kinds)) if k == kind and rx.match(n)]
        chosen = _apply_limit(cand, dates, p.references.limit, now_us)
        rule = ImageRule.of(p, now_us)
        for i in cand:
            if i in chosen:
                sel.rules.setdefault(i, []).append(rule)
            else:
                matched_any.setdefault(i, []).append(policy_text(p))
    for i in range(len(names)):
        if i in sel.rules:
            sel.mask |= 1 << i
        elif i in matched_any:
            sel.why_not[i] = "outside the limit of " + "; ".join(sorted(set(matched_any[i])))
        else:
            sel.why_not[i] = "matches no keep policy"
    return sel


def _apply_limit(cand: list[int], dates: np.ndarray, limit, now_us: int) -> set[int]:
    if limit is None or (limit.last is None and limit.in_ is None):
        return set(cand)
    by_in = by_last = None
    if limit.in_ is not None:
        cut = now_us - int(limit.in_.total_seconds() * US)
        by_in = {i for i in cand if dates[i] > cut}
    if limit.last is not None:
        # cand is already newest first (the selection's sort order)
        by_last = set(cand if limit.last == -1 else cand[: max(limit.last, 0)])
    if by_in is None:
        return by_last
    if by_last is None:
        return by_in
    return by_in | by_last if limit.operator == "Or" else by_in & by_last


# ------------------------------------------------------------------ the commit graph

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


# ------------------------------------------------------------------ the evaluation

@dataclass
class GitOutcome:
    kept: np.ndarray                                   # node ids kept by git rules
    keep_node: list[int] = field(default_factory=list)
    keep_text: list[str] = field(default_factory=list)
    # why linked nodes are not kept: (node ids, codes into texts, texts) batches
    notes: list[tuple[np.ndarray, np.ndarray, list[str]]] = field(default_factory=list)


class _Phases:
    """Per reference, the count limit T and "within `in`" flag as the walk passes each cut."""

    def __init__(self, sel: Selection):
        self.sel = sel
        cuts = sorted({r.cut for rules in sel.rules.values() for r in rules if r.cut is not None}, reverse=True)
        self.cuts = cuts
        self.unlimited = 0
        for x, rules in sel.rules.items():
            if any(r.unlimited for r in rules):
                self.unlimited |= 1 << x
        self.p = -1
        self.advance()

    def active(self, r: ImageRule) -> bool:
        return r.cut is None or r.cut not in self.cuts[: self.p]

    def advance(self) -> None:
        self.p += 1
        self.T: dict[int, int] = {}
        self.W = 0
        self.in_text: dict[int, str] = {}
        for x, rules in self.sel.rules.items():
            if (self.unlimited >> x) & 1:
                continue
            t = 0
            for r in rules:
                within = r.cut is not None and self.active(r)
                if r.op == "Or" or r.cut is None or within:
                    if r.last < INF:
                        t = max(t, r.last)
                if within and (r.op == "Or" or r.last >= INF):
                    self.W |= 1 << x
                    self.in_text[x] = max(self.in_text.get(x, ""), r.in_text, key=len)
            if t:
                self.T[x] = t
        self.base = sum(1 << x for x in self.T)

    @property
    def next_cut(self) -> int | None:
        return self.cuts[self.p] if self.p < len(self.cuts) else None


def evaluate_git(refs: pd.DataFrame, commits: pd.DataFrame, node: np.ndarray, commit, node_repo: np.ndarray,
                 policies: list[KeepPolicy], now_us: int) -> GitOutcome:
    """Which linked nodes the git keep policies keep, and why the others are not kept.

    node: the node id of each link row; commit: its linked commit as recorded (a full or
    abbreviated sha; an Arrow or Python string column); node_repo: repository id of every node.
    """
    node = np.asarray(node, np.int64)
    out = GitOutcome(np.array([], dtype=np.int64))
    if not len(node):
        return out
    graph = CommitGraph(commits)
    sel = select_references(refs, policies, now_us)
    ref_cid = graph.resolve(pa.array(sel.commits, pa.large_string())) if sel.names else np.zeros(0, np.int64)
    order = graph.topo_order()
    topo_pos = np.empty(graph.n, dtype=np.int64)
    topo_pos[np.asarray(order, dtype=np.int64)] = np.arange(graph.n)
    heads = [(x, int(c)) for x, c in enumerate(ref_cid) if c >= 0 and sel.kinds[x] == "branch"]
    reach = graph.reach(heads, order)
    for x, c in enumerate(ref_cid):
        if c >= 0 and sel.kinds[x] != "branch":
            reach[c] |= 1 << x   # a tag reaches its own commit only

    cid = graph.resolve(commit)
    # A node whose every linked commit is missing (or ambiguous) is linked but unreachable.
    _notes_for_unresolved(out, node, commit, cid)
    # An abbreviation naming several commits may name one a kept reference reaches: fail closed.
    ambiguous = _keep_ambiguous(out, node, commit, cid)
    ok = cid >= 0
    if not ok.any():
        out.kept = ambiguous
        return out
    # one row per (node, commit): an annotation and a tag pattern naming one commit are one link
    pair = np.sort(node[ok] * graph.n + cid[ok])
    pair = pair[np.r_[True, pair[1:] != pair[:-1]]]
    node, cid = pair // graph.n, pair % graph.n
    repo = np.asarray(node_repo, np.int64)[node]
    multi_count = np.bincount(node)
    multi = set(np.flatnonzero(multi_count > 1).tolist())
    date = graph.date[cid]
    srt = np.lexsort((node, repo, topo_pos[cid], -date))
    node, repo, cid, date = node[srt], repo[srt], cid[srt], date[srt]
    key = cid * (int(repo.max()) + 1) + repo
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]

    kept_nodes = _walk(sel, reach, starts, ends, node, repo, cid, date, multi, out)
    out.kept = np.union1d(np.asarray(kept_nodes, dtype=np.int64), ambiguous)
    _notes_for_unkept(out, sel, reach, graph, node, cid, date)
    return out


def _walk(sel, reach, starts, ends, node, repo, cid, date, multi, out):
    """Visit (commit, repository) groups newest first; count slots per (reference, repository)."""
    ph = _Phases(sel)
    n_repo = int(repo.max()) + 1
    needing = [ph.base] * n_repo
    counts: list[dict[int, int] | None] = [None] * n_repo
    selmask = sel.mask
    # only groups on commits some selected reference reaches can keep anything
    gc = cid[starts]
    uc = np.unique(gc)
    reached = np.zeros(int(uc.max()) + 1 if len(uc) else 0, bool)
    reached[uc] = np.fromiter((bool(reach[c] & selmask) for c in uc.tolist()), bool, count=len(uc))
    live = np.flatnonzero(reached[gc])
    is_multi = np.zeros(int(node.max()) + 1, bool)
    is_multi[list(multi)] = True
    group_multi = (np.add.reduceat(is_multi[node].astype(np.int64), starts) > 0) if len(starts) else np.zeros(0, bool)
    seen: dict[int, int] = {}
    kept: list[int] = []
    node_l, cid_l, repo_l, date_l = node.tolist(), cid.tolist(), repo.tolist(), date.tolist()
    starts_l, ends_l, gm_l = starts.tolist(), ends.tolist(), group_multi.tolist()
    nc = ph.next_cut
    WU = ph.W | ph.unlimited
    for g in live.tolist():
        a = starts_l[g]
        r = repo_l[a]
        if not (needing[r] or WU):
            continue   # this repository has all it can keep (limits only shrink as dates fall)
        d = date_l[a]
        if nc is not None and d <= nc:
            while nc is not None and d <= nc:
                ph.advance()
                nc = ph.next_cut
            needing = _rebuild(ph, counts, n_repo)
            WU = ph.W | ph.unlimited
        S = reach[cid_l[a]] & selmask
        group = node_l[a:ends_l[g]]
        new_for = None
        if gm_l[g]:
            # A digest already ranked at a newer commit of this reference takes no new slot.
            fresh = 0
            new_for = {}
            for n in group:
                if n in multi:
                    before = seen.get(n, 0)
                    new_for[n] = S & ~before
                    seen[n] = before | S
                    fresh |= new_for[n]
                else:
                    fresh = S
            S = fresh
        nd = needing[r]
        hits = S & nd
        keepers = hits | (S & WU)
        if not keepers:
            continue
        positions = {}
        if hits:
            cr = counts[r]
            if cr is None:
                cr = counts[r] = {}
            h = hits
            T = ph.T
            while h:
                low = h & -h
                x = low.bit_length() - 1
                h ^= low
                c = cr.get(x, 0) + 1
                cr[x] = c
                positions[x] = c
                if c >= T[x]:
                    nd &= ~low
            needing[r] = nd
        texts = _keep_texts(sel, ph, keepers, positions)
        for n in group:
            if new_for is not None and n in new_for and not (new_for[n] & keepers):
                continue
            kept.append(n)
            out.keep_node.extend([n] * len(texts))
            out.keep_text.extend(texts)
    return kept


def _rebuild(ph: _Phases, counts, n_repo) -> list[int]:
    needing = [ph.base] * n_repo
    for r, cr in enumerate(counts):
        if cr:
            m = ph.base
            for x, c in cr.items():
                if c >= ph.T.get(x, 0):
                    m &= ~(1 << x)
            needing[r] = m
    return needing


def _keep_texts(sel: Selection, ph: _Phases, keepers: int, positions: dict[int, int]) -> list[str]:
    texts = []
    total = keepers.bit_count()
    k = keepers
    while k and len(texts) < MAX_REF_REASONS:
        low = k & -k
        x = low.bit_length() - 1
        k ^= low
        if sel.kinds[x] != "branch":
            texts.append(f"git: {sel.label(x)}")
        elif (ph.unlimited >> x) & 1:
            texts.append(f"git: {sel.label(x)}, every image (imagesPerReference.last -1)")
        elif x in positions:
            texts.append(f"git: {sel.label(x)}, image {positions[x]} of {ph.T[x]}")
        else:
            texts.append(f"git: {sel.label(x)}, commit within {ph.in_text.get(x, '')} (imagesPerReference.in)")
    if total > len(texts):
        texts.append(f"git: and {total - len(texts)} more references")
    return texts


def _short(shas) -> str:
    shas = list(dict.fromkeys(str(x)[:7] for x in shas))
    s = ", ".join(shas[:3])
    return s + (f" and {len(shas) - 3} more" if len(shas) > 3 else "")


def _notes_for_unresolved(out: GitOutcome, node: np.ndarray, commit, cid: np.ndarray) -> None:
    resolved = np.zeros(int(node.max()) + 1, bool)
    resolved[node[cid >= 0]] = True
    bad = np.flatnonzero(~resolved[node])
    if not len(bad):
        return
    commits = (commit.take(pa.array(bad)).to_pylist() if isinstance(commit, (pa.Array, pa.ChunkedArray))
               else [commit[i] for i in bad])
    df = pd.DataFrame({"node": node[bad], "commit": commits, "amb": cid[bad] == -2})
    nodes, texts = [], []
    for n, sub in df.groupby("node", sort=True):
        amb = sub.loc[sub["amb"], "commit"].tolist()
        absent = sub.loc[~sub["amb"], "commit"].tolist()
        if absent:
            word = "commits" if len(set(absent)) > 1 else "commit"
            nodes.append(n)
            texts.append(f"git: {word} {_short(absent)} not in the repository (amended, force-pushed away or never pushed)")
        if amb:
            nodes.append(n)
            texts.append(f"git: abbreviated commit {_short(amb)} is ambiguous in the repository")
    out.notes.append((np.asarray(nodes, np.int64), np.arange(len(texts)), texts))


def _keep_ambiguous(out: GitOutcome, node: np.ndarray, commit, cid: np.ndarray) -> np.ndarray:
    """Nodes with a link whose abbreviated commit is ambiguous: kept, with the abbreviations."""
    bad = np.flatnonzero(cid == -2)
    if not len(bad):
        return np.zeros(0, np.int64)
    commits = (commit.take(pa.array(bad)).to_pylist() if isinstance(commit, (pa.Array, pa.ChunkedArray))
               else [commit[i] for i in bad])
    df = pd.DataFrame({"node": node[bad], "commit": commits})
    for n, sub in df.groupby("node", sort=True):
        out.keep_node.append(int(n))
        out.keep_text.append(f"git: abbreviated commit {_short(sub['commit'])} is ambiguous in the repository: kept")
    return np.unique(node[bad])


def _notes_for_unkept(out: GitOutcome, sel: Selection, reach, graph: CommitGraph, node, cid, date) -> None:
    """Why git rules keep none of the linked, reachable nodes that are not kept.

    Rows are newest first; a node's note names its newest commit and the references reaching
    any of its commits. Notes are made once per distinct commit (or commit set).
    """
    keep = np.zeros(int(node.max()) + 1, bool)
    keep[out.kept] = True
    gone = ~keep[node]
    node, cid, date = node[gone], cid[gone], date[gone]
    if not len(node):
        return
    per = np.bincount(node)
    single = per[node] == 1
    limits = _Limits(sel)
    # nodes on one commit: one text per commit
    inv, uc = pd.factorize(cid[single])
    short, dates = graph.short, graph.date[uc].tolist()
    texts = [_unkept_text(sel, reach[c], short[c], 1, d, limits) for c, d in zip(uc.tolist(), dates)]
    out.notes.append((node[single], inv, texts))
    # nodes on several commits (content-based tags rebuilt on many commits)
    m_nodes, m_texts = [], []
    rows = pd.DataFrame({"node": node[~single], "cid": cid[~single], "date": date[~single]})
    for n, sub in rows.groupby("node", sort=True):
        cs = sub["cid"].tolist()
        S = 0
        for c in cs:
            S |= reach[c]
        shas = _short([graph.short[c] for c in cs])
        m_nodes.append(n)
        m_texts.append(_unkept_text(sel, S, shas, len(set(cs)), int(sub["date"].iloc[0]), limits))
    if m_nodes:
        out.notes.append((np.asarray(m_nodes, np.int64), np.arange(len(m_texts)), m_texts))


class _Limits:
    """The count limit per reference at a given commit date (cached per phase)."""

    def __init__(self, sel: Selection):
        self.sel = sel
        self.cuts = _Phases(sel).cuts
        self.cache: dict[int, dict[int, int]] = {}

    def at(self, d: int) -> dict[int, int]:
        p = 0
        for c in self.cuts:   # few: one per distinct imagesPerReference.in
            if d <= c:
                p += 1
        if p not in self.cache:
            ph = _Phases(self.sel)
            while ph.p < p:
                ph.advance()
            self.cache[p] = ph.T
        return self.cache[p]


def _unkept_text(sel: Selection, S: int, shas: str, n: int, d: int, limits: _Limits) -> str:
    word = "commits" if n > 1 else "commit"
    if not S:
        return f"git: no reference reaches {word} {shas}"
    chosen = S & sel.mask
    if not chosen:
        x = (S & -S).bit_length() - 1
        more = S.bit_count() - 1
        extra = f" and {more} more" if more else ""
        return f"git: {word} {shas} reached only by unselected references ({sel.label(x)}{extra}: {sel.why_not.get(x, '')})"
    x = (chosen & -chosen).bit_length() - 1
    t = limits.at(d).get(x, 0)
    if t:
        return f"git: {sel.label(x)} selected, image beyond imagesPerReference.last {t}"
    ins = [r.in_text for r in sel.rules.get(x, []) if r.in_text]
    if ins:
        return f"git: {sel.label(x)} selected, {word} {shas} older than imagesPerReference.in {max(ins, key=len)}"
    return f"git: {sel.label(x)} selected, imagesPerReference.last 0"
