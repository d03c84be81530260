"""The OCI Distribution v2 client: what the scan and the sweep ask of a registry's v2 API.

It speaks HTTP through the one transport (tasks/registry/transport.py: one keep-alive client,
at most `registry.concurrency` requests in flight, retries on what tasks/registry/errors.py
calls retryable, one paginator), and authenticates with the challenge flow of
tasks/registry/auth.py. What the client learns about a registry at run time (tokens, whether
it has the referrers API, whether it can delete a tag alone) lives on the client, apart from the
settings in `RegistryConfig`.

The methods under "the API" (list repositories and tags, resolve a tag, read manifests and blobs,
referrers, delete) are what the registry scan (tasks/sources/registry.py) and the sweep use.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import httpx

from tasks.oci import manifest as oci
from tasks.registry.auth import ChallengeAuth, Credentials, resolve_credentials
from tasks.config.models import RegistryConfig
from tasks.common.errors import ManifestUnknown, RegistryError, UnsupportedOperation
from tasks.registry.transport import (Bounds, RetryPolicy, Transport, link_next, reference_segment, refuse_clear_text,
                                      repository_path, ssl_context)

_PAGE = 1000  # Distribution rejects n > 1000 on the catalog; larger registries cap it themselves

# RetryPolicy and ssl_context live in tasks/registry/transport.py; callers that import them from
# here keep working.
__all__ = ["RegistryClient", "RetryPolicy", "ssl_context"]


class RegistryClient:
    """Async OCI Distribution v2 client for one registry; use as `async with RegistryClient(cfg) as c:`.

    Credentials are looked up (registry.auth, else the Docker config) when the registry first asks.
    """

    def __init__(self, config: RegistryConfig, *, retry: RetryPolicy | None = None,
                 credentials: Callable[[], Credentials | None] | None = None, bounds: Bounds | None = None):
        self.config = config
        self.name = config.host
        # A native backend may supply the credentials (ECR: its authorization token).
        source = credentials or (lambda: resolve_credentials(config.host, config.auth))

        def checked() -> Credentials | None:
            found = source()
            if found is not None:
                refuse_clear_text(config, config.url, found.origin)
            return found

        self.auth = ChallengeAuth(config.host, checked, origin=config.url)
        self.http = Transport(config.host, config.url, retry=retry or RetryPolicy(), concurrency=config.concurrency,
                              timeout=config.timeout, verify=ssl_context(config),
                              insecure_origin=config.url if config.insecure else None, auth=self.auth, bounds=bounds)
        # Learned at run time, once per client.
        self.referrers_supported: bool | None = None
        self.tag_delete_supported: bool | None = None
        self._probe = asyncio.Lock()

    @property
    def retry(self) -> RetryPolicy:
        return self.http.retry

    @property
    def requests(self) -> int:
        """Requests sent so far, retries included."""
        return self.http.requests

    @property
    def retries(self) -> int:
        """Requests sent again after a retryable failure (each also logged)."""
        return self.http.retries

    async def __aenter__(self) -> "RegistryClient":
        await self.http.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.close()

    async def _request(self, method: str, url: str | httpx.URL, **kw: Any) -> httpx.Response:
        return await self.http.request(method, url, **kw)

    async def _list(self, path: str, key: str, *, repository: str | None = None) -> list[str]:
        """Every item of a paginated Distribution list, following Link rel="next"."""
        def smaller_page(e: RegistryError) -> str | None:
            # A registry configured with a smaller page cap: take its default page size.
            return path if "PAGINATION_NUMBER_INVALID" in e.codes else None

        # `"tags": null` (or no key) is how registries say "none"; anything but a list of names is an error.
        return await self.http.paged(f"{path}?n={_PAGE}", items=lambda doc: doc.get(key), each=str, what=key,
                                     next_page=link_next, repository=repository, recover=smaller_page)

    def _path(self, repo: str, kind: str, ref: str | None = None) -> str:
        """/v2/<repo>/<kind>[/<ref>], every name escaped (or refused) so that no request reaches
        another path than the one meant (tasks/registry/transport.py `repository_path`)."""
        tail = f"/{reference_segment(self.name, repo, ref)}" if ref is not None else ""
        return f"/v2/{repository_path(self.name, repo)}/{kind}{tail}"

    # -- the API the scan and the sweep use --------------------------------------------------------
    async def ping(self) -> None:
        """GET /v2/: reachable, speaks Distribution v2, and our credentials (if any) are accepted."""
        await self._request("GET", "/v2/")

    async def list_repositories(self) -> list[str]:
        """Every repository name, following pagination."""
        return await self._list("/v2/_catalog", "repositories")

    async def list_tags(self, repo: str) -> list[str]:
        """Every tag of `repo`, following pagination."""
        return await self._list(self._path(repo, "tags/list"), "tags", repository=repo)

    async def head_manifest(self, repo: str, ref: str) -> str | None:
        """The digest `ref` resolves to, or None when the registry does not know it (404)."""
        r = await self._request("HEAD", self._path(repo, "manifests", ref), repository=repo, reference=ref,
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
        r = await self._request("GET", self._path(repo, "manifests", ref), repository=repo, reference=ref,
                                headers={"Accept": oci.ACCEPT}, limit=self.http.bounds.manifest, what="manifest")
        body = r.content
        digest = oci.sha256_digest(body)
        if oci.is_digest(ref) and digest != ref:
            raise RegistryError(self.name, f"served content with digest {digest}", repository=repo, reference=ref)
        return digest, oci.effective_media_type(r.headers.get("content-type"), body), body

    async def get_blob(self, repo: str, digest: str, max_bytes: int | None = None) -> bytes:
        """A blob's bytes (meant for configs and other small blobs), verified against its digest.

        At most `max_bytes` are read (default `Bounds.blob`, 4 MiB): pass min(the descriptor's size,
        a cap), so a descriptor that understates the size cannot make regsweep read more. A larger
        blob is not read (streamed and abandoned): ResponseTooLarge."""
        r = await self._request("GET", self._path(repo, "blobs", digest), repository=repo, reference=digest,
                                limit=max_bytes if max_bytes is not None else self.http.bounds.blob, what="blob")
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
        url = self._path(repo, "referrers", digest)
        first = await self._request("GET", url, repository=repo, reference=digest, passthrough=(404,))
        if first.status_code == 404:
            # The spec forbids 404 from a registry that has the API: this one does not (Distribution 2.8).
            self.referrers_supported = False
            return None
        self.referrers_supported = True
        found = await self.http.paged(url, first=first, items=lambda doc: doc.get("manifests"), what="referrers",
                                      next_page=link_next, repository=repo, reference=digest)
        return [d for d in found if isinstance(d, dict)]

    async def put_manifest(self, repo: str, ref: str, media_type: str, body: bytes) -> str:
        """Upload a manifest under `ref` (a digest or a tag): the digest the registry stored it as.

        The registry checks that every blob (and every manifest of an index) it refers to exists
        and refuses otherwise (MANIFEST_BLOB_UNKNOWN, a RegistryError)."""
        r = await self._request("PUT", self._path(repo, "manifests", ref), repository=repo, reference=ref,
                                content=body, headers={"Content-Type": media_type}, ok=(200, 201, 202, 204))
        digest = r.headers.get("docker-content-digest")
        return digest if digest and oci.is_digest(digest) else oci.sha256_digest(body)

    async def blob_exists(self, repo: str, digest: str) -> bool:
        """Whether `repo` serves blob `digest` (HEAD): False on 404, e.g. after garbage collection."""
        r = await self._request("HEAD", self._path(repo, "blobs", digest), repository=repo, reference=digest,
                                passthrough=(404,))
        return r.status_code != 404

    async def delete_manifest(self, repo: str, digest: str) -> bool:
        """Delete a manifest (and so every tag on it): True deleted, False already gone."""
        r = await self._request("DELETE", self._path(repo, "manifests", digest), repository=repo, reference=digest,
                                ok=(200, 202, 204), passthrough=(404,))
        return r.status_code != 404

    async def delete_tag(self, repo: str, tag: str) -> bool:
        """Delete one tag without its siblings (OCI optional); UnsupportedOperation where refused."""
        if self.tag_delete_supported is False:
            raise UnsupportedOperation(self.name, "the registry cannot delete a tag alone", repository=repo, reference=tag)
        try:
            r = await self._request("DELETE", self._path(repo, "manifests", tag), repository=repo, reference=tag,
                                    ok=(200, 202, 204), passthrough=(404,), tag_delete=True)
        except UnsupportedOperation:
            self.tag_delete_supported = False   # learned once: later lone tags are not asked for
            raise
        if r.status_code != 404:
            self.tag_delete_supported = True
        return r.status_code != 404
