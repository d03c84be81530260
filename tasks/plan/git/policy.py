"""Git-history keep rules (werf keep policies) evaluated over a snapshot's commit graph.

werf walks each selected reference on its own and lets the last policy that selects a reference
decide its `imagesPerReference`. regsweep keeps the union of every policy instead, so the order
of `keepPolicies` never changes a plan: a digest is kept when any policy, through any reference
it selects, would keep it.

As in werf: `limit: {}` (neither `last` nor `in`) selects every matching reference; `keepPolicies: []`
means werf's defaults (see CleanupPolicy.effective_keep_policies); `imagesPerReference` without
`last` means `last: 1`, with or without `in` (werf >= 2.10; SPEC.md). Another deliberate difference,
on the side of keeping more:
- an abbreviated commit (tag patterns) that names several commits keeps its image: any of
  them may be the one a kept reference reaches.

How it scales. Commits become integer ids with numpy parent arrays. Instead of one walk per
reference (and per repository), the graph is walked once in topological order carrying, per
commit, a bitset (a Python int) of the branches that reach it; a tag reaches only its own commit.
Linked commits are then visited once, newest first, for every repository at once; per
(reference, repository) a counter stops counting as soon as that pair has its `last` images, so
the work is bounded by the linked commits plus the images actually kept.

Reference selection and the count limits are tasks/plan/git/select.py's, the graph tasks/plan/git/graph.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.plan.git.graph import CommitGraph
from tasks.plan.git.select import Phases, Selection, select_references
from tasks.config.policy import KeepPolicy

MAX_REF_REASONS = 3    # references named per kept digest; the rest are counted


# ------------------------------------------------------------------ the evaluation

@dataclass
class GitOutcome:
    kept: np.ndarray                                   # node ids kept by git rules
    keep_node: list[int] = field(default_factory=list)
    keep_text: list[str] = field(default_factory=list)
    # why linked nodes are not kept: (node ids, codes into texts, texts) batches
    notes: list[tuple[np.ndarray, np.ndarray, list[str]]] = field(default_factory=list)


@dataclass(frozen=True)
class LinkGroups:
    """Resolved links, one row per (node, commit), grouped by (commit, repository), newest first.

    A group is one step of the walk: the digests of one repository built on one commit. Within
    a date, commits come in topological order (children first), so a merge outranks its parents.
    """

    node: np.ndarray          # node id of each row
    repo: np.ndarray          # its repository id
    commit: np.ndarray        # its commit id (CommitGraph)
    date: np.ndarray          # that commit's committer date, microseconds
    starts: np.ndarray        # first row of each group
    ends: np.ndarray          # one past the last row of each group
    multi: set[int]           # nodes linked to several commits
    group_multi: np.ndarray   # groups holding such a node

    @classmethod
    def of(cls, node: np.ndarray, commit: np.ndarray, node_repo: np.ndarray, graph: CommitGraph,
           topo_pos: np.ndarray) -> "LinkGroups":
        # one row per (node, commit): an annotation and a tag pattern naming one commit are one link
        pair = np.sort(node * graph.n + commit)
        pair = pair[np.r_[True, pair[1:] != pair[:-1]]]
        node, commit = pair // graph.n, pair % graph.n
        repo = np.asarray(node_repo, np.int64)[node]
        multi_count = np.bincount(node)
        multi = set(np.flatnonzero(multi_count > 1).tolist())
        date = graph.date[commit]
        srt = np.lexsort((node, repo, topo_pos[commit], -date))
        node, repo, commit, date = node[srt], repo[srt], commit[srt], date[srt]
        key = commit * (int(repo.max()) + 1) + repo
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        ends = np.r_[starts[1:], len(key)]
        is_multi = np.zeros(int(node.max()) + 1, bool)
        is_multi[list(multi)] = True
        group_multi = (np.add.reduceat(is_multi[node].astype(np.int64), starts) > 0) if len(starts) \
            else np.zeros(0, bool)
        return cls(node, repo, commit, date, starts, ends, multi, group_multi)


def _reach(graph: CommitGraph, sel: Selection, order: list[int]) -> list[int]:
    """Per commit, the bitset of references (selected or not) whose history holds it."""
    ref_commit = graph.resolve(pa.array(sel.commits, pa.large_string())) if sel.names else np.zeros(0, np.int64)
    heads = [(ref, int(c)) for ref, c in enumerate(ref_commit) if c >= 0 and sel.kinds[ref] == "branch"]
    reach = graph.reach(heads, order)
    for ref, c in enumerate(ref_commit):
        if c >= 0 and sel.kinds[ref] != "branch":
            reach[c] |= 1 << ref   # a tag reaches its own commit only
    return reach


class GitHistory:
    """The commit graph, the selected references and what each reaches: one snapshot's git side.

    Built on first use and then shared: a plan evaluated in batches of repositories walks the
    graph once for all of them (tasks/plan/batches.py), not once per batch.
    """

    def __init__(self, refs: pd.DataFrame, commits: pd.DataFrame, policies: list[KeepPolicy], now_us: int):
        self._inputs = (refs, commits, policies, now_us)

    @cached_property
    def graph(self) -> CommitGraph:
        return CommitGraph(self._inputs[1])

    @cached_property
    def sel(self) -> Selection:
        refs, _, policies, now_us = self._inputs
        return select_references(refs, policies, now_us)

    @cached_property
    def topo_pos(self) -> np.ndarray:
        order = self._order
        topo_pos = np.empty(self.graph.n, dtype=np.int64)
        topo_pos[np.asarray(order, dtype=np.int64)] = np.arange(self.graph.n)
        return topo_pos

    @cached_property
    def reach(self) -> list[int]:
        return _reach(self.graph, self.sel, self._order)

    @cached_property
    def unkept_texts(self) -> np.ndarray:
        """Per commit, why its images are not kept (a function of the commit alone): filled as needed."""
        return np.full(self.graph.n, None, object)

    @cached_property
    def selected_reach(self) -> np.ndarray:
        """Per commit, whether a selected reference reaches it."""
        selected, reach = self.sel.mask, self.reach
        return np.fromiter((bool(r & selected) for r in reach), bool, count=len(reach))

    @cached_property
    def _order(self) -> list[int]:
        return self.graph.topo_order()


def evaluate_git(refs: pd.DataFrame, commits: pd.DataFrame, node: np.ndarray, commit, node_repo: np.ndarray,
                 policies: list[KeepPolicy], now_us: int, history: GitHistory | None = None) -> GitOutcome:
    """Which linked nodes the git keep policies keep, and why the others are not kept.

    node: the node id of each link row; commit: its linked commit as recorded (a full or
    abbreviated sha; an Arrow or Python string column); node_repo: repository id of every node.
    history: the same refs, commits, policies and time already made a GitHistory, shared
    by several calls.
    """
    node = np.asarray(node, np.int64)
    out = GitOutcome(np.array([], dtype=np.int64))
    if not len(node):
        return out
    history = history or GitHistory(refs, commits, policies, now_us)
    graph, sel, topo_pos, reach = history.graph, history.sel, history.topo_pos, history.reach

    cid = graph.resolve(commit)
    # A node whose every linked commit is missing (or ambiguous) is linked but unreachable.
    _notes_for_unresolved(out, node, commit, cid)
    # An abbreviation naming several commits may name one a kept reference reaches: fail closed.
    ambiguous = _keep_ambiguous(out, node, commit, cid)
    ok = cid >= 0
    if not ok.any():
        out.kept = ambiguous
        return out
    links = LinkGroups.of(node[ok], cid[ok], node_repo, graph, topo_pos)
    kept_nodes = _walk(sel, reach, links, out, history.selected_reach)
    out.kept = np.union1d(np.asarray(kept_nodes, dtype=np.int64), ambiguous)
    _notes_for_unkept(out, sel, reach, graph, links, history.unkept_texts)
    return out


def _walk(sel: Selection, reach: list[int], links: LinkGroups, out: GitOutcome, live_commit: np.ndarray) -> list[int]:
    """Visit (commit, repository) groups newest first; count slots per (reference, repository).

    Sets of references are bitsets. A group's digests are kept for each selected reference that
    reaches its commit and either still counts images in that repository or, in this phase,
    keeps all it reaches. Returns the kept node ids; their reasons go to `out`.
    """
    phases = Phases(sel)
    n_repo = int(links.repo.max()) + 1
    needing = [phases.counting] * n_repo                      # per repository: references still counting
    counts: list[dict[int, int] | None] = [None] * n_repo     # per repository: reference → images counted
    selected = sel.mask
    # only groups on commits some selected reference reaches can keep anything
    live = np.flatnonzero(live_commit[links.commit[links.starts]])
    multi = links.multi
    ranked_by: dict[int, int] = {}   # multi-commit node → references that ranked it at a newer commit
    kept: list[int] = []
    # Python lists: the loop reads one item at a time, which numpy arrays make slow
    node_of, commit_of, repo_of, date_of = (links.node.tolist(), links.commit.tolist(), links.repo.tolist(),
                                            links.date.tolist())
    starts, ends, group_multi = links.starts.tolist(), links.ends.tolist(), links.group_multi.tolist()
    next_cut = phases.next_cut
    keeps_all = phases.within | phases.unlimited
    for g in live.tolist():
        first = starts[g]
        repo = repo_of[first]
        if not (needing[repo] or keeps_all):
            continue   # this repository has all it can keep (limits only shrink as dates fall)
        date = date_of[first]
        if next_cut is not None and date <= next_cut:
            while next_cut is not None and date <= next_cut:
                phases.advance()
                next_cut = phases.next_cut
            needing = _needing(phases, counts, n_repo)
            keeps_all = phases.within | phases.unlimited
        reached_by = reach[commit_of[first]] & selected
        group = node_of[first:ends[g]]
        new_for = None   # multi-commit node → references for which this is its newest commit
        if group_multi[g]:
            # A digest already ranked at a newer commit of this reference takes no new slot.
            fresh = 0
            new_for = {}
            for n in group:
                if n in multi:
                    before = ranked_by.get(n, 0)
                    new_for[n] = reached_by & ~before
                    ranked_by[n] = before | reached_by
                    fresh |= new_for[n]
                else:
                    fresh = reached_by
            reached_by = fresh
        still_counting = needing[repo]
        counted = reached_by & still_counting
        keepers = counted | (reached_by & keeps_all)
        if not keepers:
            continue
        positions = {}   # reference → this group's rank among the images it counted here
        if counted:
            repo_counts = counts[repo]
            if repo_counts is None:
                repo_counts = counts[repo] = {}
            limit = phases.limit
            bits = counted
            while bits:
                low = bits & -bits
                ref = low.bit_length() - 1
                bits ^= low
                c = repo_counts.get(ref, 0) + 1
                repo_counts[ref] = c
                positions[ref] = c
                if c >= limit[ref]:
                    still_counting &= ~low
            needing[repo] = still_counting
        texts = _keep_texts(sel, phases, keepers, positions)
        for n in group:
            if new_for is not None and n in new_for and not (new_for[n] & keepers):
                continue
            kept.append(n)
            out.keep_node.extend([n] * len(texts))
            out.keep_text.extend(texts)
    return kept


def _needing(phases: Phases, counts, n_repo) -> list[int]:
    """Per repository, the references still counting images there once a new phase begins."""
    needing = [phases.counting] * n_repo
    for repo, repo_counts in enumerate(counts):
        if repo_counts:
            m = phases.counting
            for ref, c in repo_counts.items():
                if c >= phases.limit.get(ref, 0):
                    m &= ~(1 << ref)
            needing[repo] = m
    return needing


def _keep_texts(sel: Selection, phases: Phases, keepers: int, positions: dict[int, int]) -> list[str]:
    texts = []
    total = keepers.bit_count()
    bits = keepers
    while bits and len(texts) < MAX_REF_REASONS:
        low = bits & -bits
        ref = low.bit_length() - 1
        bits ^= low
        if sel.kinds[ref] != "branch":
            texts.append(f"git: {sel.label(ref)}")
        elif (phases.unlimited >> ref) & 1:
            texts.append(f"git: {sel.label(ref)}, every image (imagesPerReference.last -1)")
        elif ref in positions:
            texts.append(f"git: {sel.label(ref)}, image {positions[ref]} of {phases.limit[ref]}")
        else:
            texts.append(f"git: {sel.label(ref)}, commit within {phases.in_text.get(ref, '')} (imagesPerReference.in)")
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


def _notes_for_unkept(out: GitOutcome, sel: Selection, reach, graph: CommitGraph, links: LinkGroups,
                      known: np.ndarray) -> None:
    """Why git rules keep none of the linked, reachable nodes that are not kept.

    Rows are newest first; a node's note names its newest commit and the references reaching
    any of its commits. Notes are made once per distinct commit (or commit set).
    """
    node, cid, date = links.node, links.commit, links.date
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
    short = graph.short
    new = np.flatnonzero(known[uc] == None)  # noqa: E711 - elementwise on objects
    known[uc[new]] = [_unkept_text(sel, reach[c], short[c], 1, d, limits)
                      for c, d in zip(uc[new].tolist(), graph.date[uc[new]].tolist())]
    texts = known[uc].tolist()
    out.notes.append((node[single], inv, texts))
    # nodes on several commits (content-based tags rebuilt on many commits)
    m_nodes, m_texts = [], []
    rows = pd.DataFrame({"node": node[~single], "cid": cid[~single], "date": date[~single]})
    for n, sub in rows.groupby("node", sort=True):
        cs = sub["cid"].tolist()
        reached_by = 0
        for c in cs:
            reached_by |= reach[c]
        shas = _short([graph.short[c] for c in cs])
        m_nodes.append(n)
        m_texts.append(_unkept_text(sel, reached_by, shas, len(set(cs)), int(sub["date"].iloc[0]), limits))
    if m_nodes:
        out.notes.append((np.asarray(m_nodes, np.int64), np.arange(len(m_texts)), m_texts))


class _Limits:
    """The count limit per reference at a given commit date (cached per phase)."""

    def __init__(self, sel: Selection):
        self.sel = sel
        self.cuts = Phases(sel).cuts
        self.cache: dict[int, dict[int, int]] = {}

    def at(self, date: int) -> dict[int, int]:
        phase = 0
        for c in self.cuts:   # few: one per distinct imagesPerReference.in
            if date <= c:
                phase += 1
        if phase not in self.cache:
            phases = Phases(self.sel)
            while phases.phase < phase:
                phases.advance()
            self.cache[phase] = phases.limit
        return self.cache[phase]


def _unkept_text(sel: Selection, reached_by: int, shas: str, n_commits: int, date: int, limits: _Limits) -> str:
    word = "commits" if n_commits > 1 else "commit"
    if not reached_by:
        return f"git: no reference reaches {word} {shas}"
    chosen = reached_by & sel.mask
    if not chosen:
        ref = (reached_by & -reached_by).bit_length() - 1
        more = reached_by.bit_count() - 1
        extra = f" and {more} more" if more else ""
        return (f"git: {word} {shas} reached only by unselected references "
                f"({sel.label(ref)}{extra}: {sel.why_not.get(ref, '')})")
    ref = (chosen & -chosen).bit_length() - 1
    t = limits.at(date).get(ref, 0)
    if t:
        return f"git: {sel.label(ref)} selected, image beyond imagesPerReference.last {t}"
    ins = [r.in_text for r in sel.rules.get(ref, []) if r.in_text]
    if ins:
        return f"git: {sel.label(ref)} selected, {word} {shas} older than imagesPerReference.in {max(ins, key=len)}"
    return f"git: {sel.label(ref)} selected, imagesPerReference.last 0"
