"""The common part of the loopback servers that speak registries' native APIs (GitLab, Harbor,
GitHub, Docker Hub), each in front of a real Docker Distribution.

No GitLab, Harbor, GitHub or Docker Hub can run here, so each fake speaks its API's documented
request and response shapes, pagination and error bodies (tests/support/<api>.py), and keeps no
images of its own: every answer is read from the real Distribution behind it, at request time,
and every deletion is made in it. The OCI side (manifests, configs, referrers) is that real
Distribution, so the Distribution API and the native one always agree, as on the real registry.

What Distribution does not record, the fake does: push and pull times (`set_times`; a digest
first seen is "pushed" then), and tag-only deletion, done as GitLab does it on a registry that
deletes by digest only (point the tag at a throw-away manifest, then delete that by digest).

Every request a fake receives and every answer it sends is checked against the vendor's published
API description (tests/support/contracts.py, tests/contracts/); the fixture fails the test at
teardown if anything disagreed, unless the test set `api.contract_strict = False` to look at
`api.contract.violations` itself. `api.mutate(req, reply) -> reply` changes an answer before it is
checked and sent (tests/test_contracts.py uses it to show a disagreement is caught).
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from testbed import LocalRegistry, MANIFEST_ACCEPT, push_image
from testbed.loopback import Handler, LoopbackServer
from tests.support.contracts import Recorder, contract

TOKEN = "native-api-token-do-not-print"


def iso(when: datetime | None) -> str | None:
    """A time as these APIs write one: 2026-01-02T03:04:05.000000Z."""
    return None if when is None else when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Request:
    method: str
    path: str                 # raw (still percent-encoded)
    query: dict[str, str]
    headers: Any
    body: Any                 # decoded JSON, or None
    url: str                  # the full URL it was sent to, for pagination links
    groups: dict[str, str]    # the route's named groups, percent-decoded once


Reply = tuple[int, Any, dict[str, str]]


def reply(status: int, body: Any = None, **headers: str) -> Reply:
    return status, body, headers


@dataclass
class Page:
    items: list
    page: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    @property
    def next(self) -> int | None:
        return self.page + 1 if self.page < self.pages else None


def paginate(items: list, q: dict[str, str], size_key: str, default: int, maximum: int) -> Page:
    size = max(1, min(int(q.get(size_key) or default), maximum))
    page = max(1, int(q.get("page") or 1))
    return Page(items[(page - 1) * size: page * size], page, size, len(items))


def page_url(url: str, page: int) -> str:
    """`url` with its `page` parameter set."""
    return str(httpx.URL(url).copy_set_param("page", str(page)))


class FakeApi(LoopbackServer):
    """A native registry API in front of `registry`. Subclasses list `routes` as (method, regex, name)."""

    routes: list[tuple[str, str, str]] = []
    api: str = ""                               # the description in tests/contracts/ it answers to

    def __init__(self, registry: LocalRegistry, *, token: str = TOKEN):
        self.registry, self.token = registry, token
        self.read_only = False                 # accepted credentials that may not delete (403)
        self.times: dict[tuple[str, str], dict[str, datetime | None]] = {}
        self.requests: list[tuple[str, str]] = []
        self.after_list: Callable[[str], None] | None = None   # runs after a tag listing page is built
        self._lock = threading.Lock()
        self._oci = registry.client()
        self._ids = itertools.count(1000)
        self._id_of: dict[Any, int] = {}
        self.contract = Recorder(contract(self.api))
        self.contract_strict = True
        self.mutate: Callable[[Request, Reply], Reply] | None = None

    def stop(self) -> None:
        super().stop()
        self._oci.close()

    # -- what the registry behind holds, now ---------------------------------------------------------
    def catalog(self) -> list[str]:
        return sorted(self._oci.get("/v2/_catalog?n=1000").json().get("repositories") or [])

    def tags(self, repo: str) -> list[tuple[str, str]]:
        """(tag, digest) of every tag of `repo`, by name."""
        r = self._oci.get(f"/v2/{repo}/tags/list?n=1000")
        out = []
        for tag in sorted(r.json().get("tags") or []) if r.status_code == 200 else []:
            h = self._oci.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
            if h.status_code == 200:
                out.append((tag, h.headers["docker-content-digest"]))
        return out

    def manifest(self, repo: str, ref: str) -> tuple[str, str, dict] | None:
        r = self._oci.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
        if r.status_code != 200:
            return None
        return r.headers["docker-content-digest"], r.headers["content-type"].split(";")[0], r.json()

    def size(self, doc: dict) -> int:
        return sum(int(d.get("size") or 0) for d in [doc.get("config") or {}, *(doc.get("layers") or [])])

    def delete_digest(self, repo: str, digest: str) -> bool:
        return self._oci.delete(f"/v2/{repo}/manifests/{digest}").status_code in (200, 202)

    def untag(self, repo: str, tag: str) -> bool:
        """Remove one tag on a registry that deletes by digest only, as GitLab does."""
        if tag not in dict(self.tags(repo)):
            return False
        dummy = push_image(self._oci, repo, tag, layers=[], config={"regsweep-dummy": uuid.uuid4().hex})
        return self.delete_digest(repo, dummy)

    def id_of(self, key: Any) -> int:
        with self._lock:
            if key not in self._id_of:
                self._id_of[key] = next(self._ids)
            return self._id_of[key]

    def set_times(self, repo: str, digest: str, *, pushed: datetime | None = None, pulled: datetime | None = None) -> None:
        with self._lock:
            self.times[(repo, digest)] = {"pushed": pushed, "pulled": pulled}

    def pushed(self, repo: str, digest: str) -> datetime | None:
        with self._lock:
            return self.times.setdefault((repo, digest), {"pushed": datetime.now(timezone.utc), "pulled": None})["pushed"]

    def pulled(self, repo: str, digest: str) -> datetime | None:
        return self.times.get((repo, digest), {}).get("pulled")

    # -- HTTP ------------------------------------------------------------------------------------------
    def authorized(self, req: Request) -> bool:
        raise NotImplementedError

    def unauthorized(self, req: Request) -> Reply:
        raise NotImplementedError

    def forbidden(self, req: Request) -> Reply:
        raise NotImplementedError

    def bearer(self, req: Request) -> str | None:
        auth = req.headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        return value if scheme.lower() in ("bearer", "token", "jwt") else None

    def basic(self, req: Request) -> tuple[str, str] | None:
        auth = req.headers.get("Authorization") or ""
        if not auth.lower().startswith("basic "):
            return None
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        return user, password

    def dispatch(self, req: Request) -> Reply:
        for method, rx, name in self.routes:
            m = re.fullmatch(rx, req.path)
            if m and method == req.method:
                req.groups = {k: unquote(v) for k, v in m.groupdict().items()}
                if name != "login" and not self.authorized(req):
                    return self.unauthorized(req)
                if req.method == "DELETE" and self.read_only:
                    return self.forbidden(req)
                return getattr(self, name)(req)
        return reply(404, {"message": "404 Not Found"})

    class handler(Handler):
        def _any(self):
            api: FakeApi = self.owner
            raw = self.read_body()
            url = urlsplit(self.path)
            with api._lock:
                api.requests.append((self.command, self.path))
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            query = parse_qs(url.query, keep_blank_values=True)
            req = Request(self.command, url.path, {k: v[-1] for k, v in query.items()}, self.headers,
                          body, f"{api.url}{self.path}", {})
            with api._lock:
                op = api.contract.request(self.command, url.path, query, self.headers, body if raw else None)
            status, payload, headers = api.dispatch(req)
            if api.mutate is not None:
                status, payload, headers = api.mutate(req, (status, payload, headers))
            with api._lock:
                api.contract.response(op, status, headers, payload)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.reply(status, data, {"Content-Type": "application/json", **headers})

        do_GET = do_HEAD = do_POST = do_DELETE = _any


def api_fixture(cls: type[FakeApi]):
    """A fixture for one fake: `make(registry, **options)` -> a started `cls`, stopped after the test.

    Assign it to the fixture's name in the fake's module (`gitlab_api = api_fixture(FakeGitLab)`)."""
    @pytest.fixture
    def start_fake_api():
        """`make(registry, **options)`: the fake API started on loopback in front of `registry`."""
        started: list[FakeApi] = []

        def make(registry: LocalRegistry, **options: Any) -> FakeApi:
            api = cls(registry, **options).start()
            started.append(api)
            return api

        yield make
        for api in started:
            api.stop()
        broken = [v for api in started if api.contract_strict for v in api.contract.violations]
        if broken:
            pytest.fail(f"{len(broken)} disagreement(s) with the vendor's API description "
                        "(tests/contracts/):\n" + "\n".join(dict.fromkeys(broken)), pytrace=False)
    return start_fake_api
