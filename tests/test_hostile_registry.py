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
from tests.support.configs import config as _config
from tests.support.snapshots import EVALUATION, OLD as EVAL_OLD, Snap, plan_of
from tests.support.registry import fault_proxy, fault_proxy_factory, unique_repo  # noqa: F401 (fixtures)
from tests.support.harbor import harbor_api  # noqa: F401 (fixtures)

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
    rows = {(r["repository"], r["tag"], r["digest"]): r for r in store.plans.table(pid).to_pylist()}
    return store.snapshots.meta(sid), store.plans.meta(pid), rows


def manifests_of(cfg) -> dict[str, dict]:
    store = Store(cfg.store)
    sid = store.snapshots.resolve("latest")
    return {r["digest"]: r for r in store.snapshots.table(sid, "manifests").to_pylist()}


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
    cfg = _config(EVALUATION, cleanup={"unlinkedImages": "delete"})
    unreferenced = plan_of(s, cfg)
    assert set(unreferenced.loc[unreferenced.tag == "prod", "action"]) == {"delete"}   # nothing keeps them yet
    s.helm("registry.example.com/team/r:prod")
    plan = plan_of(s, cfg)
    rows = {(r.tag, r.digest): (r.action, list(r.reasons)) for r in plan.itertuples()}
    assert rows[("prod", a)][0] == rows[("prod", b)][0] == "keep"
    assert rows[("prod", b)][1] == rows[("prod", a)][1] == ["helm: prod/default/web revision 1 (deployed)"]
    assert rows[("old", other)][0] == "delete"


def test_a_tag_listed_twice_is_read_once(fault_proxy, registry_client, unique_repo, tmp_path):
    v1 = push_image(registry_client, unique_repo, "v1", config={"created": OLD})
    v2 = push_image(registry_client, unique_repo, "v2", layers=[b"two"], config={"created": OLD})
    serve(fault_proxy, rf"^/v2/{re.escape(unique_repo)}/tags/list", {"name": unique_repo, "tags": ["v1", "v2", "v1"]})
    cfg = cfg_of(fault_proxy.url, tmp_path, [unique_repo])
    result, _ = asyncio.run(scan_registry(cfg.registry, cfg.link, BlobCache(), retry=FAST))
    assert sorted((t["tag"], t["digest"]) for t in result.tags) == [("v1", v1), ("v2", v2)]
    assert fault_proxy.count("GET", r"/manifests/v1$") == 1


# --- names ----------------------------------------------------------------------------------

def test_a_repository_name_leaving_its_path_fails_the_source_and_is_never_requested(
        fault_proxy, registry_client, unique_repo, tmp_path):
    push_image(registry_client, unique_repo, "v1", config={"created": OLD})
    hostile = f"x/../{unique_repo}"   # httpx would send /v2/<unique_repo>/...: evaluated as one, deleted as the other
    serve(fault_proxy, r"^/v2/_catalog", {"repositories": [unique_repo, hostile]})
    cfg = cfg_of(fault_proxy.url, tmp_path, [])
    meta, plan, rows = snapshot_and_plan(cfg)
    source = meta["sources"]["registry"]
    assert not meta["complete"] and source["status"] == "failed"
    assert source["error"] == (f"registry {fault_proxy.host}: refused 1 name that breaks the distribution grammar, "
                               f"never requested: repository {hostile!r}")
    assert fault_proxy.count(None, r"/tags/list|/manifests/|/blobs/") == 0
    assert not plan["complete"] and plan["delete"] == 0 and not rows


def test_a_configured_repository_name_is_checked_too(fault_proxy, tmp_path):
    cfg = cfg_of(fault_proxy.url, tmp_path, ["team/app", "Team/App"])
    with pytest.raises(RegistryError, match=r"repository 'Team/App' \(registry.repositories\)"):
        asyncio.run(scan_registry(cfg.registry, cfg.link, BlobCache(), retry=FAST))
    assert fault_proxy.count(None, r"/tags/list|/manifests/") == 0


@pytest.mark.parametrize("hostile, quoted", [
    # a lone-tag DELETE of it would be a digest DELETE of the kept image (quoted cut short: it is long)
    ("../manifests/{kept}", "'../manifests/sha256:{kept_hex_start}...'"),
    (7, "7"),                     # not a string at all: pyarrow would have crashed the flow on it
    ("v1\n", "'v1\\n'"),
], ids=["path", "not-a-string", "newline"])
def test_a_tag_outside_the_grammar_fails_the_source_and_is_never_requested(
        hostile, quoted, fault_proxy, registry_client, unique_repo, tmp_path):
    kept = push_image(registry_client, unique_repo, "kept", config={"created": datetime.now(timezone.utc)})
    push_image(registry_client, unique_repo, "v1", layers=[b"old"], config={"created": OLD})
    if isinstance(hostile, str):
        hostile = hostile.format(kept=kept)
        quoted = quoted.format(kept_hex_start=kept.split(":")[1][:55])
    serve(fault_proxy, rf"^/v2/{re.escape(unique_repo)}/tags/list",
          {"name": unique_repo, "tags": ["kept", "v1", hostile]})
    cfg = cfg_of(fault_proxy.url, tmp_path, [unique_repo])
    meta, plan, rows = snapshot_and_plan(cfg)
    source = meta["sources"]["registry"]
    assert source["status"] == "failed" and not meta["complete"]
    if isinstance(hostile, str):
        assert source["error"] == (f"registry {fault_proxy.host}: refused 1 name that breaks the distribution grammar, "
                                   f"never requested: tag {quoted} of {unique_repo}")
    else:   # the transport refuses a page that is not a list of names before the scan sees it
        assert source["error"] == (f"registry {fault_proxy.host}/{unique_repo}: /v2/{unique_repo}/tags/list: "
                                   "the answer is not a JSON page of tags")
    assert "\n" not in source["error"]
    assert fault_proxy.count(None, "/manifests/|/blobs/") == 0    # not the hostile tag, nor any other
    assert plan["delete"] == 0 and not rows


