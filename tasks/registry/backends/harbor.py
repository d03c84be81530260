"""Harbor v2 (`registry.api: harbor`), under `<harbor.url>/api/v2.0`.

- Listing: `GET /projects` (unless `registry.harbor.projects` names them), `GET
  /projects/{project}/repositories`, then `GET .../repositories/{repository}/artifacts?with_tag=true`:
  each artifact carries its `digest`, `push_time`, `pull_time` and `tags` (each with its own push
  and pull time). Lists page with `page`/`page_size` (at most 100) and a `Link: rel="next"`
  header. A repository name inside a path is URL-encoded twice (`a/b` is `a%252Fb`), as Harbor asks.
- Deleting: `DELETE .../artifacts/{digest}` (the artifact and its tags) and `DELETE
  .../artifacts/{tag}/tags/{tag}` (that tag only).
- Credentials: Harbor's API takes the registry's own Basic credentials (a user or robot
  account): registry.auth, else the docker config. Harbor answers a never-pulled artifact with
  pull time `0001-01-01T00:00:00Z`: no time at all.
"""

from __future__ import annotations

from urllib.parse import quote

from tasks.registry.auth import resolve_credentials
from tasks.registry.backends.api import ApiBackend, link_next
from tasks.registry.backends.base import PROBE_DIGEST, TagInfo, probe_tag
from tasks.config.models import RegistryConfig
from tasks.registry.transport import Bounds, RetryPolicy, refuse_clear_text
from tasks.common.units import parse_build_time


def _path(repo: str) -> str:
    """/projects/{project}/repositories/{name, encoded twice}."""
    project, _, name = repo.partition("/")
    return f"/projects/{quote(project, safe='')}/repositories/{quote(quote(name, safe=''), safe='')}"


class HarborBackend(ApiBackend):
    api = "harbor"
    enable_hint = "the account needs the project's delete permission (a robot account: `delete artifact`)"

    def __init__(self, config: RegistryConfig, retry: RetryPolicy | None = None, bounds: Bounds | None = None):
        super().__init__(config, retry, bounds)

        url = (self.settings.url or config.url).rstrip("/")

        def headers() -> dict[str, str]:
            creds = resolve_credentials(config.host, config.auth)
            if creds is None or creds.identity_token:
                return {}
            refuse_clear_text(config, url, creds.origin)
            return {"Authorization": creds.basic_header()}

        self.http = self.api_client(url + "/api/v2.0", headers=headers,
                                    hint="registry.auth, or the docker config")

    async def ping(self) -> None:
        await self.http.request("GET", "/projects", params={"page_size": 1})
        await self.oci.ping()

    async def list_repositories(self) -> list[str]:
        size = {"page_size": self.settings.pageSize}
        projects = self.settings.projects or [str(p["name"]) for p in await self.http.paged("/projects", params=size)]
        names: list[str] = []
        for p in projects:
            names += [str(r["name"]) for r in await self.http.paged(f"/projects/{quote(p, safe='')}/repositories",
                                                                     params=size, next_page=link_next)]
        return names

    async def list_tags(self, repo: str) -> list[TagInfo]:
        out: list[TagInfo] = []
        artifacts = await self.http.paged(f"{_path(repo)}/artifacts", repository=repo,
                                          params={"with_tag": "true", "page_size": self.settings.pageSize})
        for a in artifacts:
            digest = a.get("digest")
            pushed, pulled = parse_build_time(a.get("push_time")), parse_build_time(a.get("pull_time"))
            tags = a.get("tags") or []
            out += [TagInfo(str(t["name"]), digest, parse_build_time(t.get("push_time")) or pushed,
                            parse_build_time(t.get("pull_time")) or pulled) for t in tags]
            if not tags:
                out.append(TagInfo(None, digest, pushed, pulled))
        return out

    async def delete_manifest(self, repo: str, digest: str, tags: tuple[str, ...] = ()) -> bool:
        r = await self.http.request("DELETE", f"{_path(repo)}/artifacts/{quote(digest, safe=':')}", passthrough=(404,),
                                    repository=repo, reference=digest)
        return r.status_code != 404

    async def delete_tag(self, repo: str, tag: str) -> bool:
        return await self._delete_tag(repo, tag, tag)

    async def _delete_tag(self, repo: str, artifact: str, tag: str) -> bool:
        r = await self.http.request("DELETE", f"{_path(repo)}/artifacts/{quote(artifact, safe='')}/tags/"
                                    f"{quote(tag, safe='')}", passthrough=(404,), repository=repo, reference=tag)
        return r.status_code != 404

    async def probe_delete_tag(self, repo: str) -> None:
        await self._delete_tag(repo, PROBE_DIGEST, probe_tag())
