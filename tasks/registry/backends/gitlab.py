"""GitLab's container registry API (`registry.api: gitlab`), under `<gitlab.url>/api/v4`.

- Listing: `GET /projects/:id/registry/repositories` (or `/groups/:id/...`: every project of a
  group), then per repository `GET .../repositories/:repository_id/tags` (name, path, location)
  and, per tag, `GET .../tags/:tag_name` for its `digest` and `created_at` (the registry's
  time for the tag, recorded as `pushed`). Lists page with `page`/`per_page` and GitLab's
  `X-Next-Page` header (empty on the last page).
- Deleting a lone tag: `DELETE .../tags/:tag_name` (GitLab removes that tag only). Manifests are
  deleted by digest through the Distribution API, which GitLab's registry serves.
- Credentials: a token named by `registry.gitlab.token_env` / `token_file`, sent as
  `PRIVATE-TOKEN` (as `JOB-TOKEN` when it is `CI_JOB_TOKEN`, which GitLab lets read only).
  The Distribution API logs in as for any registry (registry.auth, else the docker config).
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from tasks.registry.backends.api import ApiBackend, x_next_page
from tasks.registry.backends.base import TagInfo
from tasks.config.models import RegistryConfig
from tasks.registry.transport import Bounds, RetryPolicy
from tasks.common.errors import ManifestUnknown
from tasks.common.units import parse_build_time


class GitLabBackend(ApiBackend):
    api = "gitlab"
    enable_hint = "the token needs the Maintainer role (or Developer) and the api scope"

    def __init__(self, config: RegistryConfig, retry: RetryPolicy | None = None, bounds: Bounds | None = None):
        super().__init__(config, retry, bounds)
        s = self.settings
        owner = s.project or s.group
        self.base = f"/{'projects' if s.project else 'groups'}/{quote(str(owner), safe='')}"
        header = "JOB-TOKEN" if s.token_env == "CI_JOB_TOKEN" else "PRIVATE-TOKEN"

        def headers() -> dict[str, str]:
            token = self.token()
            return {header: token} if token else {}

        self.http = self.api_client(s.url.rstrip("/") + "/api/v4", headers=headers, hint=self.token_hint)
        self._repos: dict[str, tuple[int, int]] | None = None   # registry path -> (project id, repository id)
        self._lock = asyncio.Lock()

    async def ping(self) -> None:
        await self.http.request("GET", self.base)
        await self.oci.ping()

    async def _repositories(self) -> dict[str, tuple[int, int]]:
        async with self._lock:
            if self._repos is None:
                rows = await self.http.paged(f"{self.base}/registry/repositories",
                                             params={"per_page": self.settings.pageSize}, next_page=x_next_page)
                self._repos = {str(r["path"]): (int(r["project_id"]), int(r["id"])) for r in rows}
            return self._repos

    async def _tags_url(self, repo: str) -> str:
        found = (await self._repositories()).get(repo)
        if found is None:
            raise ManifestUnknown(self.name, f"GitLab lists no registry repository {repo} under {self.base}",
                                  repository=repo)
        project, rid = found
        return f"/projects/{project}/registry/repositories/{rid}/tags"

    async def list_repositories(self) -> list[str]:
        return sorted(await self._repositories())

    async def list_tags(self, repo: str) -> list[TagInfo]:
        url = await self._tags_url(repo)
        names = [str(t["name"]) for t in await self.http.paged(url, params={"per_page": self.settings.pageSize},
                                                               next_page=x_next_page, repository=repo)]

        async def details(tag: str) -> TagInfo:
            r = await self.http.request("GET", f"{url}/{quote(tag, safe='')}", passthrough=(404,),
                                        repository=repo, reference=tag)
            if r.status_code == 404:
                return TagInfo(tag)   # deleted since the list: the Distribution API reads it as gone
            doc = self.http.decode(r, url, repo)
            return TagInfo(tag, doc.get("digest"), parse_build_time(doc.get("created_at")))

        return list(await asyncio.gather(*(details(t) for t in names)))

    async def delete_tag(self, repo: str, tag: str) -> bool:
        url = await self._tags_url(repo)
        r = await self.http.request("DELETE", f"{url}/{quote(tag, safe='')}", ok=(200, 202, 204), passthrough=(404,),
                                    repository=repo, reference=tag)
        return r.status_code != 404
