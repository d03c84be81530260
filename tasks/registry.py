"""The registry source: an async OCI Distribution client and the snapshot extractor built on it.

`RegistryClient` is the only code that speaks HTTP to a registry (the sweep uses it too): one
keep-alive `httpx.AsyncClient`, at most `registry.concurrency` requests in flight, retries with
exponential backoff and jitter on 429/502/503/504 and dropped connections (honouring
Retry-After), and one function, `registry_error`, turning every failure into the typed errors
of tasks/errors.py. What the client learns about a registry at run time (tokens, whether it
has the referrers API, whether it can delete a tag alone) lives on the client, apart from the
per-host settings in `RegistryConfig`.

`extract` reads every tag of every selected repository into the TAGS, MANIFESTS, CHILDREN and
LINKS tables (tasks/schemas.py). Manifests and image configs are content-addressed, so they are
cached by digest in the store: a rescan of an unchanged registry costs one HEAD per tag.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import httpx
import pyarrow as pa
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from tasks import oci
from tasks.auth import ChallengeAuth, Credentials, resolve_credentials
from tasks.config import RegistryConfig, RegsweepConfig
from tasks.errors import (ConfigError, ManifestUnknown, RegistryAuthError, RegistryError, RegistryUnreachable,
                          UnsupportedOperation)
from tasks.progress import reporter
from tasks.schemas import CHILDREN, LINKS, MANIFESTS, TAGS

log = logging.getLogger("regsweep.registry")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
CACHE_NAME = "registry-blobs"
CACHE_SCHEMA = pa.schema([
    pa.field("digest", pa.string(), nullable=False),
    pa.field("media_type", pa.string(), nullable=False),
    pa.field("body", pa.binary(), nullable=False),
])
_HEX_RX = re.compile(r"^[0-9a-fA-F]{7,64}$")
_PAGE = 1000  # Distribution rejects n > 1000 on the catalog; larger registries cap it themselves


# --- errors -----------------------------------------------------------------------------------

def _oci_errors(response: httpx.Response) -> tuple[list[str], str]:
    """The OCI error codes and first message of an error response, if it has a JSON body."""
    try:
        doc = response.json()
        errs = doc.get("errors") or []
        codes = [str(e.get("code", "")) for e in errs if isinstance(e, dict)]
        msg = next((str(e.get("message")) for e in errs if isinstance(e, dict) and e.get("message")), "")
        return codes, msg
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        return [], ""


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def registry_error(registry: str, *, response: httpx.Response | None = None, exc: BaseException | None = None,
                   repository: str | None = None, reference: str | None = None) -> RegistryError:
    """THE mapping from an HTTP answer or a transport failure to regsweep's typed errors.

    401/403 → RegistryAuthError, 404 → ManifestUnknown, 405 or UNSUPPORTED → UnsupportedOperation,
    connect/TLS/timeout/dropped connection → RegistryUnreachable, anything else → RegistryError.
    A retryable failure carries `retryable = True` (and `retry_after` seconds when the registry said).
    """
    where = {"repository": repository, "reference": reference}
    if exc is not None:
        if isinstance(exc, RegistryError):  # raised by the auth flow (token service answers)
            if not hasattr(exc, "retryable"):
                exc.retryable = exc.status in RETRY_STATUSES
            return exc
        tls = _tls_failure(exc)
        if tls is not None:
            reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or str(tls)
            err = RegistryUnreachable(registry, f"TLS handshake failed ({reason}); trust the registry's CA with "
                                      "registry.caFile, or set registry.insecure: true", **where)
            err.retryable = False
            return err
        if isinstance(exc, httpx.ConnectError):
            text = f"cannot connect: {exc}" if str(exc) else "cannot connect"
        elif isinstance(exc, httpx.TimeoutException):
            text = f"timed out ({type(exc).__name__})"
        elif isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            text = f"connection dropped ({exc or type(exc).__name__})"
        else:
            text = f"{type(exc).__name__}: {exc}"
        err = RegistryUnreachable(registry, text, **where)
        err.retryable = isinstance(exc, httpx.TransportError)
        return err

    assert response is not None
    status = response.status_code
    codes, message = _oci_errors(response)
    detail = f"HTTP {status}" + (f" {codes[0]}" if codes else "") + (f": {message}" if message else "")
    if status in (401, 403):
        err: RegistryError = RegistryAuthError(
            registry, f"{detail} (check the credentials: registry.auth, or the docker config)", status=status, **where)
    elif status == 405 or "UNSUPPORTED" in codes:
        err = UnsupportedOperation(registry, f"{detail} (the registry does not allow this operation)", status=status, **where)
    elif status == 404:
        err = ManifestUnknown(registry, detail, status=status, **where)
    else:
        err = RegistryError(registry, detail, status=status, **where)
    err.retryable = status in RETRY_STATUSES
    if err.retryable:
        err.retry_after = _retry_after(response.headers.get("retry-after"))
    return err


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


# --- the client ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter; Retry-After wins when given."""

    attempts: int = 5
    initial: float = 0.25
    maximum: float = 8.0
    retry_after_cap: float = 60.0

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after is not None:
            return min(after, self.retry_after_cap)
        import random
        return random.uniform(0, min(self.maximum, self.initial * 2 ** (state.attempt_number - 1)))


