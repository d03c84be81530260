"""The registry source against a real Docker Distribution 2.8 registry on loopback.

Images are pushed through the registry's HTTP API (testbed/); regsweep reads them
back with its own client. Nothing in httpx is patched: races (a tag re-pointed or deleted
between listing and reading) are staged by the scan's `after_listing` hook, which runs after
every tag list is in and before any tag is read.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from tasks.oci import manifest as oci
from tasks.config.models import RegsweepConfig, parse_config
from tasks.common.errors import ManifestUnknown, UnsupportedOperation
from testbed import ImageSpec, push_artifact, push_image, push_images, push_index, push_tags, tag_manifest
from tasks.sources.blobcache import CACHE_NAME, BlobCache
from tasks.registry.distribution import RegistryClient, RetryPolicy
from tasks.sources.registry import extract, scan_registry
from tasks.store.schemas import SOURCE_TABLES
from tasks.store.store import Store
from tests.support.configs import config
from tests.support.registry import fresh_registry, unique_repo  # noqa: F401 (fixtures)

FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05)
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
PATTERN = "^sha-(?P<commit>[0-9a-f]{7,40})$"


LINK = {"link": {"tagPatterns": [PATTERN]}}


def scan(cfg: RegsweepConfig | dict, cache=None, **kw):
    """Scan the registry of `cfg` (parsed, or a tests/support/configs dict): its tables and client."""
    cfg = parse_config(cfg) if isinstance(cfg, dict) else cfg
    result, client = asyncio.run(scan_registry(cfg.registry, cfg.link, cache if cache is not None else BlobCache(),
                                                 retry=FAST, **kw))
    return result.tables(), client


def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def by(table: pa.Table, key: str) -> dict:
    return {r[key]: r for r in table.to_pylist()}


async def _client_call(reg, fn, **cfg):
    c = parse_config({"registry": {"url": reg.url, **cfg}}).registry
    async with RegistryClient(c, retry=FAST) as client:
        return await fn(client), client


def call(reg, fn, **cfg):
    return asyncio.run(_client_call(reg, fn, **cfg))


# --- listing ----------------------------------------------------------------------------------

def test_catalog_follows_pages_past_the_registry_page_cap(fresh_registry, tmp_path):
    # A registry capping pages at 50 refuses n=1000 (PAGINATION_NUMBER_INVALID): the client must fall
    # back to the registry's page size and follow rel="next" through 130 repositories.
    reg = fresh_registry(extra={"catalog": {"maxentries": 50}})
    with reg.client() as c:
        push_images(c, [ImageSpec(f"team{i % 2}/app{i:03d}", "v1") for i in range(130)], workers=8)
    names, _ = call(reg, lambda cl: cl.list_repositories())
    assert len(names) == 130 and len(set(names)) == 130
    assert "team0/app000" in names and "team1/app129" in names

    # Repository globs select from the whole catalog, not just the first page.
    tables, _ = scan(config(LINK, url=reg.url, repositories=["team1/app1*"]))
    repos = {r["repository"] for r in rows(tables["tags"])}
    assert repos == {f"team1/app{i:03d}" for i in range(100, 130) if i % 2 == 1}


def test_repository_with_more_than_1000_tags(registry, registry_client, unique_repo, tmp_path):
    tags = [f"build-{i:04d}" for i in range(1001)]
    pushed = push_tags(registry_client, unique_repo, tags, distinct=False, workers=8)
    tables, _ = scan(config(LINK, url=registry.url, repositories=[unique_repo]))
    t = rows(tables["tags"])
    assert sorted(r["tag"] for r in t) == sorted(tags)
    assert {r["digest"] for r in t} == {pushed[tags[0]]}
    assert not any(r["gone"] for r in t)
    assert len(rows(tables["manifests"])) == 1  # one image, read once however many tags name it


def test_only_literal_repositories_need_no_catalog(registry, registry_client, unique_repo, tmp_path):
    push_image(registry_client, unique_repo, "v1")
    tables, client = scan(config(LINK, url=registry.url, repositories=[unique_repo, unique_repo + "-never-pushed"]))
    assert [(r["repository"], r["tag"]) for r in rows(tables["tags"])] == [(unique_repo, "v1")]
    # ping, tags/list × 2, manifest, config, one referrers probe: no catalog request at all
    assert client.requests == 6


# --- what a tag says -----------------------------------------------------------------------------

def test_oci_index_records_platform_children_sizes_and_build_facts(registry, registry_client, unique_repo, tmp_path):
    c = registry_client
    kids = []
    for arch in ("amd64", "arm64"):
        kid = push_image(c, unique_repo, None, layers=[f"layer {arch}".encode()],
                         config={"architecture": arch, "created": f"2026-11-2{1 if arch == 'amd64' else 2}T10:00:00Z",
                                 "config": {"Labels": {oci.ANN_REVISION: "A1B2C3D4E5F6"}}})
        kids.append((kid, {"os": "linux", "architecture": arch, **({"variant": "v8"} if arch == "arm64" else {})}))
    index = push_index(c, unique_repo, "sha-0123456789", kids)
    tables, _ = scan(config(LINK, url=registry.url, repositories=[unique_repo]))

    m = by(tables["manifests"], "digest")
    assert m[index]["kind"] == "index" and m[index]["media_type"] == oci.OCI_INDEX
    assert {m[k]["kind"] for k, _ in kids} == {"image"}
    child_sizes = []
    for kid, _ in kids:
        doc = json.loads(kid.body)
        expected = kid.size + doc["config"]["size"] + sum(layer["size"] for layer in doc["layers"])
        assert m[kid]["size"] == expected
        child_sizes.append(expected)
    assert m[index]["size"] == index.size + sum(child_sizes)
    # An index without its own annotations takes the newest child's build time and the children's revision.
    assert m[index]["created"] == datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
    assert m[index]["revision"] == "A1B2C3D4E5F6"

    ch = sorted((r["child_digest"], r["platform"]) for r in rows(tables["children"]) if r["index_digest"] == index)
    assert ch == sorted([(kids[0][0], "linux/amd64"), (kids[1][0], "linux/arm64/v8")])
    links = {(r["digest"], r["commit"], r["source"]) for r in rows(tables["links"])}
    assert (index, "a1b2c3d4e5f6", "label") in links          # shas compared in lower case
    assert (index, "0123456789", "tag-pattern") in links
    assert (kids[0][0], "a1b2c3d4e5f6", "label") in links


def test_docker_v2_manifest_and_untrusted_build_time(registry, registry_client, unique_repo, tmp_path):
    c = registry_client
    old = push_image(c, unique_repo, "reproducible", media_type="docker",
                     config={"created": "1970-01-01T00:00:01Z", "config": {"Labels": {oci.ANN_REVISION: "feedbeef"}}})
    new = push_image(c, unique_repo, "fresh", media_type="docker", layers=[b"x", b"y"],
                     config={"created": "2026-11-28T23:00:00.123456789Z"},
                     annotations={oci.ANN_REVISION: "cafe1234"})
    tables, _ = scan(config(LINK, url=registry.url, repositories=[unique_repo]))
    m = by(tables["manifests"], "digest")
    assert m[old]["media_type"] == oci.DOCKER_MANIFEST and m[old]["kind"] == "image"
    assert m[old]["created"] is None                         # 1970 is a reproducible-build stamp, not a time
    assert m[new]["created"] == datetime(2026, 11, 28, 23, 0, 0, 123456, tzinfo=timezone.utc)
    links = {(r["digest"], r["commit"], r["source"]) for r in rows(tables["links"])}
    assert (old, "feedbeef", "label") in links and (new, "cafe1234", "annotation") in links


def test_annotation_build_time_before_2013_falls_back_to_the_config(registry, registry_client, unique_repo, tmp_path):
    d = push_image(registry_client, unique_repo, "v1", config={"created": "2025-05-05T05:05:05Z"},
                   annotations={oci.ANN_CREATED: "1980-01-01T00:00:00Z"})
    tables, _ = scan(config(LINK, url=registry.url, repositories=[unique_repo]))
    assert by(tables["manifests"], "digest")[d]["created"] == datetime(2025, 5, 5, 5, 5, 5, tzinfo=timezone.utc)


def test_tag_patterns_link_one_digest_to_several_commits(registry, registry_client, unique_repo, tmp_path):
    d = push_image(registry_client, unique_repo, "sha-aaaaaaa")
    tag_manifest(registry_client, unique_repo, d, "sha-bbbbbbbbbb")
    tag_manifest(registry_client, unique_repo, d, "latest")
    tag_manifest(registry_client, unique_repo, d, "sha-NOTHEX1")
    tables, _ = scan(config(LINK, url=registry.url, repositories=[unique_repo]))
    assert {(r["digest"], r["commit"], r["source"]) for r in rows(tables["links"])} == {
        (d, "aaaaaaa", "tag-pattern"), (d, "bbbbbbbbbb", "tag-pattern")}


def test_referrers_through_the_fallback_tag(registry, registry_client, unique_repo, tmp_path):
    c = registry_client
    image = push_image(c, unique_repo, "v1")
    sig = push_artifact(c, unique_repo, subject=image, artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json")
    sbom = push_artifact(c, unique_repo, subject=image, artifact_type="application/spdx+json")
    tables, client = scan(config(LINK, url=registry.url, repositories=[unique_repo]))
    assert client.referrers_supported is False                 # Distribution 2.8: detected, asked once

    fallback = oci.fallback_tag(image)
    t = by(tables["tags"], "tag")
    assert set(t) == {"v1", fallback}
    m = by(tables["manifests"], "digest")
    fb = m[t[fallback]["digest"]]
    assert fb["kind"] == "referrers-index" and fb["subject"] == image
    for art, atype in ((sig, "application/vnd.dev.cosign.artifact.sig.v1+json"), (sbom, "application/spdx+json")):
        assert m[art]["kind"] == "artifact" and m[art]["subject"] == image and m[art]["artifact_type"] == atype
    assert m[image]["kind"] == "image" and m[image]["subject"] is None
    # The fallback tag is not an image: no tag-pattern link, no children edges of its own.
    assert not any(r["index_digest"] == fb["digest"] for r in rows(tables["children"]))


def test_referrers_api_absence_is_detected_once_per_client(registry, registry_client, unique_repo):
    image = push_image(registry_client, unique_repo, "v1")

    async def twice(cl):
        return [await cl.referrers(unique_repo, image), await cl.referrers(unique_repo, image)]

    answers, client = call(registry, twice)
    assert answers == [None, None]
    assert client.requests == 1


# --- races and failures while reading -------------------------------------------------------------

def test_tag_repointed_between_listing_and_reading(registry, registry_client, unique_repo, tmp_path):
    c = registry_client
    first = push_image(c, unique_repo, "moving", config={"config": {"Labels": {oci.ANN_REVISION: "1111111"}}})
    second = push_image(c, unique_repo, None, config={"config": {"Labels": {oci.ANN_REVISION: "2222222"}}})
    cfg = config(LINK, url=registry.url, repositories=[unique_repo])

    def repoint(work):
        assert (unique_repo, "moving") in work
        tag_manifest(c, unique_repo, second, "moving")

    tables, _ = scan(cfg, after_listing=repoint)
    assert rows(tables["tags"]) == [{"repository": unique_repo, "tag": "moving", "digest": second, "gone": False}]
    m = by(tables["manifests"], "digest")
    assert set(m) == {second} and m[second]["revision"] == "2222222"   # digest and body from one read

    # With a warm cache the tag is resolved by HEAD, then read by digest: still consistent.
    cache = BlobCache()
    scan(cfg, cache=cache)
    warm = BlobCache(cache.table())
    tables, _ = scan(cfg, cache=warm, after_listing=lambda work: tag_manifest(c, unique_repo, first, "moving"))
    assert rows(tables["tags"])[0]["digest"] == first
    assert by(tables["manifests"], "digest")[first]["revision"] == "1111111"


def test_tag_deleted_between_listing_and_reading_is_gone_not_fatal(registry, registry_client, unique_repo, tmp_path):
    c = registry_client
    doomed = push_image(c, unique_repo, "doomed", layers=[b"doomed"])
    kept = push_image(c, unique_repo, "kept")

    def delete(work):
        assert c.delete(f"/v2/{unique_repo}/manifests/{doomed}").status_code == 202

    tables, _ = scan(config(LINK, url=registry.url, repositories=[unique_repo]), after_listing=delete)
    t = by(tables["tags"], "tag")
    assert t["doomed"] == {"repository": unique_repo, "tag": "doomed", "digest": None, "gone": True}
    assert t["kept"]["digest"] == kept and not t["kept"]["gone"]
    assert set(by(tables["manifests"], "digest")) == {kept}


# --- the content-addressed cache --------------------------------------------------------------------

def _access_lines(reg) -> list[str]:
    return [line for line in reg.logs().splitlines() if '"HEAD /v2/' in line or '"GET /v2/' in line]


def test_rescan_of_an_unchanged_registry_costs_one_head_per_tag(fresh_registry, tmp_path):
    reg = fresh_registry(extra={"log": {"accesslog": {"disabled": False}}})
    with reg.client() as c:
        tags = [f"sha-{i:07x}" for i in range(40)]
        push_tags(c, "app/api", tags, labels=lambda t: {"build": t})   # a config of its own per tag
        kids = [(push_image(c, "app/web", None, config={"architecture": a}), {"os": "linux", "architecture": a})
                for a in ("amd64", "arm64")]
        index = push_index(c, "app/web", "v1", kids)
        push_artifact(c, "app/web", subject=index, artifact_type="application/vnd.dev.sig")
    cfg = parse_config(config(LINK, store=tmp_path / "store", url=reg.url, repositories=[]))
    store = Store(cfg.store)

    before = len(_access_lines(reg))
    cold = extract(cfg, store, NOW)
    cold_requests = len(_access_lines(reg)) - before
    cached = store.caches.read(CACHE_NAME)
    assert cached is not None and cached.num_rows >= 40 + 40 + 4  # manifests and configs by digest

    before = len(_access_lines(reg))
    warm = extract(cfg, store, NOW)
    warm_lines = _access_lines(reg)[before:]
    n_tags = cold["tags"].num_rows                     # 40 + index tag + fallback tag
    assert n_tags == 42
    heads = [line for line in warm_lines if '"HEAD /v2/' in line]
    assert len(heads) == n_tags
    # Everything else is the ping, the catalog, one tags/list per repository and one probe finding
    # that this registry has no referrers API: no manifest or blob is read again.
    others = sorted(line.split('"')[1] for line in warm_lines if '"HEAD /v2/' not in line)
    probes = [o for o in others if "/referrers/" in o]
    assert len(probes) == 1
    assert [o for o in others if o not in probes] == [
        "GET /v2/ HTTP/1.1", "GET /v2/_catalog?n=1000 HTTP/1.1",
        "GET /v2/app/api/tags/list?n=1000 HTTP/1.1", "GET /v2/app/web/tags/list?n=1000 HTTP/1.1"]
    assert cold_requests > 2 * n_tags
    for name in SOURCE_TABLES["registry"]:
        assert warm[name].equals(cold[name]), name


def test_cache_survives_garbage_and_tables_match_the_schema(registry, registry_client, unique_repo, tmp_path):
    push_image(registry_client, unique_repo, "v1")
    cfg = parse_config(config(LINK, store=tmp_path / "store", url=registry.url, repositories=[unique_repo]))
    store = Store(cfg.store)
    store.write_table(store.path("cache", f"{CACHE_NAME}.parquet"), pa.table({"x": [1]}))  # not our schema
    tables = extract(cfg, store, NOW)
    for name, schema in SOURCE_TABLES["registry"].items():
        assert tables[name].schema.equals(schema), name
    assert store.caches.read(CACHE_NAME).column_names == ["digest", "media_type", "body"]


# --- the client API the sweep relies on --------------------------------------------------------------

def test_head_and_get_manifest(registry, registry_client, unique_repo):
    d = push_image(registry_client, unique_repo, "v1", media_type="docker")

    async def go(cl):
        got = await cl.get_manifest(unique_repo, "v1")
        by_digest = await cl.get_manifest(unique_repo, d)
        with pytest.raises(ManifestUnknown) as e:
            await cl.get_manifest(unique_repo, "nope")
        return got, by_digest, await cl.head_manifest(unique_repo, "v1"), await cl.head_manifest(unique_repo, "nope"), e.value

    (got, by_digest, head, missing, err), _ = call(registry, go)
    assert got == (d, oci.DOCKER_MANIFEST, d.body) == by_digest
    assert head == d and missing is None
    assert f"{registry.host}/{unique_repo}:nope" in str(err) and "404" in str(err)


def test_delete_by_digest_and_tag_delete_refused_by_distribution_2_8(registry, registry_client, unique_repo):
    d = push_image(registry_client, unique_repo, "v1")
    tag_manifest(registry_client, unique_repo, d, "v2")

    async def go(cl):
        out = {}
        with pytest.raises(UnsupportedOperation) as e1:
            await cl.delete_tag(unique_repo, "v1")
        n = cl.requests
        with pytest.raises(UnsupportedOperation):
            await cl.delete_tag(unique_repo, "v2")      # remembered: no second request
        out["asked_again"] = cl.requests != n
        out["still_there"] = await cl.head_manifest(unique_repo, "v1")
        out["deleted"] = await cl.delete_manifest(unique_repo, d)
        out["again"] = await cl.delete_manifest(unique_repo, d)
        out["after"] = await cl.head_manifest(unique_repo, "v2")
        out["e1"] = str(e1.value)
        return out

    out, client = call(registry, go)
    assert client.tag_delete_supported is False and out["asked_again"] is False
    assert out["still_there"] == d                      # the refused tag delete removed nothing
    assert out["deleted"] is True and out["again"] is False and out["after"] is None
    assert "DIGEST_INVALID" in out["e1"] and f"{unique_repo}:v1" in out["e1"]


def test_delete_disabled_registry_is_unsupported(fresh_registry):
    reg = fresh_registry(delete_enabled=False)
    with reg.client() as c:
        d = push_image(c, "x/y", "v1")

    async def go(cl):
        with pytest.raises(UnsupportedOperation) as e:
            await cl.delete_manifest("x/y", d)
        return e.value

    err, _ = call(reg, go)
    assert err.status == 405 and "x/y@" in str(err)


@pytest.mark.unit
def test_repository_globs_stay_within_a_path_segment():
    from tasks.sources.registry import repository_globs

    rx = repository_globs(["team/*", "ops/**", "app?", "lib/[!x]*"])
    picked = [n for n in ("team/api", "team/api/cache", "ops/a/b/c", "ops", "app1", "app12", "lib/y1", "lib/x1")
              if rx.fullmatch(n)]
    assert picked == ["team/api", "ops/a/b/c", "app1", "lib/y1"]
