"""A loopback Harbor v2 API (`/api/v2.0`) in front of a real Distribution.

Speaks Harbor's swagger (goharbor/harbor api/v2.0/swagger.yaml): `GET /projects` →
`[{project_id, name}]`; `GET /projects/{project}/repositories` → `[{id, project_id, name:
"project/repo", artifact_count}]`; `GET .../repositories/{repository}/artifacts?with_tag=true` →
`[{id, digest, media_type, manifest_media_type, size, push_time, pull_time, tags: [{id, name,
push_time, pull_time, immutable}], references}]`; `DELETE .../artifacts/{reference}` and
`DELETE .../artifacts/{reference}/tags/{tag}`. The repository name inside a path is URL-encoded
twice (`a/b` → `a%252Fb`). Pagination: `page`/`page_size` (10 by default, at most 100), the
`X-Total-Count` header and `Link: <...>; rel="next"`. Errors: `{"errors": [{"code": "NOT_FOUND",
"message": ...}]}`. Basic auth with the registry's users; a never-pulled artifact's pull time is
`0001-01-01T00:00:00.000Z`, as Harbor writes it.

    harbor_api(registry, users={"ci": "pw"})   fixture factory; .url is Harbor's base URL
"""

from __future__ import annotations

from urllib.parse import unquote

from tests.support.fakeapi import FakeApi, Reply, Request, api_fixture, iso, page_url, paginate, reply

NEVER = "0001-01-01T00:00:00.000Z"


def _errors(status: int, code: str, message: str) -> Reply:
    return reply(status, {"errors": [{"code": code, "message": message}]})


class FakeHarbor(FakeApi):
    api = "harbor"
    _R = r"/api/v2.0/projects/(?P<project>[^/]+)/repositories/(?P<repo>[^/]+)"
    routes = [
        ("GET", r"/api/v2.0/projects", "list_projects"),
        ("GET", r"/api/v2.0/projects/(?P<project>[^/]+)/repositories", "list_repositories"),
        ("GET", _R + r"/artifacts", "list_artifacts"),
        ("DELETE", _R + r"/artifacts/(?P<ref>[^/]+)", "delete_artifact"),
        ("DELETE", _R + r"/artifacts/(?P<ref>[^/]+)/tags/(?P<tag>[^/]+)", "delete_tag"),
    ]

    def __init__(self, registry, *, users: dict[str, str], **kw):
        super().__init__(registry, **kw)
        self.users = dict(users)

    def authorized(self, req: Request) -> bool:
        sent = self.basic(req)
        return sent is not None and self.users.get(sent[0]) == sent[1]

    def unauthorized(self, req: Request) -> Reply:
        return _errors(401, "UNAUTHORIZED", "unauthorized")

    def forbidden(self, req: Request) -> Reply:
        return _errors(403, "FORBIDDEN", "forbidden")

    def _paged(self, req: Request, items: list) -> Reply:
        p = paginate(items, req.query, "page_size", 10, 100)
        headers = {"X-Total-Count": str(p.total)}
        if p.next:
            headers["Link"] = f'<{page_url(req.url, p.next)}>; rel="next"'
        return reply(200, p.items, **headers)

    def _name(self, req: Request) -> str:
        return f"{req.groups['project']}/{unquote(req.groups['repo'])}"   # groups are decoded once already

    def list_projects(self, req: Request) -> Reply:
        names = sorted({r.split("/", 1)[0] for r in self.catalog() if "/" in r})
        return self._paged(req, [{"project_id": self.id_of(("project", n)), "name": n} for n in names])

    def list_repositories(self, req: Request) -> Reply:
        p = req.groups["project"]
        repos = [r for r in self.catalog() if r.startswith(p + "/")]
        if not repos:
            return _errors(404, "NOT_FOUND", f"project {p} not found")
        return self._paged(req, [{"id": self.id_of(("repo", r)), "project_id": self.id_of(("project", p)), "name": r,
                                  "artifact_count": len({d for _, d in self.tags(r)})} for r in repos])

    def list_artifacts(self, req: Request) -> Reply:
        repo = self._name(req)
        by_digest: dict[str, list[str]] = {}
        for tag, digest in self.tags(repo):
            by_digest.setdefault(digest, []).append(tag)
        out = []
        for digest, tags in sorted(by_digest.items()):
            found = self.manifest(repo, digest)
            if found is None:
                continue
            _, media_type, doc = found
            pushed, pulled = iso(self.pushed(repo, digest)), iso(self.pulled(repo, digest)) or NEVER
            artifact = {"id": self.id_of(("artifact", repo, digest)), "type": "IMAGE", "digest": digest,
                        "media_type": media_type, "manifest_media_type": media_type, "size": self.size(doc),
                        "push_time": pushed, "pull_time": pulled}
            refs = [{"child_digest": m["digest"], **({"platform": m["platform"]} if m.get("platform") else {})}
                    for m in doc.get("manifests") or []]
            if refs:                      # Harbor omits empty lists (x-omitempty): never null
                artifact["references"] = refs
            if req.query.get("with_tag", "true") == "true":
                artifact["tags"] = [{"id": self.id_of(("tag", repo, t)), "name": t, "push_time": pushed,
                                     "pull_time": pulled, "immutable": False} for t in tags]
            out.append(artifact)
        return self._paged(req, out)

    def _digest(self, repo: str, ref: str) -> str | None:
        found = self.manifest(repo, ref)
        return found[0] if found else None

    def delete_artifact(self, req: Request) -> Reply:
        repo = self._name(req)
        digest = self._digest(repo, req.groups["ref"])
        if digest is None or not self.delete_digest(repo, digest):
            return _errors(404, "NOT_FOUND", f"artifact {repo}@{req.groups['ref']} not found")
        return reply(200, None)

    def delete_tag(self, req: Request) -> Reply:
        repo, tag = self._name(req), req.groups["tag"]
        digest = self._digest(repo, req.groups["ref"])
        if digest is None or dict(self.tags(repo)).get(tag) != digest or not self.untag(repo, tag):
            return _errors(404, "NOT_FOUND", f"tag {tag} not found")
        return reply(200, None)


harbor_api = api_fixture(FakeHarbor)
