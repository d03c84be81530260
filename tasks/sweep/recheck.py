"""The re-checks after approval, before deleting: the registry and the clusters as they are now.

The clusters are scanned once, before the first DELETE. The registry is read once before the
first DELETE too, and then again, per repository, right before each DELETE (and before each
retry of one): `RegistryRecheck`. The up-front checks return a `Protection`: targets that must
stay, with why. An up-front re-check that cannot run raises SweepFailed and the sweep deletes
nothing (docs/safety.md: fail closed); a later read that fails fails the DELETEs waiting on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator

from tasks.common.errors import ManifestUnknown, RegistryError, RegsweepError, SweepFailed
from tasks.oci.reference import RegistryMatcher, digest_of_image_id
from tasks.sweep.targets import Target

if TYPE_CHECKING:
    from tasks.registry.backends import Backend
    from tasks.config.models import RegsweepConfig

#: Digests per repository.
Digests = dict[str, set[str]]


@dataclass
class Protection:
    """Targets a fresh look at the registry or the clusters says must stay, with why."""

    reasons: dict[tuple[str, str], str] = field(default_factory=dict)
    referenced: Digests = field(default_factory=dict)   # digests in use now, per repository

    def add(self, key: tuple[str, str], reason: str) -> None:
        self.reasons.setdefault(key, reason)

    def update(self, other: "Protection") -> None:
        """Add `other`'s reasons; a target keeps the first reason given for it."""
        for k, why in other.reasons.items():
            self.add(k, why)


def merge_digests(*parts: Digests) -> Digests:
    """One digest set per repository: the union of `parts`, which are left untouched."""
    out: Digests = {}
    for part in parts:
        for repo, digests in part.items():
            out.setdefault(repo, set()).update(digests)
    return out


def referenced_digests(images: list, image_ids: list | None, matcher: RegistryMatcher,
                       repos: set[str]) -> Digests:
    """Digests (by `@sha256:` or pod imageID) that image references name in `repos`, any host spelling.

    An index named only by digest may be untagged, so no snapshot read it: the registry re-check
    looks at it before deleting a platform manifest it may share with a deleted index.
    """
    out: Digests = {}
    for image, image_id in zip(images, image_ids or [None] * len(images)):
        ref = matcher.parse(image) if isinstance(image, str) else None
        if ref is None or ref.repository not in repos:
            continue
        for d in (ref.digest, digest_of_image_id(image_id) if isinstance(image_id, str) else None):
            if d:
                out.setdefault(ref.repository, set()).add(d)
    return out


def cluster_protection(config: "RegsweepConfig", targets: list[Target]) -> Protection:
    """Scan the clusters again and protect every target now in use (by digest or by tag).

    A scan that fails raises: the caller deletes nothing (fail closed).
    """
    from tasks.sources.kubernetes.workloads import scan_in_use

    prot = Protection()
    workloads = scan_in_use(config.kubernetes)
    matcher = RegistryMatcher(config.registry.url, config.registry.aliases)
    by_tag: dict[tuple[str, str], str] = {}
    by_digest: dict[tuple[str, str], str] = {}
    any_digest: dict[str, str] = {}
    for r in workloads.itertuples(index=False):
        if getattr(r, "finished", False) is True:
            continue
        where = f"{r.kind} {r.namespace}/{r.name} in context {r.context}"
        # Any host: a spelling the configuration does not list may still mean this registry
        # (the plan's evaluation keeps same-named images for it too).
        ref = matcher.parse(r.image)
        if ref is not None:
            if ref.tag is not None:
                by_tag.setdefault((ref.repository, ref.tag), where)
            if ref.digest is not None:
                by_digest.setdefault((ref.repository, ref.digest), where)
        image_id = getattr(r, "image_id", None)
        d = digest_of_image_id(image_id) if isinstance(image_id, str) else None
        if d:
            # The running image's digest counts whatever spelling the spec used (fail closed).
            any_digest.setdefault(d, where)
    for t in targets:
        where = by_digest.get((t.repository, t.digest)) or any_digest.get(t.digest)
        if where:
            prot.add(t.key, f"in use by {where} (fresh cluster scan)")
            continue
        for tag in t.tags:
            if (t.repository, tag) in by_tag:
                prot.add(t.key, f"{t.repository}:{tag} in use by {by_tag[(t.repository, tag)]} (fresh cluster scan)")
                break
    prot.referenced = referenced_digests(workloads["image"].tolist(), workloads["image_id"].tolist(), matcher,
                                         {t.repository for t in targets})
    return prot


