"""The deletion-target graph: which manifests (and lone tags) a plan lets a sweep delete, in order.

A manifest goes by digest only when every tag on it is `delete` in the plan and nothing kept
needs it; its relatives (platform manifests of an index, artifacts of a subject) go with it,
after it. docs/safety.md: digest-level decisions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.oci.manifest import tag_subject

if TYPE_CHECKING:
    import pandas as pd

# Journal events, which are also the statuses of an Outcome.
PLANNED, STARTED, DONE, SKIPPED, FAILED = "planned", "started", "done", "skipped", "failed"
# The status a dry run gives a target it would delete.
WOULD_DELETE = "would-delete"

Key = tuple[str, str]  # (repository, digest)

# What a target's DELETE names: a manifest by its digest, or one tag alone.
DIGEST, TAG = "digest", "tag"

# The digests a sweep deletes by (the algorithms the OCI image spec registers). Anything else in
# a plan or snapshot where a digest belongs is not one, whatever it looks like: a DELETE naming it
# could name a tag instead (security review, finding 7).
_DIGEST_RX = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
# A tag as the distribution spec writes it: no `/`, `..` or `?` that could turn a lone-tag DELETE
# into a request for something else.
_TAG_RX = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def is_deletable_digest(ref: str) -> bool:
    """Whether `ref` is a digest a sweep may name in a DELETE (sha256 or sha512, lowercase hex)."""
    return bool(_DIGEST_RX.match(ref))


def is_tag_name(ref: str) -> bool:
    """Whether `ref` is a valid tag name (the distribution spec's grammar)."""
    return bool(_TAG_RX.match(ref))


@dataclass
class Target:
    """One deletion: a manifest by digest, or (where supported) a lone tag."""

    repository: str
    ref: str                    # what DELETE names: the digest, or the tag for a lone-tag deletion
    digest: str                 # the planned digest
    kind: str                   # image | index | artifact | referrers-index | unknown
    ref_kind: str               # DIGEST (the manifest, with every tag on it) or TAG (this tag alone)
    tags: tuple[str, ...] = ()  # tags that must still resolve to `digest` right before deleting
    size: int = 0               # bytes counted for the report (0 for platform manifests of a deleted index)
    parents: tuple[str, ...] = ()  # digests (same repository) that must be deleted first
    note: str = ""              # for a lone tag: why its digest stays

    def __post_init__(self) -> None:
        # What a DELETE names is decided when the target is made, never later from what `ref`
        # looks like; a target that would name something else cannot be made (fail closed).
        if self.ref_kind == DIGEST:
            ok = self.ref == self.digest and is_deletable_digest(self.ref)
        else:
            ok = self.ref_kind == TAG and is_tag_name(self.ref) and is_deletable_digest(self.digest)
        if not ok:
            raise ValueError(f"not a {self.ref_kind} target: {self.ref!r} of {self.digest!r}")

    @property
    def is_tag(self) -> bool:
        return self.ref_kind == TAG

    @property
    def key(self) -> tuple[str, str]:
        return (self.repository, self.ref)

    def outcome(self, status: str, detail: str = "") -> "Outcome":
        """This target ended with `status` (`detail` says why or how)."""
        return Outcome(self.repository, self.ref, self.digest, self.kind, self.ref_kind, self.tags, self.size,
                       status, detail)


@dataclass
class Outcome:
    """What happened to one target in this run."""

    repository: str
    ref: str
    digest: str
    kind: str
    ref_kind: str               # DIGEST or TAG, as the target's
    tags: tuple[str, ...]
    size: int
    status: str                 # done | skipped | failed | would-delete
    detail: str = ""

    @property
    def is_tag(self) -> bool:
        return self.ref_kind == TAG


@dataclass
class _Graph:
    """The plan and its snapshot as relations between (repository, digest) keys."""

    planned_delete_tags: dict[Key, set[str]]
    kept: set[Key]                       # a `keep` row names the digest
    seeds: set[Key]                      # a `delete` row names the digest
    kind: dict[Key, str]
    size: dict[Key, int]
    subject: dict[Key, str]              # artifact -> the digest it refers to
    snapshot_tags: dict[Key, set[str]]   # tags on each digest in the snapshot
    indexes_of: dict[Key, set[str]]      # platform manifest -> the indexes listing it
    children_of: dict[Key, set[str]]     # index -> its platform manifests
    referrers_of: dict[Key, set[str]]    # subject -> the artifacts referring to it

    def parents(self, k: Key) -> set[str]:
        """Digests that must be deleted before `k`: its indexes and its subject."""
        repo, _ = k
        ps = set(self.indexes_of.get(k, set()))
        s = self.subject.get(k)
        if s and (repo, s) in self.kind:
            ps.add(s)
        return ps


def _graph(plan: "pd.DataFrame", tags: "pd.DataFrame", manifests: "pd.DataFrame",
           children: "pd.DataFrame") -> _Graph:
    g = _Graph({}, set(), set(), {}, {}, {}, {}, {}, {}, {})
    for r in plan.itertuples(index=False):
        k = (r.repository, r.digest)
        g.kind.setdefault(k, r.kind)
        g.size.setdefault(k, int(r.size or 0))
        if r.action == "delete":
            g.seeds.add(k)
            if isinstance(r.tag, str):
                g.planned_delete_tags.setdefault(k, set()).add(r.tag)
        else:
            g.kept.add(k)
    for r in manifests.itertuples(index=False):
        k = (r.repository, r.digest)
        g.kind.setdefault(k, r.kind)
        g.size.setdefault(k, int(r.size or 0))
        if isinstance(r.subject, str):
            g.subject[k] = r.subject
    # The referrers fallback tag belongs to its subject.
    for r in tags.itertuples(index=False):
        if r.gone or not isinstance(r.digest, str):
            continue
        k = (r.repository, r.digest)
        g.snapshot_tags.setdefault(k, set()).add(r.tag)
        fs = tag_subject(r.tag)
        if fs and k not in g.subject:
            g.subject[k] = fs
    for r in children.itertuples(index=False):
        g.indexes_of.setdefault((r.repository, r.child_digest), set()).add(r.index_digest)
        g.children_of.setdefault((r.repository, r.index_digest), set()).add(r.child_digest)
    for (repo, d), s in g.subject.items():
        g.referrers_of.setdefault((repo, s), set()).add(d)
    return g


def _why_kept(g: _Graph) -> dict[Key, str]:
    """Digests the plan and snapshot keep outright: a tag not planned away, or a `keep` row."""
    why: dict[Key, str] = {}
    for k, ts in g.snapshot_tags.items():
        for t in sorted(ts - g.planned_delete_tags.get(k, set())):
            fs = tag_subject(t)
            if fs and g.subject.get(k) == fs:
                continue  # kept or deleted with its subject
            why.setdefault(k, f"tag {t} on this digest is not planned for deletion")
    for k in g.kept:
        why.setdefault(k, "the plan keeps this digest")
    return why


def _deletable(g: _Graph) -> tuple[set[Key], dict[Key, str]]:
    """What the plan deletes plus every relative that goes with it, minus what must stay (and why)."""
    why_kept = _why_kept(g)
    cand = set(g.seeds)
    stack = list(cand)
    while stack:
        repo, d = stack.pop()
        for rel in g.children_of.get((repo, d), set()) | g.referrers_of.get((repo, d), set()):
            k = (repo, rel)
            if k not in cand:
                cand.add(k)
                stack.append(k)
    why_not = {k: why_kept[k] for k in cand if k in why_kept}
    for k in cand:
        if not is_deletable_digest(k[1]):
            # Fail closed: a DELETE must never name something that only claims to be a digest.
            why_not[k] = f"{k[1]!r} is not a sha256 or sha512 digest"
    cand -= set(why_not)
    # Remove, until nothing changes, whatever a surviving manifest still needs.
    changed = True
    while changed:
        changed = False
        for k in sorted(cand):
            for p in sorted(g.parents(k)):
                if (k[0], p) not in cand:
                    rel = "refers to" if g.subject.get(k) == p else "is a platform manifest of"
                    why_not[k] = f"{rel} {p}, which is kept"
                    cand.discard(k)
                    changed = True
                    break
    return cand, why_not


def deletion_targets(plan: "pd.DataFrame", tags: "pd.DataFrame", manifests: "pd.DataFrame",
                     children: "pd.DataFrame") -> tuple[list[Target], list[Outcome]]:
    """Targets in deletion order (parents first), and the planned deletions this sweep will not make.

    Fails closed wherever the plan and its snapshot disagree: a snapshot tag on a digest that the
    plan does not mark `delete` keeps the digest, as does any `keep` row for it.
    """
    g = _graph(plan, tags, manifests, children)
    cand, why_not = _deletable(g)

    # Order: parents before children (depth in the relatives graph), then by name for stable output.
    depth: dict[Key, int] = {}

    def level(k: Key, seen: tuple[Key, ...] = ()) -> int:
        if k in depth:
            return depth[k]
        ps = [(k[0], p) for p in g.parents(k) if (k[0], p) in cand and (k[0], p) not in seen]
        depth[k] = 1 + max((level(p, seen + (k,)) for p in ps), default=-1)
        return depth[k]

    targets: list[Target] = []
    for k in sorted(cand, key=lambda k: (level(k), k)):
        repo, d = k
        ps = tuple(sorted(p for p in g.parents(k) if (repo, p) in cand))
        in_index = any((repo, p) in cand for p in g.indexes_of.get(k, set()))
        tags_on = g.snapshot_tags.get(k, set()) | g.planned_delete_tags.get(k, set())
        targets.append(Target(repository=repo, ref=d, digest=d, kind=g.kind.get(k, "unknown"), ref_kind=DIGEST,
                              tags=tuple(sorted(tags_on)), size=0 if in_index else g.size.get(k, 0), parents=ps))

    # Planned deletions that will not happen as digests: a lone `delete` tag may still go alone.
    skipped: list[Outcome] = []
    for k in sorted(g.seeds - cand):
        repo, d = k
        reason = why_not.get(k, "kept by the sweep")
        kind = g.kind.get(k, "unknown")
        # A referrers fallback (or cosign) tag is its subject's, never an image tag of its own to remove.
        # A lone tag is removed only when its digest and its own name are what they claim to be.
        planned = [] if not is_deletable_digest(d) else sorted(
            t for t in g.planned_delete_tags.get(k, set()) if not tag_subject(t))
        lone = [t for t in planned if is_tag_name(t)]
        for t in planned:
            if not is_tag_name(t):
                skipped.append(Outcome(repo, t, d, kind, TAG, (t,), 0, SKIPPED,
                                       f"{t!r} is not a valid tag name: a DELETE naming it could name something else"))
        for t in lone:
            targets.append(Target(repository=repo, ref=t, digest=d, kind=kind, ref_kind=TAG, tags=(t,), note=reason))
        if not lone:
            skipped.append(Outcome(repo, d, d, kind, DIGEST, tuple(sorted(g.snapshot_tags.get(k, set()))),
                                   g.size.get(k, 0), SKIPPED, reason))
    return targets, skipped
