"""Every paginator (catalog, tags, referrers, the native APIs, ECR) follows a next page only on the
origin that served the page, never twice, and never past a page or item cap; a page that is not
a list of what it should list is an error. Each fails the listing closed with one line.

Against real registries and the fake native APIs behind a hostile front (tests/support/hostile.py),
with 127.0.0.2 as "another host" that records what it receives.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tasks.common.errors import RegistryError
from tasks.config.models import parse_config
from tasks.registry.backends import open_backend
from tasks.registry.distribution import RegistryClient
from tasks.registry.transport import Bounds, RetryPolicy
from tasks.sources.blobcache import BlobCache
from tasks.sources.registry import scan_registry
from testbed import push_image
from tests.support.fakeapi import TOKEN as API_TOKEN
from tests.support.hostile import Front, Recorder
from tests.support.registry import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support.rigs import make_rig
from tests.support.registry import token_issuer, unique_repo  # noqa: F401 (fixtures)
from tests.support.gitlab import gitlab_api  # noqa: F401 (fixtures)
from tests.support.github import github_api  # noqa: F401 (fixtures)
from tests.support.harbor import harbor_api  # noqa: F401 (fixtures)
from tests.support.dockerhub import dockerhub_api  # noqa: F401 (fixtures)
from tests.support.ecr import ecr_env, ecr_registry, moto_auth  # noqa: F401 (fixtures)

ONCE = RetryPolicy(attempts=1)
PW_ENV = "REGSWEEP_PAGES_TEST_PASSWORD"


@pytest.fixture
def password(monkeypatch):
    monkeypatch.setenv(PW_ENV, REGISTRY_PASSWORD)
    return {"username": REGISTRY_USER, "password_env": PW_ENV}


@pytest.fixture
def evil():
    """Another host: answers every request with a page naming something planted."""
    with Recorder(respond=lambda seen: (200, {"repositories": ["planted"], "tags": ["planted"], "manifests": [],
                                              "results": [{"name": "planted"}]}, {})) as server:
        yield server


def config(url: str, auth: dict | None = None, **registry):
    data = {"url": url, "allowInsecureCredentials": True, **registry}
    if auth:
        data["auth"] = auth
    return parse_config({"registry": data}).registry


def call(cfg, fn, bounds: Bounds | None = None):
    async def go():
        async with RegistryClient(cfg, retry=ONCE, bounds=bounds) as client:
            return await fn(client)
    return asyncio.run(go())


def on_backend(cfg, fn, bounds: Bounds | None = None):
    async def go():
        async with open_backend(cfg, retry=ONCE, bounds=bounds) as backend:
            return await fn(backend)
    return asyncio.run(go())


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and REGISTRY_PASSWORD not in text and API_TOKEN not in text and "planted" not in text
    return text


def link_to(url: str):
    """A rewrite that makes a page (not a 401 challenge) name `url` as the next page."""
    return lambda ex: ex.set_header("Link", f'<{url}>; rel="next"') if ex.status == 200 else None


# --------------------------------------------------------------------------- another origin


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_a_catalog_page_linking_to_another_host_fails_the_scan_and_sends_it_nothing(kind, request, password, evil,
                                                                                     token_issuer):
    reg = request.getfixturevalue(f"{kind}_registry")
    with reg.client() as c:
        push_image(c, f"pages/{kind}", "v1")
    with Front(reg.url) as front:
        front.rewrite("GET", r"^/v2/_catalog", link_to(f"{evil.url}/v2/_catalog?last=zzz&n=1000"))
        cfg = parse_config({"registry": {"url": front.url, "allowInsecureCredentials": True, "auth": password}})

        with pytest.raises(RegistryError) as e:
            asyncio.run(scan_registry(cfg.registry, cfg.link, BlobCache(), retry=ONCE))

    assert one_line(e.value) == (f"registry {front.host}: listing repositories: pagination leaves {front.url} for "
                                 f"{evil.url}; refused")
    assert evil.seen == [] and front.credentials_seen()


def test_a_tag_list_linking_to_another_host_fails(htpasswd_registry, password, evil):
    with htpasswd_registry.client() as c:
        push_image(c, "pages/tags", "v1")
    with Front(htpasswd_registry.url) as front:
        front.rewrite("GET", r"/tags/list", link_to(f"{evil.url}/v2/pages/tags/tags/list?last=v1"))

        with pytest.raises(RegistryError, match="listing tags: pagination leaves .* refused") as e:
            call(config(front.url, password), lambda c: c.list_tags("pages/tags"))

    assert one_line(e.value).startswith(f"registry {front.host}/pages/tags: ")
    assert evil.seen == []


def test_a_same_host_link_over_another_scheme_is_another_origin(registry, evil):
    with Front(registry.url) as front:
        https = front.url.replace("http://", "https://")
        front.rewrite("GET", r"^/v2/_catalog", link_to(f"{https}/v2/_catalog?last=a"))

        with pytest.raises(RegistryError, match=f"pagination leaves {front.url} for {https}; refused"):
            call(config(front.url), lambda c: c.list_repositories())

        assert front.count("GET", "_catalog") == 1


def test_referrers_linking_to_another_host_fail(registry, unique_repo, evil):
    with registry.client() as c:
        digest = str(push_image(c, unique_repo, "v1"))
    with Front(registry.url) as front:
        front.answer("GET", "/referrers/", 200, {"schemaVersion": 2, "manifests": []},
                     {"Link": f'<{evil.url}/v2/{unique_repo}/referrers/{digest}>; rel="next"'})

        with pytest.raises(RegistryError, match="listing referrers: pagination leaves") as e:
            call(config(front.url), lambda c: c.referrers(unique_repo, digest))

    one_line(e.value)
    assert evil.seen == []


@pytest.mark.parametrize("api", ["harbor", "dockerhub", "github", "gitlab"])
def test_a_native_api_page_naming_another_host_fails_and_sends_it_no_token(api, request, tmp_path, monkeypatch, evil):
    rig = make_rig(api, request, tmp_path, monkeypatch)
    repo = rig.repository("pages")
    for t in ("a", "b", "c"):
        rig.image(repo, [t])                    # pages of 2: a next page to rewrite
    with Front(rig.api_url) as front:
        if api == "dockerhub":
            def elsewhere(ex):
                doc = ex.json
                doc["next"] = doc["next"] and doc["next"].replace(rig.api_url, evil.url)
                ex.json = doc
        else:
            def elsewhere(ex):
                link = ex.header("Link")
                if link and 'rel="next"' in link:
                    ex.set_header("Link", link.replace(rig.api_url, evil.url))
                ex.headers = [(k, v) for k, v in ex.headers if k.lower() != "x-next-page"]
        front.rewrite("GET", rig.LIST_PATHS[api], elsewhere)
        cfg = parse_config({"registry": rig.registry_config(rig.registry.url, [repo], api_url=front.url)}).registry

        with pytest.raises(RegistryError, match=f"pagination leaves {front.url} for {evil.url}; refused") as e:
            on_backend(cfg, lambda b: b.list_tags(repo))

    one_line(e.value)
    assert evil.seen == [] and not evil.received(API_TOKEN)


# --------------------------------------------------------------------------- loops and caps


def test_a_referrers_page_linking_to_itself_stops_after_two_requests(registry, unique_repo):
    with registry.client() as c:
        digest = str(push_image(c, unique_repo, "v1"))
    with Front(registry.url) as front:
        path = f"/v2/{unique_repo}/referrers/{digest}"
        front.answer("GET", "/referrers/", 200, {"schemaVersion": 2, "manifests": []}, {"Link": f'<{path}>; rel="next"'})

        with pytest.raises(RegistryError) as e:
            call(config(front.url), lambda c: c.referrers(unique_repo, digest))

        assert one_line(e.value) == (f"registry {front.host}/{unique_repo}@{digest}: listing referrers: pagination "
                                     "loops (a page names one already read as the next)")
        assert front.count("GET", "/referrers/") == 2


def test_a_catalog_with_a_fresh_cursor_forever_stops_at_the_page_cap(registry):
    cursor = itertools.count()

    def forever(ex):
        ex.json = {"repositories": [f"r{next(cursor)}"]}
        ex.set_header("Link", f'</v2/_catalog?last=r{next(cursor)}&n=1000>; rel="next"')

    with Front(registry.url) as front:
        front.rewrite("GET", r"^/v2/_catalog", forever)

        with pytest.raises(RegistryError) as e:
            call(config(front.url), lambda c: c.list_repositories(), Bounds(max_pages=5))
        with pytest.raises(RegistryError, match="listing repositories: more than 12 items; stopped"):
            call(config(front.url), lambda c: c.list_repositories(), Bounds(max_items=12))

        assert one_line(e.value) == f"registry {front.host}: listing repositories: more than 5 pages; stopped"
        assert front.count("GET", "_catalog") == 5 + 13


@pytest.mark.parametrize("body, what", [
    ({"repositories": "abc"}, "repositories"),
    ({"repositories": [1, 2]}, "repositories"),
    ({"repositories": [["a"]]}, "repositories"),
    (["a", "b"], "repositories"),
])
def test_a_catalog_that_is_not_a_list_of_names_is_an_error(registry, body, what):
    with Front(registry.url) as front:
        front.answer("GET", r"^/v2/_catalog", 200, body)

        with pytest.raises(RegistryError) as e:
            call(config(front.url), lambda c: c.list_repositories())

    assert one_line(e.value) == f"registry {front.host}: /v2/_catalog: the answer is not a JSON page of {what}"


def test_an_empty_tag_list_is_still_an_empty_list(registry):
    with Front(registry.url) as front:
        front.answer("GET", r"/tags/list", 200, {"name": "x", "tags": None})

        assert call(config(front.url), lambda c: c.list_tags("x")) == []


def test_a_native_api_page_linking_to_itself_loops_no_further(request, tmp_path, monkeypatch):
    rig = make_rig("dockerhub", request, tmp_path, monkeypatch)
    repo = rig.repository("loop")
    for t in ("a", "b", "c"):
        rig.image(repo, [t])
    with Front(rig.api_url) as front:
        def same(ex):
            doc = ex.json
            doc["next"] = front.url + ex.path
            ex.json = doc
        front.rewrite("GET", rig.LIST_PATHS["dockerhub"], same)
        cfg = parse_config({"registry": rig.registry_config(rig.registry.url, [repo], api_url=front.url)}).registry

        with pytest.raises(RegistryError, match="listing items: pagination loops") as e:
            on_backend(cfg, lambda b: b.list_tags(repo))

        one_line(e.value)
        assert front.count("GET", rig.LIST_PATHS["dockerhub"]) == 2


def test_ecrs_paging_is_guarded_like_every_other(request, tmp_path, monkeypatch):
    rig = make_rig("ecr", request, tmp_path, monkeypatch)
    repo = rig.repository("pages")
    for t in ("a", "b", "c", "d", "e"):
        rig.image(repo, [t])                    # pages of 2: three pages
    cfg = parse_config({"registry": rig.registry_config(rig.registry.url, [repo])}).registry

    assert len(on_backend(cfg, lambda b: b.list_tags(repo))) == 5
    with pytest.raises(RegistryError) as e:
        on_backend(cfg, lambda b: b.list_tags(repo), Bounds(max_pages=2))
    assert one_line(e.value) == (f"registry {rig.registry.host}/{repo}: listing ECR describe_images: more than 2 pages; "
                                 "stopped")

    with Front(rig.api_url) as front:
        first: dict[str, str] = {}

        def same_token(ex):   # every page names the first page's token as the next: a cycle
            doc = ex.json
            if "imageDetails" in doc and doc.get("nextToken"):
                doc["nextToken"] = first.setdefault("token", doc["nextToken"])
                ex.json = doc
        front.rewrite("POST", "^/", same_token)
        cfg = parse_config({"registry": rig.registry_config(rig.registry.url, [repo], api_url=front.url)}).registry

        with pytest.raises(RegistryError, match="listing ECR describe_images: pagination loops"):
            on_backend(cfg, lambda b: b.list_tags(repo))

        assert front.count("POST") == 2
