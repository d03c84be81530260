"""Docker Hub (`registry.api: dockerhub`), through Hub's API at `<dockerhub.url>` (hub.docker.com).

- Login: `POST /v2/auth/token` with `{identifier, secret}` (a user and a personal access token)
  answers `{access_token}`, a JWT sent as a Bearer token.
- Listing: `GET /v2/namespaces/{namespace}/repositories`, then `GET
  .../repositories/{repository}/tags`; both page with `page`/`page_size` (at most 100) and a
  `next` URL in the body. A tag carries `digest` (where Hub's answer has it; without it the
  Distribution API resolves the tag, a HEAD that costs no pull quota), `tag_last_pushed` and
  `tag_last_pulled`, and `images[]` with each platform manifest's digest and times.
- Deleting: `DELETE /v2/repositories/{namespace}/{repository}/tags/{tag}/`. Hub refuses DELETE
  through the Distribution API, so a manifest goes by deleting every tag on it; a manifest no
  tag names (a platform manifest, a signature) cannot be deleted through Hub's API, and Hub
  removes untagged content itself.
- Credentials: `registry.dockerhub.username` (else registry.auth's, else the docker config's)
  and a token named by `registry.dockerhub.token_env` / `token_file` (else registry.auth's
  password, else the docker config's secret for Docker Hub).
"""

from __future__ import annotations

from urllib.parse import quote

from tasks.registry.auth import resolve_credentials
from tasks.registry.backends.api import ApiBackend, body_next
from tasks.registry.backends.base import TagInfo, probe_tag
from tasks.config.models import RegistryConfig
from tasks.registry.transport import Bounds, RetryPolicy, refuse_clear_text
from tasks.common.errors import ManifestUnknown, RegistryAuthError, RegistryError, UnsupportedOperation
from tasks.oci.manifest import is_digest
from tasks.common.units import parse_build_time


class DockerHubBackend(ApiBackend):
    api = "dockerhub"
    untagged_deletable = False
    enable_hint = "the access token needs the Read, Write & Delete scope"

    def __init__(self, config: RegistryConfig, retry: RetryPolicy | None = None, bounds: Bounds | None = None):
        super().__init__(config, retry, bounds)
        s = self.settings
        self.ns = s.namespace
        self._ns = quote(s.namespace, safe="")   # as it goes into a URL path
        hint = self.token_hint if (s.token_env or s.token_file) else "registry.auth, or the docker config"
        self.http = self.api_client(s.url, hint=hint)

    def _login(self) -> tuple[str, str]:
        s = self.settings
        secret = self.token()
        creds = None if (secret and s.username) else resolve_credentials("docker.io", self.config.auth)
        user = s.username or (creds.username if creds else None)
        secret = secret or (creds.secret if creds else None)
        if not user or not secret:
            raise RegistryAuthError(self.name, "Docker Hub's API needs a user and a token: set registry.dockerhub."
                                    "username and token_env, or registry.auth, or `docker login`")
        refuse_clear_text(self.config, s.url, creds.origin if creds else f"registry.{self.api}")
        return user, secret

    async def open(self) -> None:
        await super().open()
        user, secret = self._login()
        doc = await self.http.json("POST", "/v2/auth/token", json={"identifier": user, "secret": secret}, auth=False)
        token = (doc.get("access_token") or doc.get("token")) if isinstance(doc, dict) else None
        if not token:
            raise RegistryError(self.name, "Docker Hub's /v2/auth/token answered without an access_token")
        self.http.set_auth({"Authorization": f"Bearer {token}"})

    def _name(self, repo: str) -> str:
        ns, _, name = repo.partition("/")
        if ns != self.ns or not name:
            raise ManifestUnknown(self.name, f"is not a repository of namespace {self.ns}", repository=repo)
        return quote(name, safe="")

    async def ping(self) -> None:
        await self.http.request("GET", f"/v2/namespaces/{self._ns}/repositories", params={"page_size": 1})
        await self.oci.ping()

    async def list_repositories(self) -> list[str]:
        rows = await self.http.paged(f"/v2/namespaces/{self._ns}/repositories", params={"page_size": self.settings.pageSize},
                                     next_page=body_next, items=lambda d: d.get("results"))
        return [f"{self.ns}/{r['name']}" for r in rows]

    async def list_tags(self, repo: str) -> list[TagInfo]:
        rows = await self.http.paged(f"/v2/namespaces/{self._ns}/repositories/{self._name(repo)}/tags", repository=repo,
                                     params={"page_size": self.settings.pageSize}, next_page=body_next,
                                     items=lambda d: d.get("results"))
        out: list[TagInfo] = []
        for t in rows:
            digest = t.get("digest") if isinstance(t.get("digest"), str) and is_digest(t["digest"]) else None
            out.append(TagInfo(str(t["name"]), digest, parse_build_time(t.get("tag_last_pushed") or t.get("last_updated")),
                               parse_build_time(t.get("tag_last_pulled"))))
            for image in t.get("images") or []:   # the platform manifests, with their own times
                if isinstance(image.get("digest"), str) and image["digest"] != digest:
                    out.append(TagInfo(None, image["digest"], parse_build_time(image.get("last_pushed")),
                                       parse_build_time(image.get("last_pulled"))))
        return out

    async def delete_tag(self, repo: str, tag: str) -> bool:
        r = await self.http.request("DELETE", f"/v2/repositories/{self._ns}/{self._name(repo)}/tags/{quote(tag, safe='')}/",
                                    ok=(200, 202, 204), passthrough=(404,), repository=repo, reference=tag)
        return r.status_code != 404

    async def delete_manifest(self, repo: str, digest: str, tags: tuple[str, ...] = ()) -> bool:
        if not tags:
            raise UnsupportedOperation(self.name, "Docker Hub's API deletes tags; an untagged manifest stays until "
                                       "Hub removes it", repository=repo, reference=digest)
        existed = False
        for tag in tags:   # every tag on it was re-checked to name `digest` just before
            existed = await self.delete_tag(repo, tag) or existed
        return existed

    async def probe_delete_digest(self, repo: str) -> None:
        await self.delete_tag(repo, probe_tag())
