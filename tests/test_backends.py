"""Every registry backend through the same tests (tests/support/rigs.py): listing with paging, a tag
deleted between listing and reading, wrong credentials, rate limiting, and a sweep that deletes
exactly what was planned.

ECR runs against moto's ECR API; GitLab, Harbor, GitHub Packages and Docker Hub against loopback
servers that speak their documented APIs (tests/support/<api>.py). Every rig's OCI side is a real
Docker Distribution, and so is the `distribution` rig itself.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest
import yaml

from tasks.sources.blobcache import BlobCache
from tasks.config.models import parse_config
from tasks.registry.distribution import RetryPolicy
from tasks.sources.registry import scan_registry
from tasks.store.store import Store
from tasks.common.units import utcnow
from testbed import LocalRegistry, push_image
from tests.support.rigs import API_TOKEN, TOKEN_ENV
from tests.support.sweeps import edit_plan, make_plan, take_snapshot
from tests.support.dockerhub import dockerhub_api  # noqa: F401 (fixtures)
from tests.support.ecr import ecr_env, ecr_registry, moto_auth  # noqa: F401 (fixtures)
from tests.support.github import github_api  # noqa: F401 (fixtures)
from tests.support.gitlab import gitlab_api  # noqa: F401 (fixtures)
from tests.support.harbor import harbor_api  # noqa: F401 (fixtures)
from tests.support.registry import fault_proxy_factory  # noqa: F401 (fixtures)
from tests.support.rigs import native_rig, rig  # noqa: F401 (fixtures)
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)

FAST = RetryPolicy(attempts=4, initial=0.01, maximum=0.05)
OLD = datetime(2024, 1, 1, tzinfo=timezone.utc)
AMD, ARM = {"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64"}
#: (delete by digest, lone tags, untagged manifests) as each API's probe must find them.
CAPABILITIES = {"distribution": ("yes", "no", "yes"), "ecr": ("yes", "yes", "yes"), "gitlab": ("yes", "yes", "yes"),
                "harbor": ("yes", "yes", "yes"), "github": ("yes", "no", "yes"), "dockerhub": ("yes", "yes", "no")}
#: What each API answers a client sending too many requests (its documented rate-limit body).
RATE_LIMITED = {"ecr": '{"__type": "ThrottlingException", "message": "Rate exceeded"}',
                "gitlab": '{"message": "Retry later"}',
                "harbor": '{"errors": [{"code": "TOO_MANY_REQUEST", "message": "too many requests"}]}',
                "github": '{"message": "You have exceeded a secondary rate limit.", "documentation_url": "x"}',
                "dockerhub": '{"detail": "Rate limit exceeded", "message": "Rate limit exceeded"}'}


def cfg_of(rig, tmp_path, repos, *, url=None, api_url=None, **cleanup):
    return parse_config({
        "store": str(tmp_path / "store"),
        "registry": rig.registry_config(url or rig.registry.url, repos, api_url=api_url),
        "cleanup": {"disableKubernetesBasedPolicy": True, "disableGitHistoryBasedPolicy": True,
                    "keepImagesBuiltWithinLastNHours": 2, "unlinkedImages": "delete", **cleanup},
        "helm": {"enabled": False},
        # moto's ECR mutates a repository's image list without a lock: concurrent deletes race there (not on ECR).
        "sweep": {"concurrency": 1 if rig.api == "ecr" else 2}})


def scan(cfg, cache=None, **kw):
    return asyncio.run(scan_registry(cfg.registry, cfg.link, cache if cache is not None else BlobCache(), retry=FAST, **kw))


def tag_rows(result) -> dict[str, tuple[str | None, bool]]:
    return {t["tag"]: (t["digest"], t["gone"]) for t in result.tags}


def fill(rig, repo):
    """Three images under five tags, and an index of two platform manifests."""
    a = rig.image(repo, ["a1", "a2", "a3"])
    b, c = rig.image(repo, ["b"]), rig.image(repo, ["c"])
    k1, k2 = rig.image(repo, [], label="amd64"), rig.image(repo, [], label="arm64")
    idx = rig.index(repo, "idx", [(k1, AMD), (k2, ARM)])
    return a, b, c, k1, k2, idx


# --------------------------------------------------------------------------- listing


def test_listing_follows_every_page_and_reads_each_manifest_once(rig, fault_proxy_factory, tmp_path):
    repo = rig.repository("list")
    a, b, c, k1, k2, idx = fill(rig, repo)
    oci = fault_proxy_factory(rig.registry)         # counts what goes through the Distribution API
    cfg = cfg_of(rig, tmp_path, [repo], url=oci.url)
    cache = BlobCache()

    result, _ = scan(cfg, cache)

    assert tag_rows(result) == {"a1": (a, False), "a2": (a, False), "a3": (a, False), "b": (b, False),
                                "c": (c, False), "idx": (idx, False)}
    assert {m["digest"] for m in result.manifests} == {a, b, c, k1, k2, idx}
    if rig.api == "distribution":
        return                                      # today's scan: one read per tag, as the registry tests show
    assert rig.list_pages() >= 2                    # pages of 2: the listing followed the API's next pages
    assert next(m for m in result.manifests if m["digest"] == a)["pushed"] is not None
    # The API gave every tag's digest: no HEAD or GET per tag, one GET per distinct manifest.
    assert oci.count("HEAD", "/manifests/") == 0
    assert oci.count("GET", "/manifests/") == 6
    # A rescan of the unchanged registry costs the listing only.
    again, _ = scan(cfg, BlobCache(cache.table()))
    assert tag_rows(again) == tag_rows(result)
    assert oci.count("GET", "/manifests/") == 6 and oci.count("HEAD", "/manifests/") == 0


def test_a_tag_deleted_between_listing_and_reading_is_recorded_gone(rig, tmp_path):
    repo = rig.repository("gone")
    a, b = rig.image(repo, ["a"]), rig.image(repo, ["b"])
    cfg = cfg_of(rig, tmp_path, [repo])

    result, _ = scan(cfg, after_listing=lambda work: rig.delete(repo, a))

    rows = tag_rows(result)
    assert rows["a"] == (None, True) and rows["b"] == (b, False)
    assert {m["digest"] for m in result.manifests} == {b}


# --------------------------------------------------------------------------- failures


def write_yaml(rig, tmp_path, repos, **extra) -> str:
    path = tmp_path / "regsweep.yaml"
    path.write_text(yaml.safe_dump({
        "store": str(tmp_path / "store"), "registry": rig.registry_config(rig.registry.url, repos),
        "cleanup": {"disableKubernetesBasedPolicy": True, "disableGitHistoryBasedPolicy": True,
                    "keepImagesBuiltWithinLastNHours": 2, "unlinkedImages": "delete"},
        "helm": {"enabled": False}, **extra}))
    return str(path)


def test_wrong_credentials_are_exit_2_in_one_line(native_rig, request, run_cli, tmp_path):
    rig = native_rig
    repo = rig.repository("auth")
    rig.image(repo, ["a"])
    path = write_yaml(rig, tmp_path, [repo])
    env = {TOKEN_ENV: "wrong-token-value"}
    if rig.api == "ecr":
        request.getfixturevalue("moto_auth")        # moto refuses keys it does not know, as AWS does

    r = run_cli("snapshot", "--config", path, "--sources", "registry", env=env)

    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("regsweep: error: registry ") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr and "wrong-token-value" not in r.stderr + r.stdout
    assert "check the credentials" in r.stderr
    assert not (tmp_path / "store" / "snapshots").exists()


def test_rate_limiting_waits_for_retry_after(native_rig, fault_proxy_factory, tmp_path):
    rig = native_rig
    repo = rig.repository("slow")
    a = rig.image(repo, ["a"])
    api = fault_proxy_factory(rig.api_url)
    api.inject(429, times=1, retry_after="1", body=RATE_LIMITED[rig.api],
               **({"method": "POST"} if rig.api == "ecr" else {"path": rig.LIST_PATHS[rig.api]}))
    cfg = cfg_of(rig, tmp_path, [repo], api_url=api.url)

    started = time.monotonic()
    result, _ = scan(cfg)
    waited = time.monotonic() - started

    assert tag_rows(result) == {"a": (a, False)}
    assert [f[2] for f in api.faulted] == ["429"]
    assert waited >= 0.95       # FAST's own backoff is at most 0.05 s: the registry's Retry-After was honoured


# --------------------------------------------------------------------------- sweeping


def test_sweep_deletes_exactly_the_planned_images_and_keeps_shared_digests(rig, sweep, tmp_path):
    repo = rig.repository("sweep")
    now = utcnow()
    old = rig.image(repo, ["old-1", "old-1b"], created=OLD)
    keep = rig.image(repo, ["keep", "keep-extra"], created=now)
    shared, only_old, only_new = (rig.image(repo, [], created=OLD, label="shared"),
                                  rig.image(repo, [], created=OLD, label="only-old"),
                                  rig.image(repo, [], created=now, label="only-new"))
    fresh_idx = rig.index(repo, "fresh-idx", [(shared, AMD), (only_new, ARM)])
    old_idx = rig.index(repo, "old-idx", [(shared, AMD), (only_old, ARM)])
    cfg = cfg_of(rig, tmp_path, [repo])
    store = Store(cfg.store)
    sid = take_snapshot(cfg, probe=True)
    plan = make_plan(cfg, sid)
    # One tag of a kept image is planned away by hand: a lone tag, where the registry can delete one.
    edited = edit_plan(cfg, plan, {"keep-extra": "delete"})

    report = sweep(cfg, edited, approve=True)

    digest, lone, untagged = CAPABILITIES[rig.api]
    caps = store.snapshots.meta(sid)["registry_capabilities"]
    assert (caps["api"], caps["delete_digest"], caps["delete_tag"], caps["delete_untagged"]) == (rig.api, digest, lone, untagged)
    assert caps["referrers"] == "no" and store.plans.meta(plan)["registry_capabilities"] == caps
    assert report["failed"] == 0, report["outcomes"]
    assert all(o["detail"] != "already gone (404)" for o in report["outcomes"]), report["outcomes"]
    tags = rig.tags(repo)
    assert not rig.holds(repo, old) and not rig.holds(repo, old_idx)
    assert "old-1" not in tags and "old-1b" not in tags and "old-idx" not in tags
    for d in (keep, fresh_idx, shared, only_new):
        assert rig.holds(repo, d) or (rig.api == "dockerhub" and d in (shared, only_new)), d
    assert tags["keep"] == keep and tags["fresh-idx"] == fresh_idx
    why = {o["ref"]: o["detail"] for o in report["outcomes"] if o["status"] == "skipped"}
    if lone == "yes":
        assert "keep-extra" not in tags
    else:
        assert tags["keep-extra"] == keep and "cannot delete a tag alone" in why["keep-extra"]
    if untagged == "yes":
        assert not rig.holds(repo, only_old)
    else:
        assert "untagged" in why[only_old]
    assert shared not in why or "kept" in why[shared]   # the platform manifest the kept index lists stays


def test_token_reaches_no_output_and_no_stored_file(run_cli, request, tmp_path, monkeypatch, prefect_api_url):
    import httpx

    from tests.support.rigs import make_rig

    for api in ("gitlab", "github", "dockerhub", "harbor"):
        home = tmp_path / api
        home.mkdir()
        rig = make_rig(api, request, home, monkeypatch)
        repo = rig.repository("secret")
        rig.image(repo, ["old"], created=OLD)
        path = write_yaml(rig, home, [repo])
        outputs = []
        for args in (["snapshot"], ["plan"], ["sweep", "--plan", "latest", "--yes"]):
            r = run_cli(args[0], "--config", path, *args[1:])
            assert r.returncode == 0, (api, args, r.stderr)
            outputs.append(r.stdout + r.stderr)
        assert "old" not in rig.tags(repo), api            # it did sweep, with the token
        assert all(API_TOKEN not in o for o in outputs), api
        for f in home.rglob("*"):
            if f.is_file():
                assert API_TOKEN.encode() not in f.read_bytes(), f
    runs = httpx.post(f"{prefect_api_url}/flow_runs/filter", json={"limit": 200}).json()
    assert runs and all(API_TOKEN not in str(run.get("parameters")) for run in runs)


def test_push_time_stands_in_for_a_missing_build_time_and_last_pull_is_only_shown(request, tmp_path, monkeypatch):
    from datetime import timedelta

    from tasks.plan.explain import explain
    from tests.support.rigs import make_rig

    rig = make_rig("harbor", request, tmp_path, monkeypatch)   # Harbor reports push and pull times
    repo = rig.repository("times")
    now = utcnow()
    new = rig.image(repo, ["new"])                          # no build time: pushed just now (the fake's clock)
    stale = rig.image(repo, ["stale"])                      # no build time, pushed in 2024, pulled an hour ago
    rig.server.set_times(repo, stale, pushed=OLD, pulled=now - timedelta(hours=1))
    built = rig.image(repo, ["built"], created=OLD)         # built in 2024, pushed just now: the build time counts
    cfg = cfg_of(rig, tmp_path, [repo])
    sid = take_snapshot(cfg)
    plan = make_plan(cfg, sid)

    rows = {r["tag"]: r for r in Store(cfg.store).plans.table(plan).to_pylist()}
    assert rows["new"]["action"] == "keep"
    assert any(r.startswith("pushed ") and r.endswith("ago (< 2h), no build time recorded") for r in rows["new"]["reasons"])
    assert rows["stale"]["action"] == "delete"          # a recent pull keeps nothing: scanners pull too
    assert any("pushed" in r and "not within 2h" in r for r in rows["stale"]["reasons"])
    assert rows["built"]["action"] == "delete" and any(r.startswith("built ") for r in rows["built"]["reasons"])
    manifests = {m["digest"]: m for m in Store(cfg.store).snapshots.table(sid, "manifests").to_pylist()}
    assert manifests[stale]["pushed"] == OLD and manifests[stale]["last_pulled"] is not None
    assert manifests[new]["last_pulled"] is None       # Harbor's 0001-01-01 "never pulled" is no time

    lines = explain(cfg, f"{repo}:stale", plan)

    assert f"  (pushed 2024-01-01 00:00 UTC, last pulled {(now - timedelta(hours=1)):%Y-%m-%d %H:%M} UTC; as the " \
           "registry reports it: information only, never a keep or delete rule)" in lines
    assert lines[-1] == f"delete {repo}:stale ({stale})"


@pytest.mark.parametrize("api", ["gitlab", "harbor", "github", "dockerhub"])
def test_credentials_that_may_not_delete_are_found_by_the_probe(api, request, sweep, tmp_path, monkeypatch):
    from tasks.common.errors import SweepFailed
    from tests.support.rigs import make_rig

    rig = make_rig(api, request, tmp_path, monkeypatch)
    rig.server.read_only = True          # a robot account or job token that reads but may not delete
    repo = rig.repository("ro")
    doomed = rig.image(repo, ["old"], created=OLD)
    cfg = cfg_of(rig, tmp_path, [repo])
    sid = take_snapshot(cfg, probe=True)
    caps = Store(cfg.store).snapshots.meta(sid)["registry_capabilities"]
    plan = make_plan(cfg, sid)

    if api == "gitlab":
        # GitLab deletes manifests through the Distribution API, lone tags through its own.
        assert (caps["delete_digest"], caps["delete_tag"]) == ("yes", "denied")
        assert "403" in caps["notes"]["delete_tag"]
        assert sweep(cfg, plan, approve=True)["deleted"] == 1
        assert not rig.holds(repo, doomed)
        return
    assert caps["delete_digest"] == "denied" and "check the credentials" in caps["notes"]["delete_digest"]
    with pytest.raises(SweepFailed, match="does not let these credentials delete .*found before asking for approval"):
        sweep(cfg, plan, approve=True)
    assert rig.holds(repo, doomed)


def test_gitlab_group_lists_the_registries_of_every_project_in_it(gitlab_api, tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, API_TOKEN)
    with LocalRegistry() as reg, reg.client() as c:
        api = gitlab_api(reg, projects={"grp/app": 7, "grp/lib": 8, "other/x": 9})
        for repo in ("grp/app", "grp/app/cache", "grp/lib/base", "other/x"):
            push_image(c, repo, "v1", config={"config": {"Labels": {"r": repo}}})
        cfg = parse_config({"store": str(tmp_path / "store"), "registry": {
            "url": reg.url, "api": "gitlab", "repositories": ["grp/**"], "allowInsecureCredentials": True,
            "gitlab": {"url": api.url, "group": "grp", "token_env": TOKEN_ENV, "pageSize": 1}}})

        result, _ = scan(cfg)

    assert sorted(t["repository"] for t in result.tags) == ["grp/app", "grp/app/cache", "grp/lib/base"]
    assert sum(1 for m, p in api.requests if "/groups/grp/registry/repositories" in p) == 3   # one page each
