"""GitHub Packages' container registry, ghcr.io (`registry.api: github`), through GitHub's REST API.

- Listing: `GET /orgs/{org}/packages?package_type=container` (or `/users/{user}/...`), then
  `GET .../packages/container/{package}/versions`: one version per manifest digest (`name`),
  tagged or not (the platform manifests of an image index are versions of their own), with
  `metadata.container.tags` and `created_at`/`updated_at` (recorded as `pushed`). Lists page
  with `page`/`per_page` (at most 100) and a `Link: rel="next"` header. ghcr.io names the
  repository `{owner, lower case}/{package}`.
- Deleting: `DELETE .../versions/{id}`, a version being a digest with every tag on it. GitHub
  cannot delete a tag alone, and refuses DELETE through the Distribution API.
- Credentials: a token (`read:packages`, and `delete:packages` to sweep) named by
  `registry.github.token_env` / `token_file`, sent as a Bearer token. The Distribution API logs
  in as for any registry (registry.auth, else the docker config).
- Rate limits: 429, or 403 with `x-ratelimit-remaining: 0` or `retry-after`, is waited out.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import httpx

from tasks.registry.backends.api import ApiBackend
from tasks.registry.backends.base import TagInfo
from tasks.config.models import RegistryConfig
from tasks.registry.transport import Bounds, RetryPolicy
from tasks.common.errors import ManifestUnknown, UnsupportedOperation
from tasks.common.units import parse_build_time


def _rate_limited(r: httpx.Response) -> bool:
    return r.status_code in (403, 429) and ("retry-after" in r.headers or r.headers.get("x-ratelimit-remaining") == "0")


class GitHubBackend(ApiBackend):
    api = "github"
    enable_hint = "the token needs the delete:packages scope and admin rights on the package"

    def __init__(self, config: RegistryConfig, retry: RetryPolicy | None = None, bounds: Bounds | None = None):
        super().__init__(config, retry, bounds)
        s = self.settings
        self.owner = s.owner.lower()
        self.prefix = f"/{'orgs' if s.ownerType == 'org' else 'users'}/{quote(s.owner, safe='')}/packages"

        def headers() -> dict[str, str]:
            token = self.token()
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            return {**auth, "Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}

        self.http = self.api_client(s.url, headers=headers, hint=self.token_hint, rate_limited=_rate_limited)
        self._versions: dict[tuple[str, str], int] = {}   # (repository, digest) -> package version id
        self._lock = asyncio.Lock()

    def _package(self, repo: str) -> str:
        if not repo.startswith(self.owner + "/"):
            raise ManifestUnknown(self.name, f"is not a package of {self.settings.owner}", repository=repo)
        return f"{self.prefix}/container/{quote(repo[len(self.owner) + 1:], safe='')}"

    async def ping(self) -> None:
        await self.http.request("GET", self.prefix, params={"package_type": "container", "per_page": 1})
        await self.oci.ping()

    async def list_repositories(self) -> list[str]:
        rows = await self.http.paged(self.prefix, params={"package_type": "container", "per_page": self.settings.pageSize})
        return [f"{self.owner}/{p['name']}" for p in rows]

    async def list_tags(self, repo: str) -> list[TagInfo]:
        # GitHub documents page, per_page and state for an organisation's package versions only: a user's
        # take none (its pages come at GitHub's default size, followed through the Link header).
        params = {"per_page": self.settings.pageSize, "state": "active"} if self.settings.ownerType == "org" else None
        versions = await self.http.paged(f"{self._package(repo)}/versions", repository=repo, params=params)
        out: list[TagInfo] = []
        for v in versions:
            digest = str(v.get("name"))
            self._versions[(repo, digest)] = int(v["id"])
            pushed = parse_build_time(v.get("updated_at")) or parse_build_time(v.get("created_at"))
            tags = ((v.get("metadata") or {}).get("container") or {}).get("tags") or [None]
            out += [TagInfo(t, digest, pushed) for t in tags]
        return out

    async def delete_manifest(self, repo: str, digest: str, tags: tuple[str, ...] = ()) -> bool:
        async with self._lock:
            if (repo, digest) not in self._versions:
                await self.list_tags(repo)   # version ids are found by listing
        vid = self._versions.get((repo, digest))
        if vid is None:
            return False   # no such version: already gone
        return await self._delete_version(repo, vid, digest)

    async def _delete_version(self, repo: str, vid: int, ref: str) -> bool:
        r = await self.http.request("DELETE", f"{self._package(repo)}/versions/{vid}", ok=(200, 204),
                                    passthrough=(404,), repository=repo, reference=ref)
        return r.status_code != 404

    async def delete_tag(self, repo: str, tag: str) -> bool:
        raise UnsupportedOperation(self.name, "GitHub deletes package versions (digests), not a tag alone",
                                   repository=repo, reference=tag)

    async def probe_delete_digest(self, repo: str) -> None:
        await self._delete_version(repo, 0, "version 0")   # no package version has id 0
