"""What a registry can make regsweep read, and for how long, is bounded (tasks/registry/transport.py
`Bounds`): manifests at 4 MiB (Distribution's own limit), blobs at what the caller asks for, JSON
pages and token answers at their caps, and every request at a total deadline, so a server that
drips its answer is abandoned. Each refusal is one line and fails closed.

Against the real registries behind a hostile front (tests/support/hostile.py).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tasks.common.errors import ManifestUnknown, RegistryUnreachable
from tasks.config.models import parse_config
from tasks.registry.distribution import RegistryClient
from tasks.registry.errors import ResponseTooLarge
from tasks.registry.transport import Bounds, RetryPolicy
from testbed import push_image
from tests.support.hostile import Front
from tests.support.registry import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support.registry import token_issuer, unique_repo  # noqa: F401 (fixtures)

ONCE = RetryPolicy(attempts=1)
MiB = 1 << 20


def config(url: str, **registry):
    return parse_config({"registry": {"url": url, "allowInsecureCredentials": True, **registry}}).registry


def call(cfg, fn, bounds: Bounds | None = None, retry: RetryPolicy = ONCE):
    async def go():
        async with RegistryClient(cfg, retry=retry, bounds=bounds) as client:
            return await fn(client)
    return asyncio.run(go())


def manifest_of(size: int) -> bytes:
    """A JSON manifest padded with an annotation to `size` bytes."""
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "annotations": {"pad": ""}}
    doc["annotations"]["pad"] = "x" * (size - len(json.dumps(doc)))
    return json.dumps(doc).encode()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_manifest_over_4_mib_is_not_read(registry, unique_repo, chunked):
    big = manifest_of(64 * MiB)
    with Front(registry.url) as front:
        rule = front.answer("GET", "/manifests/big$", 200, big, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                            chunked=chunked)

        with pytest.raises(ResponseTooLarge) as e:
            call(config(front.url), lambda c: c.get_manifest(unique_repo, "big"))

    assert str(e.value) == f"registry {front.host}/{unique_repo}:big: the manifest is larger than 4 MiB; not read"
    assert not e.value.retryable and e.value.limit == 4 * MiB
    if chunked:
        assert rule.sent < len(big)             # streamed, and abandoned past the cap


def test_a_manifest_of_exactly_4_mib_is_read(registry, unique_repo):
    body = manifest_of(4 * MiB)
    with Front(registry.url) as front:
        front.answer("GET", "/manifests/big$", 200, body, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                     chunked=True)

        digest, _, got = call(config(front.url), lambda c: c.get_manifest(unique_repo, "big"))

    assert got == body and digest.startswith("sha256:")


def test_a_blob_is_read_only_up_to_what_the_caller_asks(registry, unique_repo):
    with registry.client() as c:
        d = push_image(c, unique_repo, "v1", config={"config": {"Labels": {"a": "b"}}})
    config_desc = json.loads(d.body)["config"]
    size, digest = config_desc["size"], config_desc["digest"]

    assert len(call(config(registry.url), lambda c: c.get_blob(unique_repo, digest, max_bytes=size))) == size
    with pytest.raises(ResponseTooLarge) as e:
        call(config(registry.url), lambda c: c.get_blob(unique_repo, digest, max_bytes=size - 1))
    assert str(e.value) == (f"registry {registry.host}/{unique_repo}@{digest}: the blob is larger than "
                            f"{size - 1} bytes; not read")


def test_a_huge_blob_is_abandoned_at_the_default_cap(registry, unique_repo):
    digest = "sha256:" + "ab" * 32
    with Front(registry.url) as front:
        rule = front.answer("GET", "/blobs/", 200, b"\0" * (64 * MiB), chunked=True)

        with pytest.raises(ResponseTooLarge, match="the blob is larger than 4 MiB; not read"):
            call(config(front.url), lambda c: c.get_blob(unique_repo, digest))

    assert rule.sent < 64 * MiB


def test_a_json_page_over_its_cap_fails_the_listing(registry):
    page = {"repositories": [f"r{i:08d}" for i in range(20_000)]}      # about 260 kB
    with Front(registry.url) as front:
        front.answer("GET", "^/v2/_catalog", 200, page, chunked=True)

        with pytest.raises(ResponseTooLarge) as e:
            call(config(front.url), lambda c: c.list_repositories(), Bounds(page=64 * 1024))

    assert str(e.value) == f"registry {front.host}: the page of repositories is larger than 64 KiB; not read"


def test_a_token_answer_over_1_mib_is_not_read(token_registry, token_issuer, monkeypatch):
    monkeypatch.setenv("REGSWEEP_BOUNDS_PW", REGISTRY_PASSWORD)
    with Front(token_issuer.url) as realm, Front(token_registry.url) as front:
        realm.answer("GET", "^/token", 200, {"token": "t" * (2 * MiB)}, chunked=True)
        front.rewrite(None, "^/v2/", lambda ex: ex.set_header(
            "WWW-Authenticate", ex.header("WWW-Authenticate").replace(token_issuer.url, realm.url))
            if ex.header("WWW-Authenticate") else None)
        cfg = config(front.url, auth={"username": REGISTRY_USER, "password_env": "REGSWEEP_BOUNDS_PW"})

        with pytest.raises(ResponseTooLarge) as e:
            call(cfg, lambda c: c.ping())

    assert str(e.value) == (f"registry {front.host}: the answer of the token service or challenge is larger than 1 MiB; "
                            "not read")


def test_an_error_answer_with_a_huge_body_is_still_the_error_it_says(registry, unique_repo):
    with Front(registry.url) as front:
        front.answer("GET", "/manifests/gone$", 404, b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "gone"}]}'
                     + b" " * (64 * MiB), chunked=True)

        with pytest.raises(ManifestUnknown, match="HTTP 404"):
            call(config(front.url), lambda c: c.get_manifest(unique_repo, "gone"))


def test_a_server_dripping_its_answer_is_abandoned_at_the_deadline(registry):
    with Front(registry.url) as front:
        front.drip("GET", "^/v2/_catalog", every=0.2)      # a byte well within the 0.5 s read timeout, forever

        with pytest.raises(RegistryUnreachable) as e:
            call(config(front.url, timeout=0.5), lambda c: c.list_repositories())
        with pytest.raises(RegistryUnreachable, match="no complete answer within 2 s"):
            call(config(front.url, timeout=0.5), lambda c: c.list_repositories(),
                 retry=RetryPolicy(attempts=2, initial=0.01, maximum=0.02))

    assert str(e.value) == f"registry {front.host}: no complete answer within 2 s (4 × registry.timeout)"
    assert e.value.retryable
    assert front.count("GET", "_catalog") == 3             # once, then twice: each abandoned
