"""The registry source: reads every tag of the selected repositories into snapshot tables.

`extract` scans the configured registry through its backend (tasks/registry/backends/: the Distribution
API, or a native API chosen by `registry.api`) into the TAGS, MANIFESTS, CHILDREN, LINKS and BLOBS
tables (tasks/store/schemas.py); `probe_capabilities` then probes what the registry lets regsweep do
(tasks/registry/capabilities.py) for snapshot.json.
Manifests and image configs come from the store's `BlobCache` when an earlier scan read them, so
a rescan of an unchanged registry costs one HEAD per tag through the Distribution API, and
nothing but the listing pages where a native API lists each tag with its digest.

What a registry sends is checked before any of it reaches a URL or a table (hostile input is
normal input; when in doubt the image is kept):
- repository and tag names must follow the distribution grammar (tasks/oci/reference.py); one
  that does not is never requested, and the source fails naming it, so the snapshot is published
  incomplete and no plan from it deletes anything;
- digests a manifest names (index children, its subject, BuildKit attestation subjects, its
  config) must be sha256/sha512 digests; any other value is never requested and becomes the
  manifest's `problem`, which keeps the image;
- a config blob is read only when its descriptor says it is at most 4 MiB, and refused when it
  turns out larger than its descriptor says (recorded as a problem: kept);
- a tag listed twice is read once, and a tag listed on two digests is recorded on both;
- any other exception while scanning (a native API's JSON without a key, ...) fails the source
  with a one-line RegistryError, never the snapshot flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable, Iterable, Iterator

import pyarrow as pa

from tasks.oci import manifest as oci
from tasks.registry.backends import Backend, TagInfo, open_backend
from tasks.sources.blobcache import CACHE_NAME, BlobCache
from tasks.registry.capabilities import Capabilities, probe_registry
from tasks.config.models import LinkConfig, RegistryConfig, RegsweepConfig
from tasks.registry.distribution import RegistryClient, RetryPolicy
from tasks.common.errors import ManifestUnknown, RegistryAuthError, RegistryError, RegsweepError
from tasks.registry.errors import ResponseTooLarge
from tasks.common.notes import warn
from tasks.common.progress import reporter
from tasks.oci.reference import is_repository_name, is_tag_name, repository_globs
from tasks.store.schemas import BLOBS, CHILDREN, LINKS, MANIFESTS, TAGS, from_rows

log = logging.getLogger("regsweep.registry")

_HEX_RX = re.compile(r"^[0-9a-fA-F]{7,64}$")
#: Refused names quoted in the source's error; the count goes on.
_REFUSED_SHOWN = 5


def _quote(value: object) -> str:
    """A value the registry sent, for a message: repr (control characters escaped), cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


def preflight(config: RegistryConfig) -> None:
    """Raise RegistryAuthError (or ConfigError) now if the registry refuses our credentials.

    Any other failure is left to the snapshot itself, which records it and is published as
    incomplete (docs/safety.md: fail closed) instead of vanishing before it started.
    """
    async def go() -> None:
        async with open_backend(config, retry=RetryPolicy(attempts=2)) as backend:
            await backend.ping()
    try:
        asyncio.run(go())
    except RegistryAuthError:
        raise
    except RegistryError:
        pass


# --- the extractor ----------------------------------------------------------------------------

@dataclass
class _Facts:
    """What an index needs to know of a manifest it lists."""

    size: int
    created: datetime | None
    revision: str | None
    revision_source: str | None
    problem: str | None = None


