"""The OCI Distribution v2 HTTP client: the only code that speaks HTTP to a registry.

One keep-alive `httpx.AsyncClient` per registry, at most `registry.concurrency` requests in
flight, retries with exponential backoff and jitter on 429/502/503/504 and dropped connections
(honouring Retry-After), and every failure turned into a typed error by tasks/registry/errors.py.
What the client learns about a registry at run time (tokens, whether it has the referrers API,
whether it can delete a tag alone) lives on the client, apart from the settings in `RegistryConfig`.

The methods under "the API" (list repositories and tags, resolve a tag, read manifests and blobs,
referrers, delete) are what the registry scan (tasks/sources/registry.py) and the sweep use.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from tasks.oci import manifest as oci
from tasks.registry.auth import ChallengeAuth, Credentials, resolve_credentials
from tasks.config.models import RegistryConfig
from tasks.common.errors import ConfigError, ManifestUnknown, RegistryError, UnsupportedOperation
from tasks.registry.errors import registry_error
from tasks.common.notes import retried

log = logging.getLogger("regsweep.registry")

_PAGE = 1000  # Distribution rejects n > 1000 on the catalog; larger registries cap it themselves
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter; Retry-After wins when given."""

    attempts: int = 5
    initial: float = 0.25
    maximum: float = 8.0
    retry_after_cap: float = 60.0

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RegistryError) and exc.retry_after is not None:
            return min(exc.retry_after, self.retry_after_cap)
        return random.uniform(0, min(self.maximum, self.initial * 2 ** (state.attempt_number - 1)))

    def _note_retry(self, state: RetryCallState) -> None:
        retried(log, f"{state.outcome.exception()} (attempt {state.attempt_number} of {self.attempts}); "
                     f"retrying in {state.upcoming_sleep:.1f}s")

    async def run(self, attempt: Callable[[], Awaitable[T]], *,
                  on_retry: Callable[[RetryCallState], None] | None = None) -> T:
        """`attempt()` until it returns, or raises anything but a retryable RegistryError, or the
        attempts run out (the last error is raised). Each retry is logged and counted in the source's
        notes (tasks/common/notes.py) before its wait, or handed to `on_retry` instead.
        Every registry API's client retries through this."""
        def retryable(e: BaseException) -> bool:
            return isinstance(e, RegistryError) and e.retryable

        async for tried in AsyncRetrying(stop=stop_after_attempt(self.attempts), wait=self.wait,
                                         retry=retry_if_exception(retryable), reraise=True,
                                         before_sleep=on_retry or self._note_retry):
            with tried:
                return await attempt()
        raise AssertionError("unreachable")  # pragma: no cover


def ssl_context(config: RegistryConfig) -> ssl.SSLContext | bool:
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
    """Async OCI Distribution v2 client for one registry; use as `async with RegistryClient(cfg) as c:`.

    Credentials are looked up (registry.auth, else the Docker config) when the registry first asks.
    """

    def __init__(self, config: RegistryConfig, *, retry: RetryPolicy | None = None,
                 credentials: Callable[[], Credentials | None] | None = None):
        self.config = config
        self.name = config.host
        self.retry = retry or RetryPolicy()
        # A native backend may supply the credentials (ECR: its authorization token).
        self.auth = ChallengeAuth(config.host, credentials or (lambda: resolve_credentials(config.host, config.auth)))
        self._sem = asyncio.Semaphore(config.concurrency)
        self._http: httpx.AsyncClient | None = None
        # Learned at run time, once per client.
        self.referrers_supported: bool | None = None
        self.tag_delete_supported: bool | None = None
        self._probe = asyncio.Lock()
        self.requests = 0
        self.retries = 0   # requests sent again after a retryable failure (each also logged)

    async def __aenter__(self) -> "RegistryClient":
        n = self.config.concurrency
        self._http = httpx.AsyncClient(
            base_url=self.config.url, auth=self.auth, verify=ssl_context(self.config),
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
                       ok: Iterable[int] = (200,), passthrough: Iterable[int] = (),
                       tag_delete: bool = False) -> httpx.Response:
        """Send with retries; return responses with a status in `ok` or `passthrough`, raise otherwise."""
        if self._http is None:
            raise RuntimeError("RegistryClient used outside `async with`")
        ok, passthrough = frozenset(ok), frozenset(passthrough)
        http = self._http

        async def attempt() -> httpx.Response:
            async with self._sem:
                self.requests += 1
                try:
                    r = await http.request(method, url, headers=headers)
                except (httpx.HTTPError, RegistryError, ssl.SSLError, OSError) as e:
                    raise registry_error(self.name, exc=e, repository=repository, reference=reference) from None
            if r.status_code in ok or r.status_code in passthrough:
                return r
            raise registry_error(self.name, response=r, repository=repository, reference=reference,
                                 tag_delete=tag_delete)

        def on_retry(state: RetryCallState) -> None:
            self.retries += 1
            retried(log, f"{state.outcome.exception()} ({method}, attempt {state.attempt_number} of "
                         f"{self.retry.attempts}); retrying in {state.upcoming_sleep:.1f}s")

        return await self.retry.run(attempt, on_retry=on_retry)

    async def _paged(self, url: str, key: str, *, repository: str | None = None) -> list[str]:
        """Follow Link rel="next" until the last page; a page that fails fails the listing."""
        out: list[str] = []
        seen: set[str] = set()
        next_url: str | httpx.URL | None = url
        first = True
        while next_url is not None:
            try:
                r = await self._request("GET", next_url, repository=repository)
            except RegistryError as e:
                if not (first and "PAGINATION_NUMBER_INVALID" in e.codes and "?" in url):
                    raise
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

    # -- the API the scan and the sweep use --------------------------------------------------------
    async def ping(self) -> None:
        """GET /v2/: reachable, speaks Distribution v2, and our credentials (if any) are accepted."""
        await self._request("GET", "/v2/")

    async def list_repositories(self) -> list[str]:
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
        try:
            r = await self._request("DELETE", f"/v2/{repo}/manifests/{tag}", repository=repo, reference=tag,
                                    ok=(200, 202, 204), passthrough=(404,), tag_delete=True)
        except UnsupportedOperation:
            self.tag_delete_supported = False   # learned once: later lone tags are not asked for
            raise
        if r.status_code != 404:
            self.tag_delete_supported = True
        return r.status_code != 404
