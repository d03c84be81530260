"""A registry (or a proxy in front of it) that sends what no well-behaved registry would: names
that leave their URL path, "digests" that are tags, a config that is a multi-megabyte layer, the
same tag twice, JSON with a key missing. Each is read by the real scan against a real Distribution
behind the loopback FaultProxy, which rewrites the answers; every test shows what the snapshot
says was refused, that the plan keeps the image (or, for a refused name, deletes nothing), and
that no request went to a path other than the intended one.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from tasks.common.errors import RegistryError
from tasks.config.models import parse_config
from tasks.oci.manifest import (MAX_BODY_BYTES, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, is_content_digest,
                                is_digest, matches_digest, sha256_digest)
from tasks.oci.reference import is_repository_name, is_tag_name
from tasks.registry.distribution import RetryPolicy
from tasks.sources.blobcache import CACHE_NAME, CACHE_SCHEMA, BlobCache
from tasks.sources.registry import scan_registry
from tasks.store.store import Store
from testbed import OCI_LAYER, push_blob, push_image
from testbed.push import put_manifest
from tests.support.rigs import make_rig
from tests.support.sweeps import make_plan, take_snapshot
from tests.test_evaluate import OLD as EVAL_OLD, Snap, config as eval_config, plan_of

FAST = RetryPolicy(attempts=2, initial=0.01, maximum=0.05)
OLD = datetime(2024, 1, 1, tzinfo=timezone.utc)
AMD, ARM = {"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64"}


def cfg_of(url: str, tmp_path, repositories: list[str], registry: dict | None = None):
    """Old, unlinked images are deleted unless something keeps them; only the registry is read."""
    return parse_config({
        "store": str(tmp_path / "store"),
        "registry": {"url": url, "repositories": repositories, "concurrency": 4, **(registry or {})},
        "cleanup": {"disableKubernetesBasedPolicy": True, "disableGitHistoryBasedPolicy": True,
                    "keepImagesBuiltWithinLastNHours": 2, "unlinkedImages": "delete"},
        "helm": {"enabled": False}})


def snapshot_and_plan(cfg) -> tuple[dict, dict, dict[tuple, dict]]:
    """(snapshot.json, plan.json, (repository, tag) -> plan row) of a snapshot and plan made as the flows make them."""
    store = Store(cfg.store)
    sid = take_snapshot(cfg)
    pid = make_plan(cfg, sid)
    rows = {(r["repository"], r["tag"], r["digest"]): r for r in store.plan_table(pid).to_pylist()}
    return store.snapshot_meta(sid), store.plan_meta(pid), rows


def manifests_of(cfg) -> dict[str, dict]:
    store = Store(cfg.store)
    sid = store.resolve_snapshot("latest")
    return {r["digest"]: r for r in store.snapshot_table(sid, "manifests").to_pylist()}


def serve(proxy, path_regex: str, doc) -> None:
    """Make the proxy answer every GET whose path matches with `doc` (JSON), instead of the registry."""
    proxy.inject(200, times=None, method="GET", path=path_regex, body=json.dumps(doc))


# --- the grammar, as plain functions ----------------------------------------------------------

def test_names_follow_the_distribution_grammar():
    for good in ("app", "team/app", "a.b/c_d/e__f/g-h/i---j", "0/1"):
        assert is_repository_name(good), good
    for bad in ("", "App", "x/../app", "../app", "app/", "/app", "a//b", "a/./b", "a_-b", "app\n", "ap p",
                "app?x", "app#x", "%2e%2e/app", 7, None):
        assert not is_repository_name(bad), bad
    for good in ("v1", "V1.0-rc_2", "_x", "a" * 128, "sha256-" + "a" * 64):
        assert is_tag_name(good), good
    # Python's \w would take Unicode letters and digits; the grammar's is ASCII
    for bad in ("", ".v1", "-v1", "a" * 129, "../manifests/sha256:" + "a" * 64, "v1\n", "v1/x", "v1?x", "v1#x",
                "v\u00e9", "\u0661", 7, None):
        assert not is_tag_name(bad), bad


def test_digests_are_sha256_or_sha512_with_hex_of_their_length():
    hex64, hex128 = "a" * 64, "b" * 128
    assert is_content_digest(f"sha256:{hex64}") and is_content_digest(f"sha512:{hex128}")
    for bad in ("v1.0", f"sha256:{hex64}\n", f"sha256:{hex64[:-1]}", f"sha512:{hex64}", f"sha384:{'c' * 96}",
                f"SHA256:{hex64}", f"sha256:{hex64.upper()}", f"../sha256:{hex64}", None, 7):
        assert not is_content_digest(bad), bad
    # `$` in a regex accepts a trailing newline, which would then reach a URL
    assert is_digest(f"sha256:{hex64}") and not is_digest(f"sha256:{hex64}\n")
    assert matches_digest(b"x", sha256_digest(b"x"))
    import hashlib
    assert matches_digest(b"x", "sha512:" + hashlib.sha512(b"x").hexdigest())
    assert not matches_digest(b"y", "sha512:" + hashlib.sha512(b"x").hexdigest())
    assert not matches_digest(b"x", "v1.0")


# --- duplicate tags: the keep-by-tag lookup -----------------------------------------------------

def test_a_tag_listed_on_two_digests_is_kept_on_both_when_referenced_by_tag():
    s = Snap()
    a = s.image("team/r", "prod", created=EVAL_OLD)
    b = s.image("team/r", created=EVAL_OLD)
    s.tag("team/r", "prod", b)         # TAGS [(r, prod, A), (r, prod, B)]: prod moved between two reads
    other = s.image("team/r", "old", created=EVAL_OLD)
    cfg = eval_config(cleanup={"unlinkedImages": "delete"})
    unreferenced = plan_of(s, cfg)
    assert set(unreferenced.loc[unreferenced.tag == "prod", "action"]) == {"delete"}   # nothing keeps them yet
    s.helm("registry.example.com/team/r:prod")
    plan = plan_of(s, cfg)
    rows = {(r.tag, r.digest): (r.action, list(r.reasons)) for r in plan.itertuples()}
    assert rows[("prod", a)][0] == rows[("prod", b)][0] == "keep"
    assert rows[("prod", b)][1] == rows[("prod", a)][1] == ["helm: prod/default/web revision 1 (deployed)"]
    assert rows[("old", other)][0] == "delete"


# --- the blob cache -------------------------------------------------------------------------------

def test_the_blob_cache_believes_only_bodies_that_hash_to_their_key():
    good = b'{"schemaVersion": 2}'
    forged = b'{"schemaVersion": 2, "manifests": []}'
    import hashlib
    sha512 = "sha512:" + hashlib.sha512(good).hexdigest()
    huge = b"x" * (MAX_BODY_BYTES + 1)
    table = pa.table({"digest": [sha256_digest(good), sha256_digest(good[:-1]), "v1.0", sha512, sha256_digest(huge)],
                      "media_type": [OCI_MANIFEST] * 5, "body": [good, forged, good, good, huge]}, schema=CACHE_SCHEMA)
    cache = BlobCache(table)
    assert sorted(cache.entries) == sorted([sha256_digest(good), sha512])
    assert cache.dropped == 3 and cache.loaded == 2 and cache.changed
    cache.put(sha256_digest(huge), "blob", huge)      # never stored above the cap
    cache.put("v1.0", OCI_MANIFEST, good)             # nor under a key that is no digest
    assert cache.get(sha256_digest(huge)) is None and cache.get("v1.0") is None
    assert BlobCache(BlobCache(table).table()).dropped == 0