@dataclass
class ScanResult:
    tags: list[dict] = field(default_factory=list)
    manifests: list[dict] = field(default_factory=list)
    children: list[dict] = field(default_factory=list)
    links: set[tuple[str, str, str, str]] = field(default_factory=set)
    # (repository, digest, blob, kind, size) tuples, digests interned: shared base layers would
    # otherwise cost a string per image at 10^5 tags (benchmarks/bench_memory.py)
    blobs: list[tuple[str, str, str, str, int]] = field(default_factory=list)

    def add_blobs(self, repo: str, digest: str, body_size: int, m: oci.Manifest) -> None:
        """The manifest's own body, its config and its layers, each distinct blob once."""
        rows = {digest: ("manifest", body_size)}
        for kind, d in ([("config", m.config)] if m.config else []) + [("layer", d) for d in m.layers]:
            if oci.is_digest(d.digest):
                rows.setdefault(d.digest, (kind, d.size))
        self.blobs.extend((repo, digest, sys.intern(b), kind, size) for b, (kind, size) in rows.items())

    def tables(self) -> dict[str, pa.Table]:
        link_rows = [dict(zip(("repository", "digest", "commit", "source"), t)) for t in sorted(self.links)]
        # Workers finish in any order; sorted rows make snapshots of an unchanged registry identical.
        tags = sorted(self.tags, key=lambda r: (r["repository"], r["tag"], r["digest"] or ""))
        manifests = sorted(self.manifests, key=lambda r: (r["repository"], r["digest"]))
        children = sorted(self.children, key=lambda r: (r["repository"], r["index_digest"], r["child_digest"]))
        return {
            "tags": pa.Table.from_pylist(tags, schema=TAGS),
            "manifests": pa.Table.from_pylist(manifests, schema=MANIFESTS),
            "children": pa.Table.from_pylist(children, schema=CHILDREN),
            "links": pa.Table.from_pylist(link_rows, schema=LINKS),
            "blobs": from_rows(sorted(self.blobs), BLOBS),
        }