def recheck_cluster(config: "RegsweepConfig", targets: list[Target]) -> Protection:
    """The fresh cluster scan, when the configuration asks for one; SweepFailed when it cannot run."""
    if not config.sweep.recheckCluster or config.cleanup.disableKubernetesBasedPolicy:
        return Protection()
    try:
        return cluster_protection(config, targets)
    except RegsweepError as e:
        raise SweepFailed(f"the fresh cluster scan before deleting failed, so nothing was deleted: {e}") from e


@dataclass
class RepositoryNow:
    """One repository as the registry answers at one moment: every tag resolved, and what the
    manifests the snapshot did not read need."""

    repository: str
    tags: dict[str, str]                                  # tag -> the digest it resolves to now
    needed: dict[str, str] = field(default_factory=dict)  # target digest -> the new index or artifact that needs it

    def __post_init__(self) -> None:
        self._on: dict[str, list[str]] = {}   # digest -> the tags on it, sorted
        for tag in sorted(self.tags):
            self._on.setdefault(self.tags[tag], []).append(tag)

    def why_kept(self, t: Target) -> str | None:
        """Why digest target `t` must stay now: a tag not planned away with it points at it (pushed,
        promoted or rolled back onto it), or a manifest the snapshot did not read needs it."""
        for tag in self._on.get(t.digest, ()):
            if tag not in t.tags:
                return f"tag {tag} now points at it (pushed or moved after the snapshot)"
        return self.needed.get(t.digest)


