"""How the registry scan spreads its requests, through the loopback FaultProxy (real registry behind):
the concurrency bound is the registry's, not a repository's, so one large repository is read as
concurrently as many small ones; and a rescan makes one request per tag with the same result."""

from __future__ import annotations

import asyncio
import threading
import time

from tasks.sources.blobcache import BlobCache
from tasks.config.models import parse_config
from tasks.registry.distribution import RetryPolicy
from tasks.sources.registry import scan_registry
from testbed import push_repositories, push_tags
from tests.support.configs import config
from tests.support.registry import fault_proxy, unique_repo  # noqa: F401 (fixtures)

FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05)




def held_scan(proxy, cfg, path: str, expect: int):
    """Scan with every request matching `path` held at the proxy; returns how many were held at once
    (once `expect` are, and a moment more for any beyond the bound) and the finished result."""
    proxy.hold(method="GET", path=path)
    out: dict = {}

    def run() -> None:
        out["result"], out["client"] = asyncio.run(scan_registry(cfg.registry, cfg.link, BlobCache(), retry=FAST))

    worker = threading.Thread(target=run)
    worker.start()
    try:
        proxy.wait_held(expect)
        time.sleep(0.5)   # a request past the bound would arrive now; none may
        at_once = proxy.held
    finally:
        proxy.release()
        worker.join(timeout=120)
    return at_once, out["result"]


def test_one_repository_is_read_as_concurrently_as_the_registry_allows(fault_proxy, registry_client, unique_repo):
    tags = [f"t{i:03d}" for i in range(40)]
    push_tags(registry_client, unique_repo, tags, labels=lambda t: {"t": t})
    cfg = parse_config(config(url=fault_proxy.url, repositories=[unique_repo], registry={"concurrency": 6}))
    at_once, result = held_scan(fault_proxy, cfg, "/manifests/", 6)
    assert at_once == 6                    # the whole bound, inside one repository; never more
    assert sorted(t["tag"] for t in result.tags) == tags


def test_many_repositories_share_one_bound(fault_proxy, registry_client, unique_repo):
    repos = [f"{unique_repo}-{i}" for i in range(4)]
    push_repositories(registry_client, {r: [f"t{i}" for i in range(5)] for r in repos}, labels=lambda t: {"t": t})
    cfg = parse_config(config(url=fault_proxy.url, repositories=repos, registry={"concurrency": 3}))
    at_once, result = held_scan(fault_proxy, cfg, "/manifests/", 3)
    assert at_once == 3                    # not 3 per repository
    assert len(result.tags) == 20


def test_a_rescan_makes_one_request_per_tag_and_finds_the_same(fault_proxy, registry_client, unique_repo):
    tags = [f"t{i:03d}" for i in range(30)]
    push_tags(registry_client, unique_repo, tags, labels=lambda t: {"t": t})
    cfg = parse_config(config(url=fault_proxy.url, repositories=[unique_repo], registry={"concurrency": 8}))
    cache = BlobCache()
    cold, _ = asyncio.run(scan_registry(cfg.registry, cfg.link, cache, retry=FAST))
    before = len(fault_proxy.requests)
    warm, client = asyncio.run(scan_registry(cfg.registry, cfg.link, BlobCache(cache.table()), retry=FAST))
    sent = fault_proxy.requests[before:]
    per_tag = [(m, p) for m, p in sent if f"/v2/{unique_repo}/manifests/" in p]
    assert sorted(p.rsplit("/", 1)[1] for _, p in per_tag) == tags     # each tag exactly once
    # The rest: the ping, the tag list and one probe for the referrers API.
    rest = sorted(p.split("?")[0] for m, p in sent if (m, p) not in per_tag and "/referrers/" not in p)
    assert rest == ["/v2/", f"/v2/{unique_repo}/tags/list"]
    assert client.requests == len(sent)
    assert warm.tables().keys() == cold.tables().keys()
    for name, table in cold.tables().items():
        assert warm.tables()[name].equals(table), name
