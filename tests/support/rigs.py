"""One test rig per registry API: the same tests run against every backend (tests/test_backends.py).

A `Rig` is a real Distribution (the OCI side) with, for a native API, the server that speaks it:
moto's ECR (tests/support/ecr.py) or a loopback fake (tests/support/<api>.py). It pushes images,
writes the `registry:` section that selects its backend, breaks its credentials on request, and
says what the registry holds now as its own API would.

    rig          fixture, parametrised over every api (`rig.api`); native_rig: every api but distribution
    make_rig     one rig of a given api inside a test
    API_TOKEN    the secret every rig accepts; it must never appear in an output or a stored file
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import pytest

from tasks.config.models import REGISTRY_APIS
from testbed import LocalRegistry, push_image, push_index, write_htpasswd
from tests.support.ecr import EcrImages
from tests.support.fakeapi import TOKEN as API_TOKEN

TOKEN_ENV = "REGSWEEP_TEST_API_TOKEN"
USER = "regsweep-bot"
_names = itertools.count()


@dataclass
class Rig:
    api: str
    registry: LocalRegistry
    namespace: str                                  # repositories live under it
    settings: Callable[[str | None], dict]          # the `registry:` keys that select the backend (api url override)
    server: Any = None                              # the fake API or EcrImages
    api_url: str | None = None                      # where the native API answers (None: the Distribution API)
    extra: dict = field(default_factory=dict)
    server_pager: Any = None                        # ECR: the paging proxy in front of moto

    def repository(self, stem: str) -> str:
        if self.api == "ecr":
            return self.server.repository(stem)
        return f"{self.namespace}/{stem}-{next(_names)}"

    @property
    def client(self):
        return self.server.client if self.api == "ecr" else self.extra["client"]

    def image(self, repo: str, tags: list[str], *, created: datetime | None = None, label: str = "") -> Any:
        """One image named by `tags` (none: pushed by digest, untagged)."""
        if self.api == "ecr":
            return self.server.image(repo, tags, created=created, label=label)
        config = {"config": {"Labels": {"build": label or f"{repo}:{','.join(tags)}:{next(_names)}"}}}
        if created is not None:
            config["created"] = created
        d = push_image(self.client, repo, tags[0] if tags else None, config=config)
        for tag in tags[1:]:
            self.client.put(f"/v2/{repo}/manifests/{tag}", content=d.body, headers={"Content-Type": d.media_type})
        return d

    def index(self, repo: str, tag: str, children: list[tuple[Any, dict]]) -> Any:
        if self.api == "ecr":
            return self.server.index(repo, tag, children)
        return push_index(self.client, repo, tag, children)

    def registry_config(self, url: str, repos: list[str], *, api_url: str | None = None, **more) -> dict:
        # The loopback registries and fake APIs are plain http: the credentials need the explicit opt-in.
        return {"url": url, "repositories": repos, "concurrency": 4, "allowInsecureCredentials": True,
                **self.settings(api_url), **more}

    def tags(self, repo: str) -> dict[str, str]:
        """tag -> digest, as the registry's own API sees them now."""
        if self.api == "ecr":
            return {t: d for d, ts in self.server.described(repo).items() for t in ts}
        r = self.client.get(f"/v2/{repo}/tags/list")
        out = {}
        for tag in (r.json().get("tags") or []) if r.status_code == 200 else []:
            h = self.client.head(f"/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": "application/vnd.oci.image.index.v1+json, "
                                                    "application/vnd.oci.image.manifest.v1+json"})
            if h.status_code == 200:
                out[tag] = h.headers["docker-content-digest"]
        return out

    def delete(self, repo: str, digest: str) -> None:
        """Delete a manifest behind regsweep's back (and, on ECR, the image in ECR's API too)."""
        self.client.delete(f"/v2/{repo}/manifests/{digest}")
        if self.api == "ecr":
            self.server.ecr.batch_delete_image(repositoryName=repo, imageIds=[{"imageDigest": str(digest)}])

    #: A regex for the native API's request that lists a repository's tags (fault injection, counting).
    LIST_PATHS = {"gitlab": r"/registry/repositories/\d+/tags\?", "harbor": r"/artifacts\?",
                  "github": r"/versions\?", "dockerhub": r"/repositories/[^/]+/tags\?"}

    def list_pages(self) -> int:
        """Tag-listing pages the native API served so far."""
        if self.api == "ecr":
            return self.server_pager.count("DescribeImages")
        rx = re.compile(self.LIST_PATHS[self.api])
        return sum(1 for m, p in self.server.requests if m == "GET" and rx.search(p))

    def holds(self, repo: str, digest: str) -> bool:
        """Whether the registry still holds `digest` (Docker Hub: whether a tag still names it)."""
        if self.api == "ecr":
            return digest in self.server.described(repo)
        if self.api == "dockerhub":
            return digest in self.tags(repo).values()
        return self.client.get(f"/v2/{repo}/manifests/{digest}",
                               headers={"Accept": "application/vnd.oci.image.index.v1+json, "
                                                  "application/vnd.oci.image.manifest.v1+json"}).status_code == 200