class RegistryRecheck:
    """The registry as it is now, per repository affected by a sweep's targets.

    `read(repo)` lists the repository's tags, resolves each, and reads every manifest a tag (or a
    workload's or Helm revision's digest) names that the snapshot did not read, to see whether it
    lists a target as a platform manifest or refers to one. `fresh(repo, since)` is a read started
    after `since` (a `mark()`): the deletion loop asks for one before every DELETE, and the DELETEs
    asking at the same time share one read. Manifests are immutable, so each is read once.
    Listing or resolving errors raise (fail closed).
    """

    def __init__(self, backend: "Backend", targets: list[Target], known: Digests, concurrency: int,
                 referenced: Digests | None = None):
        self.backend = backend
        self.known = known
        self.referenced = referenced or {}
        self.digests: Digests = {}   # digest targets, per repository
        for t in targets:
            if not t.is_tag:
                self.digests.setdefault(t.repository, set()).add(t.digest)
        self._sem = asyncio.Semaphore(concurrency)
        self._clock = itertools.count()
        self._reads: dict[str, tuple[int, asyncio.Future[RepositoryNow]]] = {}   # the latest read per repository
        self._sending: dict[str, int] = {}   # DELETEs on the wire, per repository
        self._quiet = asyncio.Condition()    # notified whenever one of them is answered
        self._manifests: dict[tuple[str, str], tuple[frozenset[str], str | None]] = {}   # children, subject

    def mark(self) -> int:
        """Now, for `fresh`: a read that starts after this call is fresh enough."""
        return next(self._clock)

    async def fresh(self, repo: str, since: int) -> RepositoryNow:
        """`repo` as read by a read started after `since` (a `mark()`).

        One read per repository at a time: a caller that finds one under way that started too
        early waits for it to end and then shares the next, with every other caller that came
        meanwhile. So the DELETEs of a repository share reads in rounds, each read fresh for all
        of them, instead of each starting its own.
        """
        while True:
            latest = self._reads.get(repo)
            if latest is not None and latest[0] > since:
                # Shielded: one waiter cancelled (its sweep stopping) must not cancel the others' read.
                return await asyncio.shield(latest[1])
            if latest is not None and not latest[1].done():
                await asyncio.wait({latest[1]})   # its outcome is its own callers'; then start the next
                continue
            if self._sending.get(repo):
                # DELETEs of this repository are on the wire: their workers ask for a read next, so
                # let them finish and start one read for the whole round (it sees their effect too).
                async with self._quiet:
                    await self._quiet.wait_for(lambda: not self._sending.get(repo))
                continue
            self._reads[repo] = (self.mark(), asyncio.ensure_future(self.read(repo)))

    @contextlib.asynccontextmanager
    async def sending(self, repo: str) -> AsyncIterator[None]:
        """Around a DELETE in `repo` while it is on the wire (not while it waits to be retried):
        the next read of `repo` starts once none is."""
        self._sending[repo] = self._sending.get(repo, 0) + 1
        try:
            yield
        finally:
            self._sending[repo] -= 1
            async with self._quiet:
                self._quiet.notify_all()

    async def close(self) -> None:
        """Cancel reads nobody waits for any more (a sweep that stopped early)."""
        for _, read in self._reads.values():
            if not read.done():
                read.cancel()
            with contextlib.suppress(BaseException):
                await read

    async def read(self, repo: str) -> RepositoryNow:
        """List and resolve `repo`'s tags now, and inspect the manifests the snapshot did not read."""
        listed = [i for i in await self.backend.list_tags(repo) if i.tag is not None]
        resolved = await asyncio.gather(*(self._resolve(repo, i.tag, i.digest) for i in listed))
        now = RepositoryNow(repo, {i.tag: d for i, d in zip(listed, resolved) if d is not None})
        targets = self.digests.get(repo, set())
        fresh = set(now.tags.values())
        # A manifest the snapshot never saw may list a target as a platform manifest or refer to
        # it; the ones it saw are immutable and already in its children and subject columns.
        # So may a manifest that workloads or Helm name by digest only (an untagged index).
        named = self.referenced.get(repo, set())
        unread = (fresh | named) - targets - self.known.get(repo, set())
        relations = await asyncio.gather(*(self._relations(repo, d, d in fresh) for d in sorted(unread)))
        for d, found in zip(sorted(unread), relations):
            if found is None:
                continue
            children, subject = found
            how = "pushed after the snapshot" if d in fresh else "which the snapshot did not read"
            for c in sorted(children & targets):
                now.needed.setdefault(c, f"listed by index {d}, {how}")
            if subject in targets:
                now.needed.setdefault(subject, f"artifact {d}, {how}, refers to it")
        return now

    async def _resolve(self, repo: str, tag: str, listed: str | None) -> str | None:
        if listed:   # a native API lists each tag with its digest
            return listed
        async with self._sem:
            return await self.backend.resolve(repo, tag)

    async def _relations(self, repo: str, d: str, tagged: bool) -> tuple[frozenset[str], str | None] | None:
        """(platform manifests, subject) of manifest `d`; None when a digest named only by a
        workload is not (or no longer) in the repository."""
        from tasks.oci.manifest import parse_manifest

        if (repo, d) in self._manifests:
            return self._manifests[(repo, d)]
        try:
            async with self._sem:
                _, media_type, body = await self.backend.oci.get_manifest(repo, d)
        except ManifestUnknown:
            if tagged:
                raise
            return None
        m = parse_manifest(body, media_type)
        found = (frozenset(c.digest for c in m.children), m.subject)
        self._manifests[(repo, d)] = found
        return found

    async def protection(self, targets: list[Target]) -> Protection:
        """Every affected repository read now; the digest targets that must stay, with why."""
        by_repo: dict[str, list[Target]] = {}
        for t in targets:
            by_repo.setdefault(t.repository, []).append(t)
        states = await asyncio.gather(*(self.read(repo) for repo in by_repo))
        prot = Protection()
        for state, ts in zip(states, by_repo.values()):
            for t in ts:
                why = None if t.is_tag else state.why_kept(t)
                if why:
                    prot.add(t.key, why)
        return prot


async def recheck_registry(recheck: RegistryRecheck, targets: list[Target]) -> Protection:
    """`recheck.protection`, with a failure to look turned into SweepFailed (nothing deleted)."""
    try:
        return await recheck.protection(targets)
    except RegistryError as e:
        raise SweepFailed(f"the registry re-check before deleting failed, so nothing was deleted: {e}") from e
