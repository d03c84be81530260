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

from tasks.policy import KeepPolicy

INF = 1 << 60          # "no count limit"
US = 1_000_000
MAX_REF_REASONS = 3    # references named per kept digest; the rest are counted


# ------------------------------------------------------------------ durations and small helpers

def fmt_duration(d: timedelta | int) -> str:
    """168h, 90m, 12h30m, 2h: how werf users write durations."""
    us = d if isinstance(d, int) else int(d.total_seconds() * US)
    minutes = max(0, us // (60 * US))
    h, m = divmod(minutes, 60)
    if h and m:
        return f"{h}h{m}m"
    return f"{h}h" if h else f"{m}m"


def to_us(series: pd.Series) -> np.ndarray:
    """UTC timestamps (any unit, tz-aware or naive UTC) as int64 microseconds; NaT → INT64 min."""
    s = pd.to_datetime(series, utc=True)
    return s.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]").to_numpy().view("int64")


def _limit_text(limit) -> str:
    parts = []
    if limit.last is not None:
        parts.append(f"last {limit.last}")
    if limit.in_ is not None:
        parts.append(f"in {fmt_duration(limit.in_)}")
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
        in_text = fmt_duration(ipr.in_) if ipr.in_ is not None else ""
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

class CommitGraph:
    """Commits as integer ids (sorted by sha), committer dates and a CSR array of parents."""

    def __init__(self, commits: pd.DataFrame):
        commits = commits.drop_duplicates("commit")
        sha = commits["commit"].astype(str).str.lower().to_numpy()
        order = np.argsort(sha, kind="stable")
        self.sha = sha[order]
        self.n = len(self.sha)
        self.index = pd.Index(self.sha)
        self.date = to_us(commits["committed"])[order] if self.n else np.array([], dtype="int64")
        parents = commits["parents"].to_numpy()[order]
        lengths = np.fromiter((len(p) if p is not None else 0 for p in parents), dtype=np.int64, count=self.n)
        flat = (np.concatenate([np.asarray(p, dtype=object) for p in parents if p is not None and len(p)])
                if lengths.sum() else np.array([], dtype=object))
        pid = self.index.get_indexer(pd.Index(flat).str.lower()) if len(flat) else np.array([], dtype=np.int64)
        owner = np.repeat(np.arange(self.n), lengths)
        keep = pid >= 0   # parents outside the snapshot (shallow history) are simply absent
        owner, pid = owner[keep], pid[keep]
        self.indptr = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=self.n), out=self.indptr[1:])
        self.parents = pid[np.argsort(owner, kind="stable")]
        self._sha_u = None

    def resolve(self, commits: pd.Series) -> np.ndarray:
        """Commit ids for full or abbreviated shas: -1 absent, -2 ambiguous prefix."""
        s = commits.astype(str).str.lower()
        uniq, inverse = np.unique(s.to_numpy(dtype=object), return_inverse=True)
        out = np.full(len(uniq), -1, dtype=np.int64)
        if self.n and len(uniq):
            exact = self.index.get_indexer(pd.Index(uniq))
            out[exact >= 0] = exact[exact >= 0]
            todo = np.flatnonzero((exact < 0) & np.array([len(u) >= 4 for u in uniq], dtype=bool))
            if len(todo):
                if self._sha_u is None:
                    self._sha_u = self.sha.astype("U")
                pre = uniq[todo].astype("U")
                lo = np.searchsorted(self._sha_u, pre, side="left")
                hi = np.searchsorted(self._sha_u, np.char.add(pre, "g"), side="left")  # 'g' sorts after hex
                out[todo] = np.where(hi - lo == 1, lo, np.where(hi - lo > 1, -2, -1))
        return out[inverse.ravel()]

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
    note_node: list[int] = field(default_factory=list)  # why linked nodes are not kept
    note_text: list[str] = field(default_factory=list)


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


def evaluate_git(refs: pd.DataFrame, commits: pd.DataFrame, links: pd.DataFrame,
                 policies: list[KeepPolicy], now_us: int) -> GitOutcome:
    """Which linked nodes the git keep policies keep, and why the others are not kept.

    links: one row per (node, repo, commit) with integer `node` and `repo` ids and the linked
    `commit` as recorded (full or abbreviated sha).
    """
    if links.empty:
        return GitOutcome(np.array([], dtype=np.int64))
    graph = CommitGraph(commits)
    sel = select_references(refs, policies, now_us)
    ref_cid = graph.resolve(pd.Series(sel.commits, dtype=object)) if sel.names else np.array([], dtype=np.int64)
    order = graph.topo_order()
    topo_pos = np.empty(graph.n, dtype=np.int64)
    topo_pos[np.asarray(order, dtype=np.int64)] = np.arange(graph.n)
    heads = [(x, int(c)) for x, c in enumerate(ref_cid) if c >= 0 and sel.kinds[x] == "branch"]
    reach = graph.reach(heads, order)
    for x, c in enumerate(ref_cid):
        if c >= 0 and sel.kinds[x] != "branch":
            reach[c] |= 1 << x   # a tag reaches its own commit only

    cid = graph.resolve(links["commit"])
    node = links["node"].to_numpy(np.int64)
    repo = links["repo"].to_numpy(np.int64)
    ok = cid >= 0
    # A node whose every linked commit is missing (or ambiguous) is linked but unreachable.
    out = GitOutcome(np.array([], dtype=np.int64))
    _notes_for_unresolved(out, node, links["commit"].astype(str).to_numpy(), cid)

    node, repo, cid = node[ok], repo[ok], cid[ok]
    if not len(node):
        return out
    nodes_per = pd.Series(node).value_counts()
    multi = set(nodes_per.index[nodes_per.to_numpy() > 1].tolist())
    date = graph.date[cid]
    srt = np.lexsort((node, repo, topo_pos[cid], -date))
    node, repo, cid, date = node[srt], repo[srt], cid[srt], date[srt]
    key = cid * (int(repo.max()) + 1) + repo
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]

    kept_nodes, seen_multi = _walk(sel, reach, starts, ends, node, repo, cid, date, multi, out)
    out.kept = np.unique(np.asarray(kept_nodes, dtype=np.int64))
    _notes_for_unkept(out, sel, reach, graph, node, cid, date, set(out.kept.tolist()))
    return out


