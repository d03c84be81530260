"""The backend interface, implemented for the OCI Distribution API (`registry.api: distribution`).

A native backend (tasks/registry/backends/<api>.py) subclasses `Backend` and overrides what its API does
better: listing (with digests, push and pull times in bulk pages) and deleting. Everything it
does not override goes through the Distribution API, as does every read of a manifest, config or
referrer (`self.oci`, a tasks.registry.distribution.RegistryClient).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from tasks.registry.auth import Credentials
from tasks.config.models import RegistryConfig
from tasks.registry.distribution import RegistryClient
from tasks.registry.transport import Bounds, RetryPolicy

#: A manifest digest no registry holds (no content hashes to it): what the capability probe deletes.
PROBE_DIGEST = "sha256:" + "0" * 64


def probe_tag() -> str:
    """A tag name no registry holds: random, so a probe can never delete a real tag."""
    return f"regsweep-capability-probe-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class TagInfo:
    """One entry of a tag listing: a tag (None for an untagged manifest the API lists) and what
    the API says of it. `digest` None means the API does not say: it is read through the
    Distribution API. Times are the registry's own, None where it reports none."""

    tag: str | None
    digest: str | None = None
    pushed: datetime | None = None
    last_pulled: datetime | None = None


class Backend:
    """One registry, listed and deleted through the Distribution API; `async with` opens it."""

    api = "distribution"
    #: Whether a manifest no tag names (a platform manifest, a referrer) can be deleted.
    untagged_deletable = True
    #: How to let this registry delete, for the message when it cannot.
    enable_hint = "Distribution: set storage.delete.enabled: true"

    def __init__(self, config: RegistryConfig, retry: RetryPolicy | None = None, bounds: Bounds | None = None):
        self.config = config
        self.retry = retry or RetryPolicy()
        self.bounds = bounds or Bounds()
        self.oci = RegistryClient(config, retry=self.retry, credentials=self.oci_credentials(), bounds=self.bounds)

    @property
    def name(self) -> str:
        return self.config.host

    def oci_credentials(self) -> Callable[[], Credentials | None] | None:
        """Credentials for the Distribution API; None: registry.auth, else the docker config."""
        return None

    async def __aenter__(self) -> "Backend":
        await self.oci.__aenter__()
        try:
            await self.open()
        except BaseException:
            await self.__aexit__(None, None, None)   # whatever `open` got to open
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.close()
        finally:
            await self.oci.__aexit__(*exc)

    async def open(self) -> None:
        """Open the native API's client (nothing for the Distribution API)."""

    async def close(self) -> None:
        """Close what `open` opened."""

    # -- the interface -----------------------------------------------------------------------------
    async def ping(self) -> None:
        """Reachable, and the credentials (if any) accepted: RegistryAuthError otherwise."""
        await self.oci.ping()

    async def list_repositories(self) -> list[str]:
        return await self.oci.list_repositories()

    async def list_tags(self, repo: str) -> list[TagInfo]:
        """Every tag of `repo` (and, where the API lists them, untagged manifests with their times)."""
        return [TagInfo(t) for t in await self.oci.list_tags(repo)]

    async def resolve(self, repo: str, ref: str) -> str | None:
        """The digest a tag (or digest) resolves to now; None when the registry does not know it."""
        return await self.oci.head_manifest(repo, ref)

    async def delete_manifest(self, repo: str, digest: str, tags: tuple[str, ...] = ()) -> bool:
        """Delete a manifest and every tag on it (`tags`, as planned): True deleted, False already gone."""
        return await self.oci.delete_manifest(repo, digest)

    async def delete_tag(self, repo: str, tag: str) -> bool:
        """Delete one tag, its siblings untouched; UnsupportedOperation where the registry cannot."""
        return await self.oci.delete_tag(repo, tag)

    # -- the capability probe (tasks/registry/capabilities.py) ------------------------------------------------
    async def probe_delete_digest(self, repo: str) -> None:
        """Delete a manifest that does not exist: returns when the registry would delete one."""
        await self.delete_manifest(repo, PROBE_DIGEST)

    async def probe_delete_tag(self, repo: str) -> None:
        """Delete a tag that does not exist: returns when the registry would delete a lone tag."""
        await self.delete_tag(repo, probe_tag())