def _ssl_context(config: RegistryConfig) -> ssl.SSLContext | bool:
    if config.insecure:
        return False
    ctx = httpx.create_ssl_context()
    if config.caFile:
        path = Path(config.caFile).expanduser()
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError("registry.caFile", f"cannot load {config.caFile}: {getattr(e, 'strerror', None) or e}") from None
    return ctx


class RegistryClient:
    """Async OCI Distribution v2 client for one registry; use as `async with RegistryClient(cfg) as c:`."""

    def __init__(self, config: RegistryConfig, *, retry: RetryPolicy | None = None,
                 credentials: Callable[[], Credentials | None] | Credentials | None | str = "resolve"):
        self.config = config
        self.name = config.host
        self.retry = retry or RetryPolicy()
        if credentials == "resolve":
            credentials = lambda: resolve_credentials(config.host, config.auth)  # noqa: E731
        self.auth = ChallengeAuth(config.host, credentials)
        self._sem = asyncio.Semaphore(config.concurrency)
        self._http: httpx.AsyncClient | None = None
        # Learned at run time, once per client.
        self.referrers_supported: bool | None = None
        self.tag_delete_supported: bool | None = None
        self._probe = asyncio.Lock()
        self.requests = 0

    async def __aenter__(self) -> "RegistryClient":
        n = self.config.concurrency
        self._http = httpx.AsyncClient(
            base_url=self.config.url, auth=self.auth, verify=_ssl_context(self.config),
            timeout=self.config.timeout, follow_redirects=True,
            # As many connections as requests in flight: a token request needs no spare one (the
            # refused request's connection is released first), and every idle connection costs
            # httpcore a readability check on each request.
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            headers={"User-Agent": "regsweep"})
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- one request, retried ----------------------------------------------------------------------
    async def _request(self, method: str, url: str | httpx.URL, *, repository: str | None = None,
                       reference: str | None = None, headers: dict[str, str] | None = None,
                       ok: Iterable[int] = (200,), passthrough: Iterable[int] = ()) -> httpx.Response:
        """Send with retries; return responses with a status in `ok` or `passthrough`, raise otherwise."""
        if self._http is None:
            raise RuntimeError("RegistryClient used outside `async with`")
        ok, passthrough = frozenset(ok), frozenset(passthrough)

        def retryable(e: BaseException) -> bool:
            return getattr(e, "retryable", False)

        async for attempt in AsyncRetrying(stop=stop_after_attempt(self.retry.attempts), wait=self.retry.wait,
                                           retry=retry_if_exception(retryable), reraise=True):
            with attempt:
                async with self._sem:
                    self.requests += 1
                    try:
                        r = await self._http.request(method, url, headers=headers)
                    except (httpx.HTTPError, RegistryError, ssl.SSLError, OSError) as e:
                        raise registry_error(self.name, exc=e, repository=repository, reference=reference) from None
                if r.status_code in ok or r.status_code in passthrough:
                    return r
                raise registry_error(self.name, response=r, repository=repository, reference=reference)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _paged(self, url: str, key: str, *, repository: str | None = None) -> list[str]:
        """Follow Link rel="next" until the last page; a page that fails fails the listing."""
        out: list[str] = []
        seen: set[str] = set()
        next_url: str | httpx.URL | None = url
        first = True
        while next_url is not None:
            r = await self._request("GET", next_url, repository=repository, passthrough=(400,) if first else ())
            if r.status_code == 400:
                if "PAGINATION_NUMBER_INVALID" not in _oci_errors(r)[0] or "?" not in url:
                    raise registry_error(self.name, response=r, repository=repository)
                # A registry configured with a smaller page cap: take its default page size.
                first, next_url = False, url.split("?", 1)[0]
                continue
            first = False
            try:
                items = r.json().get(key) or []
            except (ValueError, AttributeError):
                raise RegistryError(self.name, f"{next_url}: answer is not the JSON of a {key} list",
                                    repository=repository) from None
            out.extend(items)
            link = oci.parse_link_next(r.headers.get("link"))
            next_url = None
            if link:
                target = r.request.url.join(link)
                if str(target) in seen:  # a registry that links a page to itself must not loop us
                    raise RegistryError(self.name, f"pagination loops at {target}", repository=repository)
                seen.add(str(target))
                next_url = target
        return out

    # -- the API ----------------------------------------------------------------------------------
    async def ping(self) -> None:
        """GET /v2/: reachable, speaks Distribution v2, and our credentials (if any) are accepted."""
        await self._request("GET", "/v2/")

    async def catalog(self) -> list[str]:
        """Every repository name, following pagination."""
        return await self._paged(f"/v2/_catalog?n={_PAGE}", "repositories")

    async def list_tags(self, repo: str) -> list[str]:
        """Every tag of `repo`, following pagination."""
        return await self._paged(f"/v2/{repo}/tags/list?n={_PAGE}", "tags", repository=repo)

    async def head_manifest(self, repo: str, ref: str) -> str | None:
        """The digest `ref` resolves to, or None when the registry does not know it (404)."""
        r = await self._request("HEAD", f"/v2/{repo}/manifests/{ref}", repository=repo, reference=ref,
                                headers={"Accept": oci.ACCEPT}, passthrough=(404,))
        if r.status_code == 404:
            return None
        digest = r.headers.get("docker-content-digest")
        if digest and oci.is_digest(digest):
            return digest
        # Registries need not send the digest on HEAD; the body tells it.
        try:
            return (await self.get_manifest(repo, ref))[0]
        except ManifestUnknown:
            return None

    async def get_manifest(self, repo: str, ref: str) -> tuple[str, str, bytes]:
        """(digest, media type, body) of a manifest by tag or digest; ManifestUnknown on 404."""
        r = await self._request("GET", f"/v2/{repo}/manifests/{ref}", repository=repo, reference=ref,
                                headers={"Accept": oci.ACCEPT})
        body = r.content
        digest = oci.sha256_digest(body)
        if oci.is_digest(ref) and digest != ref:
            raise RegistryError(self.name, f"served content with digest {digest}", repository=repo, reference=ref)
        return digest, oci.effective_media_type(r.headers.get("content-type"), body), body

    async def get_blob(self, repo: str, digest: str) -> bytes:
        """A blob's bytes (meant for configs and other small blobs), verified against its digest."""
        r = await self._request("GET", f"/v2/{repo}/blobs/{digest}", repository=repo, reference=digest)
        if digest.startswith("sha256:") and oci.sha256_digest(r.content) != digest:
            raise RegistryError(self.name, "blob content does not match its digest", repository=repo, reference=digest)
        return r.content

    async def referrers(self, repo: str, digest: str) -> list[dict] | None:
        """Descriptors of manifests whose subject is `digest`; None when the registry has no referrers API."""
        if self.referrers_supported is None:
            # Many tags are read at once: let one request find out, the rest wait for its answer.
            async with self._probe:
                if self.referrers_supported is None:
                    return await self._referrers(repo, digest)
        if self.referrers_supported is False:
            return None
        return await self._referrers(repo, digest)

    async def _referrers(self, repo: str, digest: str) -> list[dict] | None:
        url: str | httpx.URL | None = f"/v2/{repo}/referrers/{digest}"
        out: list[dict] = []
        while url is not None:
            r = await self._request("GET", url, repository=repo, reference=digest, passthrough=(404,))
            if r.status_code == 404:
                # The spec forbids 404 from a registry that has the API: this one does not (Distribution 2.8).
                self.referrers_supported = False
                return None
            self.referrers_supported = True
            try:
                out.extend(d for d in (r.json().get("manifests") or []) if isinstance(d, dict))
            except (ValueError, AttributeError):
                raise RegistryError(self.name, "referrers answer is not an image index", repository=repo,
                                    reference=digest) from None
            link = oci.parse_link_next(r.headers.get("link"))
            url = r.request.url.join(link) if link else None
        return out

    async def delete_manifest(self, repo: str, digest: str) -> bool:
        """Delete a manifest (and so every tag on it): True deleted, False already gone."""
        r = await self._request("DELETE", f"/v2/{repo}/manifests/{digest}", repository=repo, reference=digest,
                                ok=(200, 202, 204), passthrough=(404,))
        return r.status_code != 404

    async def delete_tag(self, repo: str, tag: str) -> bool:
        """Delete one tag without its siblings (OCI optional); UnsupportedOperation where refused."""
        if self.tag_delete_supported is False:
            raise UnsupportedOperation(self.name, "the registry cannot delete a tag alone", repository=repo, reference=tag)
        r = await self._request("DELETE", f"/v2/{repo}/manifests/{tag}", repository=repo, reference=tag,
                                ok=(200, 202, 204), passthrough=(400, 404, 405))
        if r.status_code in (400, 405):
            codes, _ = _oci_errors(r)
            if r.status_code == 405 or {"DIGEST_INVALID", "UNSUPPORTED"} & set(codes):
                # Distribution 2.8 answers 400 DIGEST_INVALID: it only deletes by digest.
                self.tag_delete_supported = False
                raise UnsupportedOperation(self.name, f"the registry cannot delete a tag alone (HTTP {r.status_code}"
                                           f"{' ' + codes[0] if codes else ''})", repository=repo, reference=tag,
                                           status=r.status_code)
            raise registry_error(self.name, response=r, repository=repo, reference=tag)
        if r.status_code != 404:
            self.tag_delete_supported = True
        return r.status_code != 404