def make_rig(api: str, request, tmp_path, monkeypatch) -> Rig:
    monkeypatch.setenv(TOKEN_ENV, API_TOKEN)
    if api == "ecr":
        registry = request.getfixturevalue("ecr_registry")
        env = request.getfixturevalue("ecr_env")
        images = EcrImages(registry, env)
        request.addfinalizer(images.close)
        return Rig(api, registry, "ecr", lambda url: {"api": "ecr", "ecr": {"pageSize": 2, **({"endpoint": url} if url else {})}},
                   images, env["AWS_ENDPOINT_URL_ECR"], server_pager=request.getfixturevalue("ecr_pager"))
    if api == "harbor":
        path = write_htpasswd(tmp_path / "harbor-htpasswd", {USER: API_TOKEN})
        registry = LocalRegistry(htpasswd=path, credentials=(USER, API_TOKEN)).start()
    else:
        registry = LocalRegistry().start()
    request.addfinalizer(registry.stop)
    client = registry.client()
    request.addfinalizer(client.close)
    if api == "distribution":
        return Rig(api, registry, "dist", lambda url: {}, extra={"client": client})
    if api == "gitlab":
        server = request.getfixturevalue("gitlab_api")(registry, projects={"grp/app": 7})
        return Rig(api, registry, "grp/app", lambda url: {"api": "gitlab", "gitlab": {
            "project": "grp/app", "token_env": TOKEN_ENV, "pageSize": 2, "url": url or server.url}},
                   server, server.url, {"client": client})
    if api == "harbor":
        server = request.getfixturevalue("harbor_api")(registry, users={USER: API_TOKEN})
        return Rig(api, registry, "proj", lambda url: {"api": "harbor", "harbor": {"url": url or server.url, "pageSize": 2},
                                                       "auth": {"username": USER, "password_env": TOKEN_ENV}},
                   server, server.url, {"client": client})
    if api == "github":
        server = request.getfixturevalue("github_api")(registry, owner="Acme")
        return Rig(api, registry, "acme", lambda url: {"api": "github", "github": {
            "owner": "Acme", "token_env": TOKEN_ENV, "pageSize": 2, "url": url or server.url}},
                   server, server.url, {"client": client})
    if api == "dockerhub":
        server = request.getfixturevalue("dockerhub_api")(registry, users={USER: API_TOKEN})
        return Rig(api, registry, "acme", lambda url: {"api": "dockerhub", "dockerhub": {
            "namespace": "acme", "username": USER, "token_env": TOKEN_ENV, "pageSize": 2, "url": url or server.url}},
                   server, server.url, {"client": client})
    raise ValueError(api)


@pytest.fixture(params=REGISTRY_APIS)
def rig(request, tmp_path, monkeypatch) -> Rig:
    """A rig for every api, the Distribution API's included."""
    return make_rig(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=[a for a in REGISTRY_APIS if a != "distribution"])
def native_rig(request, tmp_path, monkeypatch) -> Rig:
    """A rig for every native api."""
    return make_rig(request.param, request, tmp_path, monkeypatch)