def test_a_refused_tag_is_a_one_line_error_of_the_cli(run_cli, fault_proxy, registry_client, unique_repo, tmp_path):
    import yaml

    push_image(registry_client, unique_repo, "v1", config={"created": OLD})
    serve(fault_proxy, rf"^/v2/{re.escape(unique_repo)}/tags/list", {"name": unique_repo, "tags": ["v1", "../x"]})
    path = tmp_path / "regsweep.yaml"
    path.write_text(yaml.safe_dump({"store": "store", "registry": {"url": fault_proxy.url, "repositories": [unique_repo]}}))
    r = run_cli("snapshot", "--config", path, "--sources", "registry", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if "never requested" in line] == [
        f"regsweep: error: registry {fault_proxy.host}: refused 1 name that breaks the distribution grammar, "
        f"never requested: tag '../x' of {unique_repo}"]
    assert fault_proxy.count(None, "/manifests/") == 0


# --- digests inside manifests ------------------------------------------------------------------

def _index(platform, child: dict) -> dict:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [platform.descriptor(platform=AMD), child]}


HOSTILE_MANIFESTS = {
    # an index entry whose "digest" is the tag v1.0: read "by digest" it is the tag's manifest, and
    # a sweep would delete the tag v1.0 as a lone tag
    "child": (lambda plat: _index(plat, {"mediaType": OCI_MANIFEST, "digest": "v1.0", "size": 10, "platform": ARM}),
              "child digest 'v1.0' is not a digest"),
    # BuildKit's attestation entry naming its image by something that is not a digest
    "attestation": (lambda plat: _index(plat, {**plat.descriptor(), "platform": {"os": "unknown", "architecture": "unknown"},
                                               "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                                               "vnd.docker.reference.digest": "v1.0"}}),
                    "attestation subject digest 'v1.0' is not a digest"),
    # a signature whose subject is the tag v1.0
    "subject": (lambda plat: {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.dev.cosign",
                              "config": {"mediaType": OCI_EMPTY, "digest": sha256_digest(b"{}"), "size": 2},
                              "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": "v1.0", "size": 10}},
                "subject digest 'v1.0' is not a digest"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_a_manifest_naming_a_non_digest_is_kept_with_a_problem_and_the_name_never_read(
        case, fault_proxy, registry_client, unique_repo, tmp_path):
    build, problem = HOSTILE_MANIFESTS[case]
    plat = push_image(registry_client, unique_repo, None, layers=[b"platform"], config={"created": OLD})
    push_image(registry_client, unique_repo, "v1.0", layers=[b"tagged"], config={"created": OLD})
    push_image(registry_client, unique_repo, "junk", layers=[b"junk"], config={"created": OLD})
    body = json.dumps(build(plat)).encode()
    serve(fault_proxy, rf"^/v2/{re.escape(unique_repo)}/manifests/junk$", json.loads(body))
    cfg = cfg_of(fault_proxy.url, tmp_path, [unique_repo])
    meta, plan, rows = snapshot_and_plan(cfg)
    assert meta["complete"], meta["sources"]["registry"]
    junk = sha256_digest(body)   # what the proxy served, as the registry's own digest of it
    assert problem in manifests_of(cfg)[junk]["problem"]
    row = rows[(unique_repo, "junk", junk)]
    assert row["action"] == "keep" and any(problem in r for r in row["reasons"]), row
    store = Store(cfg.store)
    children = store.snapshots.table(store.snapshots.resolve("latest"), "children").to_pylist()
    assert "v1.0" not in {c["child_digest"] for c in children}
    assert (unique_repo, None, plat) not in rows   # the real platform stays with its kept index (no delete row)
    # the tag v1.0 is read once, as the tag it is, and decided on its own (old, unlinked: delete)
    assert fault_proxy.count("GET", r"/manifests/v1\.0$") == 1 and fault_proxy.count("HEAD", r"/manifests/v1\.0$") == 0
    assert fault_proxy.count(None, r"/blobs/v1\.0") == 0


# --- the config blob --------------------------------------------------------------------------

def _image_with_config(client, repo: str, tag: str, config: bytes, size: int) -> str:
    """An image whose config descriptor names `config` with `size` (Distribution checks only that the blob exists)."""
    digest = push_blob(client, repo, config)
    layer = push_blob(client, repo, b"layer of " + tag.encode())
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": OCI_CONFIG, "digest": digest, "size": size},
                       "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": 9 + len(tag)}]}).encode()
    return put_manifest(client, repo, tag, body, OCI_MANIFEST)