def preflight(config: RegistryConfig) -> None:
    """Raise RegistryAuthError (or ConfigError) now if the registry refuses our credentials.

    Any other failure is left to the snapshot itself, which records it and is published as
    incomplete (SPEC.md, fail closed) instead of vanishing before it started.
    """
    async def go() -> None:
        async with RegistryClient(config, retry=RetryPolicy(attempts=2)) as client:
            await client.ping()
    try:
        asyncio.run(go())
    except RegistryAuthError:
        raise
    except RegistryError:
        pass


def repository_globs(globs: Iterable[str]) -> re.Pattern[str]:
    """`*` and `?` stay within one path segment, `**` crosses them (as Harbor's and GitLab's
    globs do): `team/*` selects team/api but not team/api/cache, so a glob never sweeps more
    repositories than it reads as selecting."""
    def one(glob: str) -> str:
        out, i = [], 0
        while i < len(glob):
            if glob.startswith("**", i):
                out.append(".*")
                i += 2
            elif glob[i] == "*":
                out.append("[^/]*")
                i += 1
            elif glob[i] == "?":
                out.append("[^/]")
                i += 1
            elif glob[i] == "[" and "]" in glob[i + 1:]:
                j = glob.index("]", i + 1)
                body = glob[i + 1:j]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = j + 1
            else:
                out.append(re.escape(glob[i]))
                i += 1
        return "".join(out)
    return re.compile("|".join(f"(?:{one(g)})" for g in globs))


