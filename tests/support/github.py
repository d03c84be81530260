"""A loopback GitHub Packages REST API (container packages) in front of a real Distribution (ghcr.io's part).

Speaks docs.github.com/rest/packages: `GET /orgs/{org}/packages?package_type=container` (and
`/users/{user}/...`) → `[{id, name, package_type, owner (an account, as GitHub writes one),
version_count, visibility, url, html_url, created_at, updated_at}]`; `GET .../packages/container/{package}/versions` → `[{id, name: "sha256:...", url,
package_html_url, created_at, updated_at, html_url, metadata: {package_type: "container",
container: {tags: [...]}}}]`, newest first, one version per manifest digest, the platform
manifests of an index included as untagged versions; `DELETE .../versions/{id}` → 204. A package
name inside a path is URL-encoded (`team%2Fapp`). Pagination: `page`/`per_page` (30 by default,
at most 100) and `Link` with rel `next` and `last`. Errors: `{"message": "Bad credentials",
"documentation_url": ...}` (401), `{"message": "Not Found", ...}` (404). Repositories are
`{owner}/{package}` in the registry behind, as on ghcr.io.

    github_api(registry, owner="acme")   fixture factory; .url is the API's base URL
"""

from __future__ import annotations

from tests.support.fakeapi import FakeApi, Reply, Request, api_fixture, iso, page_url, paginate, reply

DOCS = "https://docs.github.com/rest/packages/packages"


def _error(status: int, message: str) -> Reply:
    return reply(status, {"message": message, "documentation_url": DOCS, "status": str(status)})


class FakeGitHub(FakeApi):
    api = "github"
    _O = r"/(?:orgs|users)/(?P<owner>[^/]+)/packages"
    routes = [
        ("GET", _O, "list_packages"),
        ("GET", _O + r"/container/(?P<package>[^/]+)/versions", "list_versions"),
        ("DELETE", _O + r"/container/(?P<package>[^/]+)/versions/(?P<vid>\d+)", "delete_version"),
    ]

    def __init__(self, registry, *, owner: str, **kw):
        super().__init__(registry, **kw)
        self.owner = owner.lower()
        self.seen: dict[str, dict[str, None]] = {}   # versions stay versions once untagged, until deleted

    def authorized(self, req: Request) -> bool:
        return self.bearer(req) == self.token

    def unauthorized(self, req: Request) -> Reply:
        return _error(401, "Bad credentials")

    def forbidden(self, req: Request) -> Reply:
        return _error(403, "You must have admin permissions to delete this package version.")

    def _paged(self, req: Request, items: list) -> Reply:
        p = paginate(items, req.query, "per_page", 30, 100)
        links = [f'<{page_url(req.url, p.next)}>; rel="next"', f'<{page_url(req.url, p.pages)}>; rel="last"'] \
            if p.next else []
        return reply(200, p.items, **({"Link": ", ".join(links)} if links else {}))

    def _repo(self, req: Request) -> str:
        return f"{self.owner}/{req.groups['package']}"

    def _versions(self, repo: str) -> list[dict]:
        tags: dict[str, list[str]] = {}
        for tag, digest in self.tags(repo):
            tags.setdefault(digest, []).append(tag)
        digests = self.seen.setdefault(repo, {})
        for digest in list(tags):
            digests.setdefault(digest)
            found = self.manifest(repo, digest)
            for child in (found[2].get("manifests") or []) if found else []:
                digests.setdefault(child["digest"])   # platform manifests are versions of their own
        out = []
        for digest in list(digests):
            if digest not in tags and self.manifest(repo, digest) is None:
                del digests[digest]                    # deleted: no longer a version
                continue
            when = iso(self.pushed(repo, digest))
            vid = self.id_of(("version", repo, digest))
            out.append({"id": vid, "name": digest, "url": f"{self.url}/versions/{vid}", "created_at": when,
                        "updated_at": when, "package_html_url": f"https://github.com/{repo}",
                        "metadata": {"package_type": "container", "container": {"tags": sorted(tags.get(digest, []))}}})
        return sorted(out, key=lambda v: (v["updated_at"], v["id"]), reverse=True)

    def list_packages(self, req: Request) -> Reply:
        if req.query.get("package_type") != "container":
            return _error(400, "package_type must be container here")
        names = [r[len(self.owner) + 1:] for r in self.catalog() if r.startswith(self.owner + "/")]
        out = []
        for n in names:
            repo = f"{self.owner}/{n}"
            versions = self._versions(repo)
            when = min((v["created_at"] for v in versions), default=None) or iso(self.pushed(repo, "package"))
            out.append({"id": self.id_of(("package", n)), "name": n, "package_type": "container",
                        "owner": self._user(), "version_count": len(versions), "visibility": "private",
                        "url": f"{self.url}/packages/container/{n}",
                        "html_url": f"https://github.com/orgs/{self.owner}/packages/container/package/{n}",
                        "created_at": when, "updated_at": max((v["updated_at"] for v in versions), default=when)})
        return self._paged(req, out)

    def _user(self) -> dict:
        """The owner as GitHub writes an account (simple-user)."""
        api = f"{self.url}/users/{self.owner}"
        return {"login": self.owner, "id": self.id_of(("owner", self.owner)), "node_id": f"O_{self.owner}",
                "avatar_url": f"https://avatars.githubusercontent.com/u/{self.id_of(('owner', self.owner))}",
                "gravatar_id": "", "url": api, "html_url": f"https://github.com/{self.owner}",
                "followers_url": f"{api}/followers", "following_url": f"{api}/following{{/other_user}}",
                "gists_url": f"{api}/gists{{/gist_id}}", "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
                "subscriptions_url": f"{api}/subscriptions", "organizations_url": f"{api}/orgs",
                "repos_url": f"{api}/repos", "events_url": f"{api}/events{{/privacy}}",
                "received_events_url": f"{api}/received_events", "type": "Organization", "site_admin": False}

    def list_versions(self, req: Request) -> Reply:
        repo = self._repo(req)
        if repo not in self.catalog():
            return _error(404, "Package not found.")
        return self._paged(req, self._versions(repo))

    def delete_version(self, req: Request) -> Reply:
        repo = self._repo(req)
        found = [v for v in self._versions(repo) if str(v["id"]) == req.groups["vid"]] if repo in self.catalog() else []
        if not found:
            return _error(404, "Not Found")
        self.delete_digest(repo, found[0]["name"])
        return reply(204, None)


github_api = api_fixture(FakeGitHub)
