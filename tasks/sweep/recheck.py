"""The re-checks after approval, before deleting: the registry and the clusters as they are now.

Each returns a `Protection`: targets that must stay, with why. A re-check that cannot run
raises SweepFailed and the sweep deletes nothing (README "Safety": fail closed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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


async def registry_protection(backend: "Backend", targets: list[Target], known: Digests,
                              concurrency: int, referenced: Digests | None = None) -> Protection:
    """Look at each affected repository as it is now: tags pushed or moved onto a target, new indexes.

    Every current tag is resolved; a target that a tag not planned away with it now points at
    stays (a tag pushed, promoted or rolled back onto it), and so does a platform manifest
    listed by a new index, or a subject given a new artifact. Listing or resolving errors raise
    (fail closed).
    """
    from tasks.oci.manifest import parse_manifest

    prot = Protection()
    by_repo: dict[str, list[Target]] = {}
    for t in targets:
        by_repo.setdefault(t.repository, []).append(t)
    sem = asyncio.Semaphore(concurrency)

    async def resolve(repo: str, ref: str, listed: str | None) -> str | None:
        if listed:   # a native API lists each tag with its digest
            return listed
        async with sem:
            return await backend.resolve(repo, ref)

    async def one_repo(repo: str, ts: list[Target]) -> None:
        digests = {t.digest: t for t in ts if not t.is_tag}
        planned = {(tag, t.digest) for t in ts for tag in t.tags}
        current = [i for i in await backend.list_tags(repo) if i.tag is not None]
        resolved = await asyncio.gather(*(resolve(repo, i.tag, i.digest) for i in current))
        fresh: set[str] = set()
        for tag, d in zip((i.tag for i in current), resolved):
            if d is None:
                continue
            if d in digests and (tag, d) not in planned:
                prot.add((repo, d), f"tag {tag} now points at it (pushed or moved after the snapshot)")
            fresh.add(d)
        # A manifest the snapshot never saw may list a target as a platform manifest or refer to
        # it; the ones it saw are immutable and already in its children and subject columns.
        # So may a manifest that workloads or Helm name by digest only (an untagged index).
        named = (referenced or {}).get(repo, set())

        async def inspect(d: str) -> None:
            try:
                async with sem:
                    _, media_type, body = await backend.oci.get_manifest(repo, d)
            except ManifestUnknown:
                if d in fresh:
                    raise
                return  # named by a workload, but not (or no longer) in this repository
            m = parse_manifest(body, media_type)
            how = "pushed after the snapshot" if d in fresh else "which the snapshot did not read"
            for c in m.children:
                if c.digest in digests:
                    prot.add((repo, c.digest), f"listed by index {d}, {how}")
            if m.subject in digests:
                prot.add((repo, m.subject), f"artifact {d}, {how}, refers to it")

        await asyncio.gather(*(inspect(d) for d in (fresh | named) - set(digests) - known.get(repo, set())))

    await asyncio.gather(*(one_repo(repo, ts) for repo, ts in by_repo.items()))
    return prot


async def recheck_registry(backend: "Backend", targets: list[Target], known: Digests, concurrency: int,
                           referenced: Digests) -> Protection:
    """`registry_protection`, with a failure to look turned into SweepFailed (nothing deleted)."""
    try:
        return await registry_protection(backend, targets, known, concurrency, referenced)
    except RegistryError as e:
        raise SweepFailed(f"the registry re-check before deleting failed, so nothing was deleted: {e}") from e