# --- the extractor ----------------------------------------------------------------------------

@dataclass
class _Facts:
    """What an index needs to know of a manifest it lists."""

    size: int
    created: datetime | None
    revision: str | None
    revision_source: str | None


@dataclass
class ScanResult:
    tags: list[dict] = field(default_factory=list)
    manifests: list[dict] = field(default_factory=list)
    children: list[dict] = field(default_factory=list)
    links: set[tuple[str, str, str, str]] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, pa.Table]:
        link_rows = [dict(zip(("repository", "digest", "commit", "source"), t)) for t in sorted(self.links)]
        # Workers finish in any order; sorted rows make snapshots of an unchanged registry identical.
        tags = sorted(self.tags, key=lambda r: (r["repository"], r["tag"]))
        manifests = sorted(self.manifests, key=lambda r: (r["repository"], r["digest"]))
        children = sorted(self.children, key=lambda r: (r["repository"], r["index_digest"], r["child_digest"]))
        return {
            "tags": pa.Table.from_pylist(tags, schema=TAGS),
            "manifests": pa.Table.from_pylist(manifests, schema=MANIFESTS),
            "children": pa.Table.from_pylist(children, schema=CHILDREN),
            "links": pa.Table.from_pylist(link_rows, schema=LINKS),
        }


class BlobCache:
    """Manifests and configs by digest: loaded once from the store, written once at the end."""

    def __init__(self, table: pa.Table | None = None):
        self.entries: dict[str, tuple[str, bytes]] = {}
        if table is not None:
            try:
                d = table.select(["digest", "media_type", "body"]).to_pydict()
                self.entries = {k: (m, b) for k, m, b in zip(d["digest"], d["media_type"], d["body"])}
            except (KeyError, pa.ArrowInvalid):
                self.entries = {}   # an unreadable cache is only a slower run
        self.loaded = len(self.entries)
        self.used: set[str] = set()
        self.added = 0

    def get(self, digest: str) -> tuple[str, bytes] | None:
        hit = self.entries.get(digest)
        if hit is not None:
            self.used.add(digest)
        return hit

    def put(self, digest: str, media_type: str, body: bytes) -> None:
        if digest not in self.entries:
            self.added += 1
        self.entries[digest] = (media_type, body)
        self.used.add(digest)

    @property
    def changed(self) -> bool:
        return self.added > 0 or len(self.used) != self.loaded

    def table(self) -> pa.Table:
        """Only what this scan used: digests that left the registry drop out of the cache."""
        keys = sorted(self.used)
        return pa.table({"digest": keys, "media_type": [self.entries[k][0] for k in keys],
                         "body": [self.entries[k][1] for k in keys]}, schema=CACHE_SCHEMA)


