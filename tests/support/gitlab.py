"""A loopback GitLab container registry API (`/api/v4`) in front of a real Distribution.

Speaks what GitLab documents (docs.gitlab.com/api/container_registry): projects and groups by id
or URL-encoded path; `GET .../registry/repositories` → `[{id, name, path, project_id, location,
created_at}]`; `GET .../repositories/:id/tags` → `[{name, path, location}]`; `GET .../tags/:name`
→ `{name, path, location, revision, short_revision, digest, created_at, total_size}`;
`DELETE .../tags/:name`. Offset pagination with `page`/`per_page` (20 by default, at most 100)
and the `X-Page`, `X-Per-Page`, `X-Total`, `X-Total-Pages`, `X-Next-Page`, `X-Prev-Page` and
`Link` headers; errors as `{"message": "404 Tag Not Found"}`, `{"message": "401 Unauthorized"}`.
Tokens come as `PRIVATE-TOKEN`, `JOB-TOKEN` or `Authorization: Bearer`.

    gitlab_api(registry, projects={"group/app": 7})   fixture factory; .url is GitLab's base URL
"""

from __future__ import annotations

from datetime import datetime, timezone

from tests.support.fakeapi import FakeApi, Reply, Request, api_fixture, iso, page_url, paginate, reply


class FakeGitLab(FakeApi):
    api = "gitlab"
    _P = r"/api/v4/projects/(?P<project>[^/]+)"
    routes = [
        ("GET", _P, "project"),
        ("GET", r"/api/v4/groups/(?P<group>[^/]+)", "group"),
        ("GET", _P + r"/registry/repositories", "project_repositories"),
        ("GET", r"/api/v4/groups/(?P<group>[^/]+)/registry/repositories", "group_repositories"),
        ("GET", _P + r"/registry/repositories/(?P<rid>\d+)/tags", "list_tags"),
        ("GET", _P + r"/registry/repositories/(?P<rid>\d+)/tags/(?P<tag>[^/]+)", "tag_details"),
        ("DELETE", _P + r"/registry/repositories/(?P<rid>\d+)/tags/(?P<tag>[^/]+)", "delete_tag"),
    ]

    def __init__(self, registry, *, projects: dict[str, int], **kw):
        super().__init__(registry, **kw)
        self.projects = dict(projects)          # path -> id
        self.created: dict[str, datetime] = {}  # registry repository -> when first listed

    def authorized(self, req: Request) -> bool:
        sent = req.headers.get("PRIVATE-TOKEN") or req.headers.get("JOB-TOKEN") or self.bearer(req)
        return sent == self.token

    def unauthorized(self, req: Request) -> Reply:
        return reply(401, {"message": "401 Unauthorized"})

    def forbidden(self, req: Request) -> Reply:
        return reply(403, {"message": "403 Forbidden"})

    # -- helpers -----------------------------------------------------------------------------------------
    def _project(self, ref: str) -> tuple[str, int] | None:
        for path, pid in self.projects.items():
            if ref in (path, str(pid)):
                return path, pid
        return None

    def _repos(self, path: str, pid: int) -> list[dict]:
        out = []
        for name in self.catalog():
            if name == path or name.startswith(path + "/"):
                out.append({"id": self.id_of(("repo", name)), "name": name[len(path) + 1:], "path": name,
                            "project_id": pid, "location": f"{self.registry.host}/{name}",
                            "created_at": iso(self.created.setdefault(name, datetime.now(timezone.utc)))})
        return out

    def _repo(self, req: Request) -> str | None:
        found = self._project(req.groups["project"])
        if not found:
            return None
        return next((r["path"] for r in self._repos(*found) if str(r["id"]) == req.groups["rid"]), None)

    def _paged(self, req: Request, items: list) -> Reply:
        p = paginate(items, req.query, "per_page", 20, 100)
        headers = {"X-Page": str(p.page), "X-Per-Page": str(p.size), "X-Total": str(p.total),
                   "X-Total-Pages": str(p.pages), "X-Next-Page": str(p.next or ""),
                   "X-Prev-Page": str(p.page - 1 if p.page > 1 else "")}
        links = [f'<{page_url(req.url, p.next)}>; rel="next"'] if p.next else []
        links += [f'<{page_url(req.url, 1)}>; rel="first"', f'<{page_url(req.url, p.pages)}>; rel="last"']
        return reply(200, p.items, **headers, Link=", ".join(links))

    # -- routes ------------------------------------------------------------------------------------------
    def project(self, req: Request) -> Reply:
        found = self._project(req.groups["project"])
        if not found:
            return reply(404, {"message": "404 Project Not Found"})
        return reply(200, {"id": found[1], "path_with_namespace": found[0]})

    def group(self, req: Request) -> Reply:
        projects = [p for p in self.projects if p.startswith(req.groups["group"] + "/")]
        return reply(200, {"id": 1, "full_path": req.groups["group"]}) if projects else \
            reply(404, {"message": "404 Group Not Found"})

    def project_repositories(self, req: Request) -> Reply:
        found = self._project(req.groups["project"])
        if not found:
            return reply(404, {"message": "404 Project Not Found"})
        return self._paged(req, self._repos(*found))

    def group_repositories(self, req: Request) -> Reply:
        repos = [r for path, pid in self.projects.items() if path.startswith(req.groups["group"] + "/")
                 for r in self._repos(path, pid)]
        return self._paged(req, repos)

    def list_tags(self, req: Request) -> Reply:
        repo = self._repo(req)
        if repo is None:
            return reply(404, {"message": "404 Repository Not Found"})
        tags = [{"name": t, "path": f"{repo}:{t}", "location": f"{self.registry.host}/{repo}:{t}"}
                for t, _ in self.tags(repo)]
        out = self._paged(req, tags)
        if self.after_list:
            self.after_list(repo)
        return out

    def tag_details(self, req: Request) -> Reply:
        repo, tag = self._repo(req), req.groups["tag"]
        found = self.manifest(repo, tag) if repo else None
        if found is None:
            return reply(404, {"message": "404 Tag Not Found"})
        digest, _, doc = found
        config = (doc.get("config") or {}).get("digest", "")
        return reply(200, {"name": tag, "path": f"{repo}:{tag}", "location": f"{self.registry.host}/{repo}:{tag}",
                           "revision": config.split(":")[-1], "short_revision": config.split(":")[-1][:9],
                           "digest": digest, "created_at": iso(self.pushed(repo, digest)),
                           "total_size": self.size(doc)})

    def delete_tag(self, req: Request) -> Reply:
        repo = self._repo(req)
        if repo is None or not self.untag(repo, req.groups["tag"]):
            return reply(404, {"message": "404 Tag Not Found"})
        return reply(200, None)


gitlab_api = api_fixture(FakeGitLab)
