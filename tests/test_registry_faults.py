"""Failures while reading a real registry, through the loopback FaultProxy: transient errors are
retried and recovered from; anything that leaves the listing incomplete fails the source
(fail closed); odd manifests are recorded as kind `unknown` and never stop a scan."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from datetime import datetime, timezone

import pytest

from tasks.oci import manifest as oci
from tasks.config.models import RegsweepConfig, parse_config
from tasks.common.errors import RegistryError, RegistryUnreachable, SourceError
from tasks.oci.manifest import sha256_digest
from testbed import push_image, push_tags
from tasks.sources.blobcache import BlobCache
from tasks.registry.distribution import RegistryClient, RetryPolicy
from tasks.sources.registry import scan_registry
from tasks.snapshot.take import run_source
from tasks.store.store import Store
from tests.support.configs import config
from tests.support.faults import ServingProxy
from tests.support.registry import fault_proxy, unique_repo  # noqa: F401 (fixtures)

FAST = RetryPolicy(attempts=4, initial=0.01, maximum=0.05)


def scan(cfg: RegsweepConfig | dict, retry=FAST):
    """Scan the registry of `cfg` (parsed, or a tests/support/configs dict)."""
    cfg = parse_config(cfg) if isinstance(cfg, dict) else cfg
    return asyncio.run(scan_registry(cfg.registry, cfg.link, BlobCache(), retry=retry))


def test_503_and_429_then_recovery(fault_proxy, registry_client, unique_repo, tmp_path):
    digests = push_tags(registry_client, unique_repo, [f"v{i}" for i in range(10)], labels=lambda t: {"t": t})
    fault_proxy.inject(503, times=2, path=re.escape(f"/v2/{unique_repo}/tags/list"))
    fault_proxy.inject(429, times=3, method="GET", path="/manifests/")
    fault_proxy.inject(502, times=1, path="/blobs/")
    result, _ = scan(config(url=fault_proxy.url, repositories=[unique_repo]))
    assert {t["tag"]: t["digest"] for t in result.tags} == digests
    assert sorted(f[2] for f in fault_proxy.faulted) == ["429"] * 3 + ["502"] + ["503"] * 2
    assert fault_proxy.count("GET", "/tags/list") == 3


def test_annotations_with_build_time_and_revision_save_the_config_read(fault_proxy, registry_client, unique_repo, tmp_path):
    full = push_image(registry_client, unique_repo, "annotated", layers=[b"a"],
                      annotations={oci.ANN_CREATED: "2026-01-02T03:04:05Z", oci.ANN_REVISION: "abcdef0"})
    half = push_image(registry_client, unique_repo, "half", layers=[b"b"], annotations={oci.ANN_REVISION: "abcdef1"},
                      config={"created": "2026-02-02T00:00:00Z"})
    result, _ = scan(config(url=fault_proxy.url, repositories=[unique_repo]))
    m = {r["digest"]: r for r in result.manifests}
    assert m[full]["created"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc) and m[full]["revision"] == "abcdef0"
    assert m[half]["created"] == datetime(2026, 2, 2, tzinfo=timezone.utc)
    assert fault_proxy.count("GET", "/blobs/") == 1     # only the image whose build time is in its config


def test_retry_after_is_honoured(fault_proxy, registry_client, unique_repo, tmp_path):
    d = push_image(registry_client, unique_repo, "v1")
    fault_proxy.inject(429, times=1, path="/manifests/v1", retry_after="1")

    async def go():
        async with RegistryClient(parse_config(config(url=fault_proxy.url)).registry, retry=FAST) as c:
            started = time.monotonic()
            got = await c.head_manifest(unique_repo, "v1")
            return got, time.monotonic() - started

    got, waited = asyncio.run(go())
    assert got == d and waited >= 0.95   # the backoff alone would have waited at most 0.05 s


def test_dropped_connections_are_retried(fault_proxy, registry_client, unique_repo, tmp_path):
    d = push_image(registry_client, unique_repo, "v1")
    fault_proxy.inject(drop=True, times=2, path="/manifests/v1")
    result, _ = scan(config(url=fault_proxy.url, repositories=[unique_repo]))
    assert [(t["tag"], t["digest"]) for t in result.tags] == [("v1", d)]
    assert [f[2] for f in fault_proxy.faulted] == ["drop", "drop"]


def test_persistent_503_fails_after_bounded_attempts(fault_proxy, registry_client, unique_repo, tmp_path):
    push_image(registry_client, unique_repo, "v1")
    fault_proxy.inject(503, times=None, path="/manifests/v1")
    with pytest.raises(RegistryError) as e:
        scan(config(url=fault_proxy.url, repositories=[unique_repo]))
    assert e.value.status == 503 and f"{unique_repo}:v1" in str(e.value)
    assert fault_proxy.count("GET", "/manifests/v1") == FAST.attempts


def test_a_failed_tag_listing_fails_the_source_and_writes_no_table(fault_proxy, registry_client, unique_repo, tmp_path):
    push_image(registry_client, unique_repo + "-ok", "v1")
    push_image(registry_client, unique_repo + "-broken", "v1")
    fault_proxy.inject(500, times=None, path=re.escape(f"/v2/{unique_repo}-broken/tags/list"))
    cfg = parse_config(config(store=tmp_path / "store", url=fault_proxy.url,
                              repositories=[unique_repo + "-ok", unique_repo + "-broken"]))
    with pytest.raises(SourceError) as e:
        scan(cfg)
    assert f"{unique_repo}-broken" in str(e.value) and "500" in str(e.value)

    # Through the snapshot machinery: the source is failed and no partial table exists.
    store = Store(cfg.store)
    staging = store.snapshots.staging_dir("t1")
    status = run_source("registry", cfg, staging, datetime.now(timezone.utc))
    assert status.status == "failed" and f"{unique_repo}-broken" in status.error
    assert not store.fs.exists(f"{staging}/tags.parquet")


def test_a_failed_catalog_page_fails_the_source(fault_proxy, registry_client, unique_repo, tmp_path):
    push_image(registry_client, unique_repo, "v1")
    fault_proxy.inject(500, times=None, path="/v2/_catalog")
    with pytest.raises(RegistryError) as e:
        scan(config(url=fault_proxy.url, repositories=["t/*"]))
    assert "HTTP 500" in str(e.value)


def test_an_unreachable_registry_is_an_error_naming_its_host_and_cannot_connect(tmp_path):
    with socket.socket() as s:          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RegistryUnreachable) as e:
        scan(config(url=f"http://127.0.0.1:{port}", repositories=[]))
    assert f"registry 127.0.0.1:{port}" in str(e.value) and "cannot connect" in str(e.value)


# --- manifests a registry may hold that are not images -------------------------------------------

def test_unknown_and_malformed_manifests_are_kept_as_unknown(registry, registry_client, unique_repo, tmp_path, caplog):
    good = push_image(registry_client, unique_repo, "good")
    # Tags that exist upstream (so the listing names them), answered by the proxy with odd content.
    for tag in ("helm-ish", "broken", "schema1"):
        push_image(registry_client, unique_repo, tag, layers=[tag.encode()])
    unknown = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.example.thing.v1+json",
                          "blobs": []}).encode()
    broken = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": '
    schema1 = json.dumps({"schemaVersion": 1, "name": unique_repo, "tag": "schema1", "fsLayers": []}).encode()
    served = {
        f"/manifests/helm-ish$": ("application/vnd.example.thing.v1+json", unknown),
        f"/manifests/broken$": (oci.OCI_MANIFEST, broken),
        f"/manifests/schema1$": ("application/vnd.docker.distribution.manifest.v1+prettyjws", schema1),
    }
    with ServingProxy(registry.url, served) as proxy:
        with caplog.at_level("WARNING", logger="regsweep.registry"):
            result, _ = scan(config(url=proxy.url, repositories=[unique_repo]))
    tags = {t["tag"]: t for t in result.tags}
    assert set(tags) == {"good", "helm-ish", "broken", "schema1"} and not any(t["gone"] for t in tags.values())
    m = {r["digest"]: r for r in result.manifests}
    assert m[good]["kind"] == "image"
    assert m[sha256_digest(unknown)]["kind"] == "unknown"
    assert m[sha256_digest(unknown)]["media_type"] == "application/vnd.example.thing.v1+json"
    assert m[sha256_digest(unknown)]["size"] == len(unknown)
    assert m[sha256_digest(broken)]["kind"] == "unknown" and m[sha256_digest(broken)]["media_type"] == oci.OCI_MANIFEST
    assert m[sha256_digest(schema1)]["kind"] == "unknown"
    warned = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warned) == 1 and sha256_digest(broken) in warned[0] and unique_repo in warned[0]
