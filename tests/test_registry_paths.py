"""Repository and tag names go escaped into URL paths: a name httpx would normalise (`x/../app` is
sent as `app`) never reaches a request, and `?`, `#` and `%` are escaped instead of cutting the path
short. The real registry sits behind a recording front (tests/support/hostile.py), which shows the
path exactly as it was sent.
"""

from __future__ import annotations

import asyncio

import pytest

from tasks.common.errors import ManifestUnknown, RegistryError
from tasks.config.models import parse_config
from tasks.registry.distribution import RegistryClient, RetryPolicy
from testbed import push_image
from tests.support.hostile import Front
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)

ONCE = RetryPolicy(attempts=1)


def call(url: str, fn):
    async def go():
        async with RegistryClient(parse_config({"registry": {"url": url}}).registry, retry=ONCE) as client:
            return await fn(client)
    return asyncio.run(go())


@pytest.mark.parametrize("name", ["x/../app", "x/./app", "../app", "x//app", "app/", "/app", "", "a/..", "x\n/app"])
def test_a_repository_name_that_would_be_normalised_is_never_requested(registry, name):
    with Front(registry.url) as front:
        for method in ("list_tags", "head_manifest", "get_manifest", "delete_manifest", "delete_tag"):
            args = (name,) if method == "list_tags" else (name, "sha256:" + "0" * 64)
            with pytest.raises(RegistryError) as e:
                call(front.url, lambda c: getattr(c, method)(*args))

            assert str(e.value) == (f"registry {front.host}: repository name {name!r} cannot be requested as it is "
                                    "(an empty, '.' or '..' path segment, or a control character); not requested")
        assert front.seen == []


def test_a_tag_that_would_reach_another_manifest_is_never_requested(registry, unique_repo):
    with registry.client() as c:
        kept = str(push_image(c, unique_repo, "keep"))
    with Front(registry.url) as front:
        for ref in (f"../manifests/{kept}", "..", ".", "a/b", "v1\r\nX-Evil: 1"):
            with pytest.raises(RegistryError, match="is not one URL path segment; not requested"):
                call(front.url, lambda c: c.delete_tag(unique_repo, ref))
        assert front.seen == []
    with registry.client() as c:
        assert c.head(f"/v2/{unique_repo}/manifests/{kept}",
                      headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).status_code == 200


@pytest.mark.parametrize("ref, sent", [("v1?x=1", "v1%3Fx%3D1"), ("v1#frag", "v1%23frag"), ("100%", "100%25"),
                                       ("%2e%2e", "%252e%252e")])
def test_question_marks_hashes_and_percents_are_escaped_not_cut(registry, unique_repo, ref, sent):
    with Front(registry.url) as front:
        with pytest.raises(ManifestUnknown):
            call(front.url, lambda c: c.get_manifest(unique_repo, ref))

        assert [s.path for s in front.seen] == [f"/v2/{unique_repo}/manifests/{sent}"]


def test_valid_names_and_digests_go_as_they_are(registry, unique_repo):
    with registry.client() as c:
        digest = str(push_image(c, unique_repo, "v1.0_rc-1"))
    with Front(registry.url) as front:
        assert call(front.url, lambda c: c.head_manifest(unique_repo, "v1.0_rc-1")) == digest
        assert call(front.url, lambda c: c.head_manifest(unique_repo, digest)) == digest

        assert [s.path for s in front.seen] == [f"/v2/{unique_repo}/manifests/v1.0_rc-1",
                                                f"/v2/{unique_repo}/manifests/{digest}"]