class Scanner:
    """Reads the tags `backend.config` selects into a ScanResult (see `extract`)."""

    def __init__(self, backend: Backend, link: LinkConfig, cache: BlobCache):
        self.backend, self.client, self.cache = backend, backend.oci, cache
        self.result = ScanResult()
        # (repository, tag) -> the digests the listing gave, in order: one, unless the tag was
        # listed twice on two digests (it moved between two pages of the listing)
        self.listed: dict[tuple[str, str], list[str]] = {}
        self.refused: list[str] = []    # names the registry sent that break the grammar, quoted
        # (repository, digest) -> (pushed, last pulled): the registry's own times, where its API gives them
        self.times: dict[tuple[str, str], tuple[datetime | None, datetime | None]] = {}
        self.patterns = [re.compile(p) for p in link.tagPatterns]
        self._records: dict[tuple[str, str], asyncio.Task] = {}
        self._blobs: dict[str, asyncio.Task] = {}
        self._referrers_done: set[tuple[str, str]] = set()

    # -- selection and listing ------------------------------------------------------------------
    async def repositories(self) -> list[str]:
        """The selected repositories, sorted; RegistryError naming any selected name that breaks
        the distribution grammar (none of them is requested)."""
        globs = self.client.config.repositories
        if globs and not any(ch in g for g in globs for ch in "*?["):
            # Literal names need no catalog (which tokens limited to some repositories may not see).
            names = list(dict.fromkeys(globs))
            bad = [f"repository {_quote(n)} (registry.repositories)" for n in names if not is_repository_name(n)]
            if bad:
                raise self._refusal(bad)
            return sorted(names)
        listed = await self.backend.list_repositories()
        # A name that is no string at all makes the catalog answer malformed, whatever the globs.
        bad = [f"repository {_quote(n)}" for n in listed if not isinstance(n, str)]
        names = [n for n in listed if isinstance(n, str)]
        if globs:
            rx = repository_globs(globs)
            names = [n for n in names if rx.fullmatch(n)]
        # `team/**` selects `team/../app`, which a URL would turn into `app`: refused, not read.
        bad += [f"repository {_quote(n)}" for n in names if not is_repository_name(n)]
        if bad:
            raise self._refusal(bad)
        return sorted(set(names))

    def _refusal(self, what: list[str]) -> RegistryError:
        """The source's failure for names that break the distribution grammar (fail closed: the
        snapshot is published incomplete, so no plan from it deletes anything)."""
        shown = "; ".join(what[:_REFUSED_SHOWN])
        if len(what) > _REFUSED_SHOWN:
            shown += f"; and {len(what) - _REFUSED_SHOWN} more"
        names = "1 name that breaks" if len(what) == 1 else f"{len(what)} names that break"
        return RegistryError(self.client.name, f"refused {names} the distribution grammar, never requested: {shown}")

    async def _list(self, repo: str) -> tuple[str, list[str]]:
        try:
            infos = await self.backend.list_tags(repo)
        except ManifestUnknown as e:
            # Gone since the catalog listed it, or a configured name never pushed: no tags to lose.
            warn(log, f"{e}; recorded with no tags")
            return repo, []
        tags: dict[str, None] = {}
        for info in infos:
            if info.tag is not None and not is_tag_name(info.tag):
                # `../manifests/sha256:<kept>` would turn a lone-tag DELETE into a digest DELETE
                self.refused.append(f"tag {_quote(info.tag)} of {repo}")
                continue
            self._note(repo, info)
            if info.tag is not None:
                tags[info.tag] = None   # a tag listed twice (offset paging while tags are pushed) is read once
        return repo, list(tags)

    def _note(self, repo: str, info: TagInfo) -> None:
        """Keep what the listing said: the tag's digests, and each digest's latest push and pull."""
        if not (info.digest and oci.is_digest(info.digest)):
            return
        if info.tag is not None:
            digests = self.listed.setdefault((repo, info.tag), [])
            if info.digest not in digests:
                digests.append(info.digest)
        pushed, pulled = self.times.get((repo, info.digest), (None, None))
        # A digest pushed under several tags counts its latest push: when in doubt, fresher (kept).
        self.times[(repo, info.digest)] = (_later(pushed, info.pushed), _later(pulled, info.last_pulled))

    # -- reading ----------------------------------------------------------------------------------
    async def _blob(self, repo: str, digest: str, *, manifest: bool, max_bytes: int | None = None) -> tuple[str, bytes]:
        """A manifest or config by digest, from the cache or fetched once however many ask; a blob
        is read up to `max_bytes` (ResponseTooLarge past it)."""
        hit = self.cache.get(digest)
        if hit is not None:
            return hit
        if not oci.is_content_digest(digest):
            # Callers check first; this is the last guard before a registry-supplied value reaches a URL.
            raise RegistryError(self.client.name, f"refused to read {_quote(digest)}: not a digest", repository=repo)
        task = self._blobs.get(digest)
        if task is None:
            async def fetch() -> tuple[str, bytes]:
                if manifest:
                    _, media_type, body = await self.client.get_manifest(repo, digest)
                else:
                    media_type, body = "blob", await self.client.get_blob(repo, digest, max_bytes=max_bytes)
                # The client verifies sha256 content; other algorithms are verified here.
                if not digest.startswith("sha256:") and not oci.matches_digest(body, digest):
                    raise RegistryError(self.client.name, f"served content that does not hash to {digest}",
                                        repository=repo)
                self.cache.put(digest, media_type, body)
                return media_type, body
            task = self._blobs[digest] = asyncio.ensure_future(fetch())
        try:
            return await task
        except (ManifestUnknown, ResponseTooLarge):
            # Deleted here, perhaps present in another repository; or larger than *this* asker's
            # descriptor says (another descriptor of the same blob may be honest): let a later ask retry.
            self._blobs.pop(digest, None)
            raise

    async def _resolve(self, repo: str, tag: str) -> tuple[str, str, bytes] | None:
        """(digest, media type, body) the tag points at now; None when it is gone."""
        if self.cache.loaded:
            digest = await self.client.head_manifest(repo, tag)
            if digest is None:
                return None
            hit = self.cache.get(digest)
            if hit is not None:
                return digest, hit[0], hit[1]
            try:
                media_type, body = await self._blob(repo, digest, manifest=True)
                return digest, media_type, body
            except ManifestUnknown:
                pass  # re-pointed and the old manifest deleted since the HEAD: read the tag again
        try:
            # With nothing cached a GET by tag answers in one request what HEAD + GET would in two;
            # the digest is computed from the very bytes parsed, so a re-pointed tag stays consistent.
            digest, media_type, body = await self.client.get_manifest(repo, tag)
        except ManifestUnknown:
            return None
        self.cache.put(digest, media_type, body)
        return digest, media_type, body

    async def _listed(self, repo: str, digest: str) -> tuple[str, str, bytes] | None:
        """The manifest the listing named by digest (cached, else one GET); None when it is gone."""
        try:
            media_type, body = await self._blob(repo, digest, manifest=True)
        except ManifestUnknown:
            return None   # deleted between the listing and this read
        return digest, media_type, body

    async def read_tag(self, repo: str, tag: str) -> None:
        """Record the tag (and what its manifest reaches); a tag the listing named on several
        digests gets a row for each, and a reference by the tag keeps them all (tasks/plan/nodes.py)."""
        digests = self.listed.get((repo, tag)) or [None]
        if len(digests) > 1:
            warn(log, f"registry {self.client.name}/{repo}:{tag}: listed on {len(digests)} digests "
                      f"({', '.join(digests)}), as when it moves during the listing; each is recorded")
        for digest in digests:
            await self._read_tag(repo, tag, digest)

    async def _read_tag(self, repo: str, tag: str, digest: str | None) -> None:
        found = await (self._listed(repo, digest) if digest else self._resolve(repo, tag))
        if found is None:
            self.result.tags.append({"repository": repo, "tag": tag, "digest": None, "gone": True})
            return
        digest, media_type, body = found
        self.result.tags.append({"repository": repo, "tag": tag, "digest": digest, "gone": False})
        subject = oci.fallback_subject(tag)
        await self.record(repo, digest, media_type, body, fallback_for=subject)
        if subject is None:
            for rx in self.patterns:
                m = rx.search(tag)
                if m and m.group("commit"):
                    self.result.links.add((repo, digest, m.group("commit").lower(), "tag-pattern"))
            await self._referrers(repo, digest)

    async def record(self, repo: str, digest: str, media_type: str | None = None, body: bytes | None = None, *,
                     subject: str | None = None, fallback_for: str | None = None) -> _Facts | None:
        """Add one manifest (and what it reaches) to the result once; None if it is missing."""
        key = (repo, digest)
        task = self._records.get(key)
        if task is None:
            task = self._records[key] = asyncio.ensure_future(
                self._record(repo, digest, media_type, body, subject, fallback_for))
        return await task

    async def _record(self, repo: str, digest: str, media_type: str | None, body: bytes | None,
                      subject: str | None, fallback_for: str | None) -> _Facts | None:
        key = (repo, digest)
        if body is None or media_type is None:
            try:
                media_type, body = await self._blob(repo, digest, manifest=True)
            except ManifestUnknown:
                return None
        m = oci.parse_manifest(body, media_type)
        # why the build time or revision could not be read, or what in it was refused: the image is kept
        problems = [m.error] if m.error else []
        if m.error:
            warn(log, f"registry {self.client.name}/{repo}@{digest}: {m.error}; recorded as kind unknown")
        kind = m.kind
        size = len(body) + m.own_size
        created, revision, rev_source = oci.build_facts(m, None)
        row_subject = m.subject or subject
        if m.subject is not None and not oci.is_content_digest(m.subject):
            problems.append(self._refused_digest(repo, digest, "subject", m.subject))
            row_subject = subject

        if fallback_for is not None and m.kind in (oci.INDEX, oci.ARTIFACT) and m.media_type in oci.INDEX_TYPES:
            # The OCI referrers fallback tag: an index of the subject's referrers, not an image.
            kind, row_subject, size = oci.REFERRERS_INDEX, fallback_for, len(body)
            created, revision = None, None
            await asyncio.gather(*(self.record(repo, d.digest, subject=fallback_for)
                                   for d in self._readable(repo, digest, m.children, problems)))
        elif m.kind in (oci.IMAGE, oci.ARTIFACT) and m.has_image_config and not (created and revision):
            # The config only matters for the build time and revision; annotations that carry both
            # (buildx --annotation, werf) save its GET.
            config, problem = await self._config(repo, m.config, digest)
            problems += [problem] if problem else []
            created, revision, rev_source = oci.build_facts(m, config)
        elif m.kind in (oci.INDEX, oci.ARTIFACT) and m.children:
            children = self._readable(repo, digest, m.children, problems)
            facts = await asyncio.gather(*(self._child(repo, digest, d) for d in children))
            size = len(body) + sum(f.size for f in facts)
            problems += [f.problem for f in facts if f.problem][:1]
            if created is None:
                created = max((f.created for f in facts if f.created), default=None)
            if revision is None:
                # Multi-platform builds label each platform's config, not the index.
                with_rev = [f for f in facts if f.revision]
                if with_rev:
                    revision, rev_source = with_rev[0].revision, with_rev[0].revision_source

        if revision:
            commit = revision.strip()
            if _HEX_RX.match(commit):
                commit = commit.lower()  # git prints shas in lower case; evaluation compares strings
            self.result.links.add((repo, digest, commit, rev_source or "annotation"))
        problem = "; ".join(problems) or None
        pushed, last_pulled = self.times.get(key, (None, None))
        self.result.add_blobs(repo, digest, len(body), m)
        self.result.manifests.append({
            "repository": repo, "digest": digest, "media_type": media_type, "kind": kind,
            "artifact_type": m.artifact_type, "size": size, "created": created, "revision": revision,
            "subject": row_subject, "pushed": pushed, "last_pulled": last_pulled, "problem": problem,
        })
        return _Facts(size, created, revision, rev_source, problem)

    def _refused_digest(self, repo: str, digest: str, what: str, value: object) -> str:
        """The problem of manifest `digest` that names `value` as a digest when it is none."""
        problem = f"{what} digest {_quote(value)} is not a digest"
        warn(log, f"registry {self.client.name}/{repo}@{digest}: {problem}; not read, the image is kept")
        return problem

    def _readable(self, repo: str, digest: str, children: list[oci.Descriptor],
                  problems: list[str]) -> list[oci.Descriptor]:
        """The index entries whose digest may be read; a problem of the index for each other one.

        Reading `v1.0` "by digest" would read the tag `v1.0`, record it as a platform, and let a
        sweep delete that tag as a lone one: such an entry is left out of CHILDREN, never requested."""
        out = []
        for d in children:
            if oci.is_content_digest(d.digest):
                out.append(d)
            else:
                problems.append(self._refused_digest(repo, digest, "child", d.digest))
        return out

    async def _child(self, repo: str, index_digest: str, d: oci.Descriptor) -> _Facts:
        self.result.children.append({"repository": repo, "index_digest": index_digest,
                                     "child_digest": d.digest, "platform": d.platform})
        subject, problem = None, None
        if d.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            # BuildKit's provenance/SBOM entries describe a sibling platform image.
            subject = d.annotations.get("vnd.docker.reference.digest")
            if subject is not None and not oci.is_content_digest(subject):
                problem = self._refused_digest(repo, index_digest, "attestation subject", subject)
                subject = None
        facts = await self.record(repo, d.digest, subject=subject)
        if facts is None:
            problem = f"platform manifest {d.digest} is missing (HTTP 404)"
            warn(log, f"registry {self.client.name}/{repo}@{index_digest}: {problem}")
            return _Facts(d.size, None, None, None, problem)
        return dataclasses.replace(facts, problem=problem) if problem else facts

    async def _config(self, repo: str, d: oci.Descriptor, manifest_digest: str) -> tuple[oci.ImageConfig | None, str | None]:
        """The image config, and the problem that kept it from being read (None when it was).

        Read only when its descriptor is a digest and says at most MAX_BODY_BYTES: a "config" that
        points at a multi-GB layer must not be read into memory (nor into the blob cache)."""
        where = f"registry {self.client.name}/{repo}@{manifest_digest}"
        if not oci.is_content_digest(d.digest):
            return None, self._refused_digest(repo, manifest_digest, "config", d.digest)
        if d.size < 0 or d.size > oci.MAX_BODY_BYTES:
            problem = (f"config size {d.size} is not a size" if d.size < 0 else
                       f"config larger than {oci.MAX_BODY_TEXT}: {d.digest} is {d.size:,} bytes by its descriptor") + "; not read"
            warn(log, f"{where}: {problem}")
            return None, problem
        try:
            # Read no more than the descriptor says: one that understates the size stops the read there.
            _, body = await self._blob(repo, d.digest, manifest=False, max_bytes=d.size)
        except ManifestUnknown:
            problem = f"config blob {d.digest} is missing (HTTP 404)"
            warn(log, f"{where}: {problem}")
            return None, problem
        except ResponseTooLarge:
            problem = f"config larger than its descriptor: {d.digest} is over {d.size:,} bytes, its descriptor's size; not read"
            warn(log, f"{where}: {problem}")
            return None, problem
        if len(body) > d.size:
            problem = (f"config larger than {oci.MAX_BODY_TEXT}" if len(body) > oci.MAX_BODY_BYTES else
                       f"config larger than its descriptor") + f": {d.digest} is {len(body):,} bytes, its descriptor says {d.size:,}"
            warn(log, f"{where}: {problem}")
            return None, problem
        cfg = oci.parse_config(body)
        if cfg.error:
            warn(log, f"registry {self.client.name}/{repo}@{manifest_digest}: {cfg.error}")
        return cfg, cfg.error

    async def _referrers(self, repo: str, digest: str) -> None:
        if self.client.referrers_supported is False or (repo, digest) in self._referrers_done:
            return
        self._referrers_done.add((repo, digest))
        found = await self.client.referrers(repo, digest)
        for d in found or []:
            ref = d.get("digest")
            if isinstance(ref, str) and oci.is_digest(ref):
                await self.record(repo, ref, subject=digest)
                await self._referrers(repo, ref)  # signatures of SBOMs, and so on

    # -- the whole scan ---------------------------------------------------------------------------
    async def scan(self, after_listing: Callable[[list[tuple[str, str]]], Awaitable[None] | None] | None = None) -> ScanResult:
        progress = reporter()
        await self.backend.ping()
        repos = await self.repositories()
        progress.start("registry-list", f"registry {self.client.name}: listing {len(repos)} repositories", len(repos))
        listed: list[tuple[str, list[str]]] = []

        async def list_one(repo: str) -> None:
            listed.append(await self._list(repo))
            progress.advance("registry-list")

        async with asyncio.TaskGroup() as tg:
            for repo in repos:
                tg.create_task(list_one(repo))
        if self.refused:
            raise self._refusal(sorted(self.refused))
        work = [(repo, tag) for repo, tags in sorted(listed) for tag in tags]
        progress.finish("registry-list", f"registry {self.client.name}: {len(work)} tags in {len(repos)} repositories")
        if after_listing is not None:
            maybe = after_listing(work)
            if asyncio.iscoroutine(maybe):
                await maybe

        progress.start("registry", f"registry {self.client.name}: reading {len(work)} tags", len(work))
        items = iter(work)

        async def worker() -> None:
            for repo, tag in items:  # one shared iterator: each tag is taken by exactly one worker
                await self.read_tag(repo, tag)
                progress.advance("registry")

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self.client.config.concurrency, max(1, len(work)))):
                tg.create_task(worker())
        gone = sum(1 for t in self.result.tags if t["gone"])
        progress.finish("registry", f"registry {self.client.name}: {len(work)} tags, {len(self.result.manifests)} "
                        f"manifests" + (f", {gone} gone while reading" if gone else ""))
        return self.result


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def _leaves(e: BaseException) -> Iterator[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            yield from _leaves(inner)
    else:
        yield e


def _unwrap(e: BaseExceptionGroup) -> BaseException:
    """The first registry error inside a TaskGroup's exception group (else its first exception),
    for a one-line message."""
    leaves = list(_leaves(e))
    return next((x for x in leaves if isinstance(x, RegistryError)), leaves[0])


@contextlib.contextmanager
def _failing_the_source(host: str) -> Iterator[None]:
    """Turn an exception regsweep did not expect (a native API's JSON without a key, a value of
    the wrong type for a table) into a RegistryError: the registry source fails and the snapshot
    is published incomplete, instead of the snapshot flow crashing with no snapshot at all."""
    try:
        yield
    except RegsweepError:
        raise
    except Exception as e:
        log.debug("unexpected error reading registry %s", host, exc_info=e)   # the traceback, for a bug report
        text = " ".join(str(e).split())[:200]
        raise RegistryError(host, f"unexpected {type(e).__name__}{': ' + text if text else ''} "
                                  "(an answer regsweep could not read)") from e


async def scan_registry(registry: RegistryConfig, link: LinkConfig, cache: BlobCache, *,
                        retry: RetryPolicy | None = None,
                        after_listing: Callable[[list[tuple[str, str]]], Any] | None = None,
                        ) -> tuple[ScanResult, RegistryClient]:
    """Scan one registry; typed errors for anything that leaves the listing incomplete (any
    exception but a RegsweepError becomes a RegistryError). Returns the result and the
    Distribution client that read the manifests."""
    with _failing_the_source(registry.host):
        async with open_backend(registry, retry=retry) as backend:
            try:
                result = await Scanner(backend, link, cache).scan(after_listing)
            except BaseExceptionGroup as eg:
                raise _unwrap(eg) from None
    return result, backend.oci


def extract(config: RegsweepConfig, store, now: datetime, *, cache_part: str | None = None) -> dict[str, pa.Table]:
    """The registry source: TAGS, MANIFESTS, CHILDREN, LINKS and BLOBS tables of the configured registry.
    A batch of a scaled-out scan (tasks/snapshot/scaleout.py) writes what it used of the blob cache to
    `cache_part` instead, for the snapshot to merge: batches never overwrite each other's cache."""
    cache = BlobCache(store.caches.read(CACHE_NAME))
    result, _ = asyncio.run(scan_registry(config.registry, config.link, cache))
    with _failing_the_source(config.registry.host):
        tables = result.tables()
    if cache_part is not None:
        store.write_table(cache_part, cache.table())
    elif cache.changed:
        store.caches.write(CACHE_NAME, cache.table())
    return tables


def probe_capabilities(config: RegistryConfig, repositories: Iterable[str]) -> dict[str, Any] | None:
    """snapshot.json's `registry_capabilities`: the registry probed in the first of `repositories`
    (tasks/registry/capabilities.py); None when there is none. A probe that cannot run says why in its
    notes and never fails the snapshot."""
    repo = min(repositories, default=None)
    if repo is None:
        return None
    try:
        with _failing_the_source(config.host):
            caps = probe_registry(config, repo)
    except RegistryError as e:
        caps = Capabilities(api=config.api, repository=repo, notes={"probe": str(e)})
    return caps.to_json()