class Scanner:
    """Reads tags into a ScanResult through one RegistryClient (see `extract`)."""

    def __init__(self, client: RegistryClient, config: RegsweepConfig, cache: BlobCache):
        self.client, self.config, self.cache = client, config, cache
        self.result = ScanResult()
        self.patterns = [re.compile(p) for p in config.link.tagPatterns]
        self._records: dict[tuple[str, str], asyncio.Task] = {}
        self._blobs: dict[str, asyncio.Task] = {}
        self._referrers_done: set[tuple[str, str]] = set()

    # -- selection and listing ------------------------------------------------------------------
    async def repositories(self) -> list[str]:
        globs = self.config.registry.repositories
        if globs and not any(ch in g for g in globs for ch in "*?["):
            # Literal names need no catalog (which tokens limited to some repositories may not see).
            return sorted(dict.fromkeys(globs))
        names = await self.client.catalog()
        if globs:
            rx = repository_globs(globs)
            names = [n for n in names if rx.fullmatch(n)]
        return sorted(set(names))

    async def _list(self, repo: str) -> tuple[str, list[str]]:
        try:
            return repo, await self.client.list_tags(repo)
        except ManifestUnknown as e:
            # Gone since the catalog listed it, or a configured name never pushed: no tags to lose.
            self._warn(f"{e}; recorded with no tags")
            return repo, []

    # -- reading ----------------------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        self.result.warnings.append(message)
        log.warning(message)

    async def _blob(self, repo: str, digest: str, *, manifest: bool) -> tuple[str, bytes]:
        """A manifest or config by digest, from the cache or fetched once however many ask."""
        hit = self.cache.get(digest)
        if hit is not None:
            return hit
        task = self._blobs.get(digest)
        if task is None:
            async def fetch() -> tuple[str, bytes]:
                if manifest:
                    _, media_type, body = await self.client.get_manifest(repo, digest)
                else:
                    media_type, body = "blob", await self.client.get_blob(repo, digest)
                self.cache.put(digest, media_type, body)
                return media_type, body
            task = self._blobs[digest] = asyncio.ensure_future(fetch())
        try:
            return await task
        except ManifestUnknown:
            # Deleted here, perhaps present in another repository: let a later ask retry.
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

    async def read_tag(self, repo: str, tag: str) -> None:
        found = await self._resolve(repo, tag)
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
        if body is None or media_type is None:
            try:
                media_type, body = await self._blob(repo, digest, manifest=True)
            except ManifestUnknown:
                return None
        m = oci.parse_manifest(body, media_type)
        if m.error:
            self._warn(f"registry {self.client.name}/{repo}@{digest}: {m.error}; recorded as kind unknown")
        kind = m.kind
        size = len(body) + m.own_size
        created, revision, rev_source = oci.build_facts(m, None)
        row_subject = m.subject or subject

        if fallback_for is not None and m.kind in (oci.INDEX, oci.ARTIFACT) and m.media_type in oci.INDEX_TYPES:
            # The OCI referrers fallback tag: an index of the subject's referrers, not an image.
            kind, row_subject, size = oci.REFERRERS_INDEX, fallback_for, len(body)
            created, revision = None, None
            await asyncio.gather(*(self.record(repo, d.digest, subject=fallback_for) for d in m.children))
        elif m.kind in (oci.IMAGE, oci.ARTIFACT) and m.has_image_config and not (created and revision):
            # The config only matters for the build time and revision; annotations that carry both
            # (buildx --annotation, werf) save its GET.
            config = await self._config(repo, m.config.digest, digest)
            created, revision, rev_source = oci.build_facts(m, config)
        elif m.kind in (oci.INDEX, oci.ARTIFACT) and m.children:
            facts = await asyncio.gather(*(self._child(repo, digest, d) for d in m.children))
            size = len(body) + sum(f.size for f in facts)
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
        self.result.manifests.append({
            "repository": repo, "digest": digest, "media_type": media_type, "kind": kind,
            "artifact_type": m.artifact_type, "size": size, "created": created, "revision": revision,
            "subject": row_subject,
        })
        return _Facts(size, created, revision, rev_source)

    async def _child(self, repo: str, index_digest: str, d: oci.Descriptor) -> _Facts:
        self.result.children.append({"repository": repo, "index_digest": index_digest,
                                     "child_digest": d.digest, "platform": d.platform})
        subject = None
        if d.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            # BuildKit's provenance/SBOM entries describe a sibling platform image.
            subject = d.annotations.get("vnd.docker.reference.digest")
        facts = await self.record(repo, d.digest, subject=subject)
        if facts is None:
            self._warn(f"registry {self.client.name}/{repo}@{index_digest}: listed manifest {d.digest} is missing")
            return _Facts(d.size, None, None, None)
        return facts

    async def _config(self, repo: str, digest: str, manifest_digest: str) -> oci.ImageConfig | None:
        try:
            _, body = await self._blob(repo, digest, manifest=False)
        except ManifestUnknown:
            self._warn(f"registry {self.client.name}/{repo}@{manifest_digest}: config blob {digest} is missing")
            return None
        cfg = oci.parse_config(body)
        if cfg.error:
            self._warn(f"registry {self.client.name}/{repo}@{manifest_digest}: {cfg.error}")
        return cfg

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
        await self.client.ping()
        repos = await self.repositories()
        progress.start("registry-list", f"registry {self.client.name}: listing {len(repos)} repositories", len(repos))
        listed: list[tuple[str, list[str]]] = []

        async def list_one(repo: str) -> None:
            listed.append(await self._list(repo))
            progress.advance("registry-list")

        async with asyncio.TaskGroup() as tg:
            for repo in repos:
                tg.create_task(list_one(repo))
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
            for _ in range(min(self.config.registry.concurrency, max(1, len(work)))):
                tg.create_task(worker())
        gone = sum(1 for t in self.result.tags if t["gone"])
        progress.finish("registry", f"registry {self.client.name}: {len(work)} tags, {len(self.result.manifests)} "
                        f"manifests" + (f", {gone} gone while reading" if gone else ""))
        return self.result