def _walk(sel, reach, starts, ends, node, repo, cid, date, multi, out):
    """Visit (commit, repository) groups newest first; count slots per (reference, repository)."""
    ph = _Phases(sel)
    n_repo = int(repo.max()) + 1
    needing = [ph.base] * n_repo
    counts: list[dict[int, int] | None] = [None] * n_repo
    selmask = sel.mask
    seen: dict[int, int] = {}
    kept: list[int] = []
    node_l, cid_l, repo_l, date_l = node.tolist(), cid.tolist(), repo.tolist(), date.tolist()
    for g in range(len(starts)):
        a, b = int(starts[g]), int(ends[g])
        S = reach[cid_l[a]] & selmask
        if not S:
            continue
        d = date_l[a]
        nc = ph.next_cut
        while nc is not None and d <= nc:
            ph.advance()
            needing = _rebuild(ph, counts, n_repo)
            nc = ph.next_cut
        group = node_l[a:b]
        if any(n in multi for n in group):
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
            S_new = fresh
        else:
            new_for = None
            S_new = S
        r = repo_l[a]
        nd = needing[r]
        hits = S_new & nd
        keepers = hits | (S_new & (ph.W | ph.unlimited))
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
    return kept, seen


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
    shas = list(dict.fromkeys(shas))
    s = ", ".join(x[:7] for x in shas[:3])
    return s + (f" and {len(shas) - 3} more" if len(shas) > 3 else "")


def _notes_for_unresolved(out: GitOutcome, node, commit, cid) -> None:
    df = pd.DataFrame({"node": node, "commit": commit, "ok": cid >= 0, "amb": cid == -2})
    g = df.groupby("node", sort=True)
    lost = g["ok"].transform("any")
    bad = df[~lost.to_numpy()]
    for n, sub in bad.groupby("node", sort=True):
        amb = sub.loc[sub["amb"], "commit"].tolist()
        absent = sub.loc[~sub["amb"], "commit"].tolist()
        parts = []
        if absent:
            word = "commits" if len(set(absent)) > 1 else "commit"
            parts.append(f"git: {word} {_short(absent)} not in the repository (amended, force-pushed away or never pushed)")
        if amb:
            parts.append(f"git: abbreviated commit {_short(amb)} is ambiguous in the repository")
        for t in parts:
            out.note_node.append(int(n))
            out.note_text.append(t)


def _notes_for_unkept(out, sel: Selection, reach, graph: CommitGraph, node, cid, date, kept: set[int]) -> None:
    """Why git rules keep none of the linked, reachable nodes that are not kept."""
    ph_cache: dict[int, tuple[dict, int, int]] = {}
    phases = _Phases(sel)
    cuts = phases.cuts

    def limits_at(d: int):
        p = sum(1 for c in cuts if d <= c)
        if p not in ph_cache:
            ph = _Phases(sel)
            while ph.p < p:
                ph.advance()
            ph_cache[p] = (ph.T, ph.W, ph.unlimited)
        return ph_cache[p]

    first = {}
    commits_of: dict[int, list[int]] = {}
    for n, c in zip(node.tolist(), cid.tolist()):
        if n in kept:
            continue
        commits_of.setdefault(n, []).append(c)
        first.setdefault(n, c)   # rows are newest first: the node's newest commit
    text_cache: dict[tuple, str] = {}
    for n, cs in commits_of.items():
        key = tuple(sorted(set(cs)))
        t = text_cache.get(key)
        if t is None:
            t = _unkept_text(sel, reach, graph, key, graph.date[first[n]], limits_at)
            text_cache[key] = t
        out.note_node.append(n)
        out.note_text.append(t)


def _unkept_text(sel: Selection, reach, graph, cs, d, limits_at) -> str:
    S = 0
    for c in cs:
        S |= reach[c]
    shas = _short(graph.sha[list(cs)])
    word = "commits" if len(cs) > 1 else "commit"
    if not S:
        return f"git: no reference reaches {word} {shas}"
    chosen = S & sel.mask
    if not chosen:
        x = (S & -S).bit_length() - 1
        more = S.bit_count() - 1
        extra = f" and {more} more" if more else ""
        return f"git: {word} {shas} reached only by unselected references ({sel.label(x)}{extra}: {sel.why_not.get(x, '')})"
    T, W, unlimited = limits_at(int(d))
    x = (chosen & -chosen).bit_length() - 1
    t = T.get(x, 0)
    if t:
        return f"git: {sel.label(x)} selected, image beyond imagesPerReference.last {t}"
    rules = sel.rules.get(x, [])
    ins = [r.in_text for r in rules if r.in_text]
    if ins:
        return f"git: {sel.label(x)} selected, {word} {shas} older than imagesPerReference.in {max(ins, key=len)}"
    return f"git: {sel.label(x)} selected, imagesPerReference.last 0"
