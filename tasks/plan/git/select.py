"""Which git references the keep policies select, and what each keeps: imagesPerReference as numbers.

References are put in bit order (branches newest first, then tags): the walk in
tasks/plan/git/policy.py carries sets of them as the bits of one Python int, and `Phases` gives it
each reference's count limit as commit dates fall past each `imagesPerReference.in`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.plan.codes import US, to_us
from tasks.config.policy import KeepPolicy
from tasks.common.units import format_duration

INF = 1 << 60          # "no count limit"


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
        # `last` omitted means 1, `in` or not (SPEC.md; werf since 2.10 defaults it to one image)
        last = 1 if ipr.last is None else INF if ipr.last == -1 else ipr.last
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


# ------------------------------------------------------------------ count limits by date

class Phases:
    """Per reference, its count limit and whether it keeps all it reaches, as dates fall past each cut.

    A cut is the oldest date an `imagesPerReference.in` still admits; phase p applies to commits
    dated between the p-th and (p+1)-th cut, newest first. References are bits (see Selection).
    """

    def __init__(self, sel: Selection):
        self.sel = sel
        cuts = sorted({r.cut for rules in sel.rules.values() for r in rules if r.cut is not None}, reverse=True)
        self.cuts = cuts
        self.unlimited = 0     # references that keep every image they reach, whatever its date
        for ref, rules in sel.rules.items():
            if any(r.unlimited for r in rules):
                self.unlimited |= 1 << ref
        self.phase = -1
        self.advance()

    def active(self, r: ImageRule) -> bool:
        return r.cut is None or r.cut not in self.cuts[: self.phase]

    def advance(self) -> None:
        self.phase += 1
        self.limit: dict[int, int] = {}    # reference → how many images it keeps per repository
        self.within = 0                    # references keeping every image of a commit still within `in`
        self.in_text: dict[int, str] = {}
        for ref, rules in self.sel.rules.items():
            if (self.unlimited >> ref) & 1:
                continue
            t = 0
            for r in rules:
                within = r.cut is not None and self.active(r)
                if r.op == "Or" or r.cut is None or within:
                    if r.last < INF:
                        t = max(t, r.last)
                if within and (r.op == "Or" or r.last >= INF):
                    self.within |= 1 << ref
                    self.in_text[ref] = max(self.in_text.get(ref, ""), r.in_text, key=len)
            if t:
                self.limit[ref] = t
        self.counting = sum(1 << ref for ref in self.limit)   # references with a count limit

    @property
    def next_cut(self) -> int | None:
        return self.cuts[self.phase] if self.phase < len(self.cuts) else None