def _unwrap(e: BaseExceptionGroup) -> BaseException:
    """The first regsweep error inside a TaskGroup's exception group, for a one-line message."""
    for inner in e.exceptions:
        if isinstance(inner, BaseExceptionGroup):
            inner = _unwrap(inner)
        if isinstance(inner, RegistryError):
            return inner
    return e.exceptions[0]


async def scan_registry(config: RegsweepConfig, cache: BlobCache, *, retry: RetryPolicy | None = None,
                        after_listing: Callable[[list[tuple[str, str]]], Any] | None = None,
                        credentials: Any = "resolve") -> tuple[ScanResult, RegistryClient]:
    """Scan the configured registry; typed errors for anything that leaves the listing incomplete."""
    async with RegistryClient(config.registry, retry=retry, credentials=credentials) as client:
        try:
            result = await Scanner(client, config, cache).scan(after_listing)
        except BaseExceptionGroup as eg:
            raise _unwrap(eg) from None
    return result, client


def extract(config: RegsweepConfig, store, now: datetime) -> dict[str, pa.Table]:
    """The registry source: TAGS, MANIFESTS, CHILDREN and LINKS tables of the configured registry."""
    cache = BlobCache(store.read_cache(CACHE_NAME))
    result, _ = asyncio.run(scan_registry(config, cache))
    if cache.changed:
        store.write_cache(CACHE_NAME, cache.table())
    return result.tables()
