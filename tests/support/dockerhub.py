"""A loopback Docker Hub API (hub.docker.com) in front of a real Distribution (registry-1.docker.io's part).

Speaks docs.docker.com/reference/api/hub: `POST /v2/auth/token` with `{identifier, secret}` →
`{access_token}`; `GET /v2/namespaces/{namespace}/repositories` and `GET
.../repositories/{repository}/tags` → `{count, next, previous, results}` pages (`page`,
`page_size`: 10 by default, at most 100; `next` a full URL or null), a tag being `{id, name,
digest, media_type, content_type, full_size, images: [{architecture, os, digest, size, status,
last_pulled, last_pushed}], last_updated, tag_last_pulled, tag_last_pushed, tag_status}`; and
the tag delete the Hub UI and its tools use, `DELETE /v2/repositories/{namespace}/{repository}/tags/{tag}/`.
Errors: `{"detail": ..., "message": ...}`. Repositories are `{namespace}/{name}` in the registry behind.

    dockerhub_api(registry, users={"bot": TOKEN})   fixture factory; .url is Hub's base URL
"""

from __future__ import annotations

import secrets

from tests.support.fakeapi import FakeApi, Reply, Request, api_fixture, iso, page_url, paginate, reply


def _error(status: int, message: str) -> Reply:
    return reply(status, {"detail": message, "message": message})


class FakeDockerHub(FakeApi):
    api = "dockerhub"
    _N = r"/v2/namespaces/(?P<ns>[^/]+)/repositories"
    routes = [
        ("POST", r"/v2/auth/token", "login"),
        ("GET", _N, "list_repositories"),
        ("GET", _N + r"/(?P<name>[^/]+)/tags", "list_tags"),
        ("DELETE", r"/v2/repositories/(?P<ns>[^/]+)/(?P<name>[^/]+)/tags/(?P<tag>[^/]+)/", "delete_tag"),
    ]

    def __init__(self, registry, *, users: dict[str, str], **kw):
        super().__init__(registry, **kw)
        self.users = dict(users)
        self.sessions: set[str] = set()

    def login(self, req: Request) -> Reply:
        body = req.body if isinstance(req.body, dict) else {}
        if self.users.get(body.get("identifier")) != body.get("secret") or not body.get("secret"):
            return _error(401, "Incorrect authentication credentials.")
        jwt = "eyJhbGciOiJIUzI1NiJ9." + secrets.token_urlsafe(24)
        self.sessions.add(jwt)
        return reply(200, {"access_token": jwt})

    def authorized(self, req: Request) -> bool:
        return self.bearer(req) in self.sessions

    def unauthorized(self, req: Request) -> Reply:
        return _error(401, "Authentication credentials were not provided.")

    def forbidden(self, req: Request) -> Reply:
        return _error(403, "You do not have permission to perform this action.")

    def _paged(self, req: Request, items: list) -> Reply:
        p = paginate(items, req.query, "page_size", 10, 100)
        return reply(200, {"count": p.total, "next": page_url(req.url, p.next) if p.next else None,
                           "previous": page_url(req.url, p.page - 1) if p.page > 1 else None, "results": p.items})

    def list_repositories(self, req: Request) -> Reply:
        ns = req.groups["ns"]
        names = [r.split("/", 1)[1] for r in self.catalog() if r.startswith(ns + "/") and r.count("/") == 1]
        return self._paged(req, [{"name": n, "namespace": ns, "repository_type": "image", "status": 1,
                                  "is_private": True} for n in names])

    def _images(self, repo: str, digest: str, doc: dict) -> list[dict]:
        kids = doc.get("manifests")
        entries = [(m["digest"], m.get("platform") or {}, 0) for m in kids] if kids else [(digest, {}, self.size(doc))]
        return [{"architecture": p.get("architecture", "amd64"), "os": p.get("os", "linux"), "digest": d, "size": size,
                 "status": "active", "last_pushed": iso(self.pushed(repo, d)), "last_pulled": iso(self.pulled(repo, d))}
                for d, p, size in entries]

    def list_tags(self, req: Request) -> Reply:
        repo = f"{req.groups['ns']}/{req.groups['name']}"
        if repo not in self.catalog():
            return _error(404, "object not found")
        out = []
        for tag, digest in self.tags(repo):
            found = self.manifest(repo, digest)
            if found is None:
                continue
            _, media_type, doc = found
            pushed, pulled = iso(self.pushed(repo, digest)), iso(self.pulled(repo, digest))
            out.append({"id": self.id_of(("tag", repo, tag)), "name": tag, "digest": digest, "media_type": media_type,
                        "content_type": "image", "full_size": self.size(doc), "images": self._images(repo, digest, doc),
                        "last_updated": pushed, "tag_last_pushed": pushed, "tag_last_pulled": pulled,
                        "tag_status": "active"})
        return self._paged(req, out)

    def delete_tag(self, req: Request) -> Reply:
        repo = f"{req.groups['ns']}/{req.groups['name']}"
        if not self.untag(repo, req.groups["tag"]):
            return _error(404, "tag not found")
        return reply(204, None)


dockerhub_api = api_fixture(FakeDockerHub)