def test_a_config_larger_than_4_mib_is_not_read_and_the_image_is_kept(fault_proxy, registry_client, unique_repo, tmp_path):
    big = b'{"created": "2024-01-01T00:00:00Z", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    small = json.dumps({"created": "2024-01-01T00:00:00Z", "config": {"Labels": {"a": "b"}}}).encode()
    honest = _image_with_config(registry_client, unique_repo, "honest", big, len(big))
    liar = _image_with_config(registry_client, unique_repo, "liar", big, 100)      # understates the size
    shy = _image_with_config(registry_client, unique_repo, "shy", small, 10)       # small, but not what it says
    fine = _image_with_config(registry_client, unique_repo, "fine", small, len(small))
    cfg = cfg_of(fault_proxy.url, tmp_path, [unique_repo])
    meta, plan, rows = snapshot_and_plan(cfg)
    assert meta["complete"], meta["sources"]["registry"]
    manifests = manifests_of(cfg)
    big_digest, small_digest = sha256_digest(big), sha256_digest(small)
    assert manifests[honest]["problem"] == (f"config larger than 4 MiB: {big_digest} is {len(big):,} bytes by its "
                                            "descriptor; not read")
    assert manifests[liar]["problem"] == (f"config larger than its descriptor: {big_digest} is over 100 bytes, "
                                          "its descriptor's size; not read")
    assert manifests[shy]["problem"] == (f"config larger than its descriptor: {small_digest} is over 10 bytes, "
                                         "its descriptor's size; not read")
    assert manifests[fine]["problem"] is None
    for tag, d in (("honest", honest), ("liar", liar), ("shy", shy)):
        action, reasons = rows[(unique_repo, tag, d)]["action"], rows[(unique_repo, tag, d)]["reasons"]
        assert action == "keep" and any("config larger than" in r for r in reasons), (tag, reasons)
    assert rows[(unique_repo, "fine", fine)]["action"] == "delete"   # built 2024, unlinked: the policy deletes it
    # The honest descriptor is believed and the blob never fetched; the liar's read stops at the
    # 100 bytes its descriptor names (the transport streams and abandons the rest).
    assert fault_proxy.count("GET", f"/blobs/{big_digest}") == 1
    cache = Store(cfg.store).caches.read(CACHE_NAME)
    assert big_digest not in cache.column("digest").to_pylist()
    assert max(len(b) for b in cache.column("body").to_pylist()) <= MAX_BODY_BYTES


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


# --- native APIs: duplicate tags on two digests, JSON with a key missing ----------------------

@pytest.fixture
def harbor(request, tmp_path, monkeypatch, fault_proxy_factory):
    rig = make_rig("harbor", request, tmp_path, monkeypatch)
    return rig, fault_proxy_factory(rig.api_url)


def test_a_native_listing_naming_a_tag_on_two_digests_records_both(harbor, tmp_path):
    rig, proxy = harbor
    repo = rig.repository("app")
    a, b = rig.image(repo, ["prod"], created=OLD), rig.image(repo, ["next"], created=OLD)
    # prod moved from A to B between two pages of the listing: each page names it once
    serve(proxy, r"/artifacts\?", [{"digest": str(a), "tags": [{"name": "prod"}]},
                                   {"digest": str(b), "tags": [{"name": "prod"}, {"name": "next"}]}])
    cfg = parse_config({"store": str(tmp_path / "store"), "registry": rig.registry_config(rig.registry.url, [repo],
                                                                                         api_url=proxy.url)})
    result, _ = asyncio.run(scan_registry(cfg.registry, cfg.link, BlobCache(), retry=FAST))
    assert sorted((t["tag"], t["digest"]) for t in result.tags) == sorted([("next", b), ("prod", a), ("prod", b)])


def test_native_api_json_without_a_key_fails_the_source_not_the_flow(harbor, tmp_path):
    rig, proxy = harbor
    repo = rig.repository("app")
    d = rig.image(repo, ["v1"], created=OLD)
    serve(proxy, r"/artifacts\?", [{"digest": str(d), "tags": [{"id": 1}]}])    # a tag without its `name`
    cfg = parse_config({"store": str(tmp_path / "store"), "registry": rig.registry_config(rig.registry.url, [repo],
                                                                                         api_url=proxy.url),
                        "cleanup": {"disableKubernetesBasedPolicy": True, "disableGitHistoryBasedPolicy": True},
                        "helm": {"enabled": False}})
    meta, plan, rows = snapshot_and_plan(cfg)
    source = meta["sources"]["registry"]
    assert source["status"] == "failed" and not meta["complete"]
    assert source["error"] == f"registry {cfg.registry.host}: unexpected KeyError: 'name' (an answer regsweep could not read)"
    assert plan["delete"] == 0
