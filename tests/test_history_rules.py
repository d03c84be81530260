"""The keep rules only history makes possible (regsweep's own, off by default):
`keepImagesSeenInUseWithin` and `firstSeenAsBuildTime`.

Real components: images pushed to the real Distribution, workloads and Helm Secrets served by
the loopback Kubernetes API server and changed between snapshots, snapshots taken by the real
extractors at chosen clocks (tests/support/sweeps.py `take_snapshot`), plans made and stored as
the plan flow does (tasks/plan/make.py).
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest

from tasks.config.models import parse_config
from tasks.plan.make import make_plan
from tasks.config.policy import CleanupPolicy
from tasks.store.store import Store
from tasks.common.units import utcnow
from testbed import push_image, tag_manifest
from testbed.kube import helm_release, helm_secret, manifest, pod, workload
from tests.support.configs import config
from tests.support.sweeps import old, take_snapshot
from tests.support.kube import kube_env  # noqa: F401 (fixtures)
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)

#: Policy hashes as regsweep computed them before the history keys existed: plans made then stay
#: valid for a sweep after the upgrade (the sweep compares hashes).
HASH_DEFAULT = "sha256:b4c6009dd662c2dd7775f827b8c521282de3f3849a4533c6476b07d5ecfdf57c"
HASH_THESE_TESTS = "sha256:c1984d3e6217510e60b0883d0b5fcf21a3da54b918242d34989f8fe532b98f48"
BASE_CLEANUP = {"disableGitHistoryBasedPolicy": True, "keepImagesBuiltWithinLastNHours": 2, "unlinkedImages": "delete"}


#: One repository, git off; no cluster unless a kubeconfig is given, and then Helm too (CLUSTER).
HISTORY = config(registry={"concurrency": 4}, helm={"enabled": False},
                 cleanup={**BASE_CLEANUP, "disableKubernetesBasedPolicy": True})
CLUSTER = {"helm": {"enabled": True}}


def plan(cfg, sid):
    """(stored plan rows as {tag: (action, reasons)}, plan meta)."""
    result = make_plan(cfg, sid)
    rows = Store(cfg.store).plans.table(result.plan_id).to_pylist()
    return {r["tag"]: (r["action"], r["reasons"]) for r in rows}, result.meta


@pytest.fixture
def cluster_history(registry, registry_client, unique_repo, kube_env):
    """Images `api` (run by a Deployment), `web` (in a Helm revision) and `never`, all built in 2024:
    (repository, digests by tag, kubeconfig, undeploy), where `undeploy()` deletes the Deployment
    and the Helm release's Secret."""
    c, repo = registry_client, unique_repo
    digests = {t: old(c, repo, t) for t in ("api", "web", "never")}
    server = kube_env.server()
    server.add(workload("Deployment", "shop", "api", [f"{registry.host}/{repo}:api"]),
               helm_secret(helm_release("web", "shop", 4, manifest(
                   workload("Deployment", "shop", "web", [f"{registry.host}/{repo}:web"])))))

    def undeploy():
        server.remove("Deployment", "shop", "api")
        server.remove("Secret", "shop", "sh.helm.release.v1.web.v4")

    return repo, digests, kube_env.kubeconfig({"prod": (server, None)}), undeploy


def test_an_image_seen_in_use_or_in_helm_within_the_window_is_kept_then_let_go(tmp_path, registry, cluster_history):
    repo, digests, kubeconfig, undeploy = cluster_history
    cfg = parse_config(config(HISTORY, CLUSTER, store=tmp_path / "store", url=registry.url, repositories=[repo],
                              kubeconfig=kubeconfig, cleanup={"keepImagesSeenInUseWithin": "168h"}))
    t0 = utcnow() - timedelta(days=10)
    s1 = take_snapshot(cfg, now=t0)
    undeploy()   # scaled to zero and deleted, release uninstalled
    s2 = take_snapshot(cfg, now=t0 + timedelta(days=3))
    s3 = take_snapshot(cfg, now=t0 + timedelta(days=8))

    rows, _ = plan(cfg, s2)
    assert rows["api"] == ("keep", [f"seen in use 3d ago: prod/shop/Deployment/api container c0 (snapshot {s1})"])
    assert rows["web"] == ("keep", [f"seen in Helm 3d ago: prod/shop/web revision 4 (snapshot {s1})"])
    assert rows["never"][0] == "delete"
    assert "not seen in use or in Helm within 168h" in rows["never"][1]

    later, _ = plan(cfg, s3)   # s1 is 8 days before s3: out of the window
    assert {t: a for t, (a, _) in later.items()} == {"api": "delete", "web": "delete", "never": "delete"}
    assert "not seen in use or in Helm within 168h" in later["api"][1]

    # an old snapshot's plan is the same whatever was stored after it
    again, _ = plan(cfg, s2)
    assert again == rows


def test_sightings_count_only_from_sources_the_policy_reads(tmp_path, registry, cluster_history):
    """With Helm off today, what earlier snapshots saw in Helm keeps nothing; in-use sightings still do."""
    repo, digests, kubeconfig, undeploy = cluster_history
    cfg = parse_config(config(HISTORY, CLUSTER, store=tmp_path / "store", url=registry.url, repositories=[repo],
                              kubeconfig=kubeconfig, cleanup={"keepImagesSeenInUseWithin": "168h"}))
    t0 = utcnow() - timedelta(days=10)
    take_snapshot(cfg, now=t0)
    undeploy()
    s2 = take_snapshot(cfg, now=t0 + timedelta(days=1))
    helm_off = cfg.model_copy(update={"helm": cfg.helm.model_copy(update={"enabled": False})})

    rows, _ = plan(helm_off, s2)

    assert (rows["api"][0], rows["web"][0]) == ("keep", "delete")


def test_a_digest_a_pod_ran_stays_kept_after_its_tag_moved_on(tmp_path, registry, registry_client, unique_repo, kube_env):
    """Yesterday's rollback target: the pod ran `:api` at digest A (status imageID); the tag now
    names B and the pod is gone. A, still tagged `v1`, is kept by what the earlier snapshot saw."""
    c, repo = registry_client, unique_repo
    a = old(c, repo, "api")
    tag_manifest(c, repo, a, "v1")
    server = kube_env.server()
    server.add(pod("shop", "api-7d4f", [f"{registry.host}/{repo}:api"],
                   image_ids={"c0": f"docker-pullable://{registry.host}/{repo}@{a}"}))
    cfg = parse_config(config(HISTORY, CLUSTER, store=tmp_path / "store", url=registry.url, repositories=[repo],
                              kubeconfig=kube_env.kubeconfig({"prod": (server, None)}),
                              cleanup={"keepImagesSeenInUseWithin": "24h"}))
    t0 = utcnow() - timedelta(days=10)
    s1 = take_snapshot(cfg, now=t0)
    old(c, repo, "api")   # a new build takes the tag
    server.remove("Pod", "shop", "api-7d4f")
    s2 = take_snapshot(cfg, now=t0 + timedelta(hours=20))

    rows, _ = plan(cfg, s2)

    assert rows["v1"] == ("keep", [f"seen in use 20h ago: prod/shop/Pod/api-7d4f container c0 (snapshot {s1})"])


def test_an_image_without_build_time_is_fresh_from_when_it_was_first_seen(tmp_path, registry, registry_client, unique_repo):
    """Reproducible builds stamp 1970: with firstSeenAsBuildTime the first snapshot that listed the
    digest stands in as its build time; without it the image has no build time at all."""
    c, repo = registry_client, unique_repo
    repro = push_image(c, repo, "repro", config={"created": "1970-01-01T00:00:00Z", "config": {"Labels": {"x": repo}}})
    old(c, repo, "old")
    cfg = parse_config(config(HISTORY, store=tmp_path / "store", url=registry.url, repositories=[repo],
                              cleanup={"firstSeenAsBuildTime": True}))
    t0 = utcnow() - timedelta(days=10)
    s1 = take_snapshot(cfg, now=t0)
    recorded = {r["digest"]: (r["created"], r["pushed"])
                for r in Store(cfg.store).snapshots.table(s1, "manifests").to_pylist()}
    assert recorded[repro] == (None, None)   # 1970 is no build time, and Distribution reports no push time
    s2 = take_snapshot(cfg, now=t0 + timedelta(minutes=90))
    s3 = take_snapshot(cfg, now=t0 + timedelta(hours=5))

    first, _ = plan(cfg, s1)
    assert first["repro"] == ("keep", [f"first seen 0m ago (snapshot {s1}), no build time recorded (< 2h)"])
    rows, _ = plan(cfg, s2)
    assert rows["repro"] == ("keep", [f"first seen 1h30m ago (snapshot {s1}), no build time recorded (< 2h)"])
    assert rows["old"][0] == "delete"
    later, _ = plan(cfg, s3)
    assert later["repro"][0] == "delete"
    assert f"first seen 5h ago (snapshot {s1}), no build time recorded (not within 2h)" in later["repro"][1]

    off, _ = plan(parse_config(config(HISTORY, store=tmp_path / "store", url=registry.url, repositories=[repo])), s2)
    assert off["repro"][0] == "delete" and "build time unknown" in off["repro"][1]

    # reproducible: an old snapshot's plan does not change with the snapshots after it
    again, _ = plan(cfg, s2)
    assert again == rows


def test_first_seen_forgets_a_snapshot_removed_from_the_store(tmp_path, registry, registry_client, unique_repo):
    """The first-seen cache is a function of the stored snapshots: remove the first one and the
    next one becomes "first seen"."""
    c, repo = registry_client, unique_repo
    repro = push_image(c, repo, "repro", config={"created": "1970-01-01T00:00:00Z", "config": {"Labels": {"x": repo}}})
    old(c, repo, "old")   # has a build time: not recorded
    cfg = parse_config(config(HISTORY, store=tmp_path / "store", url=registry.url, repositories=[repo],
                              cleanup={"firstSeenAsBuildTime": True}))
    t0 = utcnow() - timedelta(days=10)
    s1 = take_snapshot(cfg, now=t0)
    s2 = take_snapshot(cfg, now=t0 + timedelta(hours=4))
    s3 = take_snapshot(cfg, now=t0 + timedelta(hours=5))
    assert plan(cfg, s3)[0]["repro"][0] == "delete"   # first seen 5h before s3
    assert cached_first_seen(cfg) == ([(repo, repro, s1)], [s1, s2, s3])

    shutil.rmtree(tmp_path / "store" / "snapshots" / s1)

    rows, _ = plan(cfg, s3)
    assert rows["repro"] == ("keep", [f"first seen 1h ago (snapshot {s2}), no build time recorded (< 2h)"])
    assert cached_first_seen(cfg) == ([(repo, repro, s2)], [s2, s3])


def cached_first_seen(cfg):
    """The store's first-seen cache: (repository, digest, snapshot) rows and the snapshots folded in."""
    t = Store(cfg.store).caches.read("first-seen")
    return ([(r["repository"], r["digest"], r["snapshot"]) for r in t.to_pylist()],
            json.loads(t.schema.metadata[b"snapshots"]))


def test_with_both_keys_off_plans_and_policy_hashes_are_as_before(tmp_path, registry, cluster_history):
    repo, digests, kubeconfig, undeploy = cluster_history
    t0 = utcnow() - timedelta(days=10)
    cfg = parse_config(config(HISTORY, CLUSTER, store=tmp_path / "store", url=registry.url, repositories=[repo],
                              kubeconfig=kubeconfig))
    take_snapshot(cfg, now=t0)
    undeploy()
    s2 = take_snapshot(cfg, now=t0 + timedelta(days=1))
    explicit = parse_config(config(HISTORY, CLUSTER, store=tmp_path / "store", url=registry.url, repositories=[repo],
                                   kubeconfig=kubeconfig,
                                   cleanup={"keepImagesSeenInUseWithin": None, "firstSeenAsBuildTime": False}))

    rows, meta = plan(cfg, s2)
    rows_explicit, meta_explicit = plan(explicit, s2)

    assert rows == rows_explicit
    assert {t: a for t, (a, _) in rows.items()} == {"api": "delete", "web": "delete", "never": "delete"}
    assert CleanupPolicy().digest() == HASH_DEFAULT
    assert CleanupPolicy.model_validate(BASE_CLEANUP).digest() == HASH_THESE_TESTS
    assert meta["cleanup"] == meta_explicit["cleanup"]
    assert "keepImagesSeenInUseWithin" not in meta["cleanup"] and "firstSeenAsBuildTime" not in meta["cleanup"]
    on = CleanupPolicy.model_validate({**BASE_CLEANUP, "keepImagesSeenInUseWithin": "168h"})
    assert on.digest() != HASH_THESE_TESTS
    assert not (tmp_path / "store" / "cache" / "first-seen.parquet").exists()   # no history read or written


@pytest.mark.parametrize("value, message", [
    ("7 days", "cleanup.keepImagesSeenInUseWithin: '7 days' is not a duration"),
    (168, "cleanup.keepImagesSeenInUseWithin: duration 168 needs a unit"),
])
def test_a_bad_window_exits_2_naming_the_key(tmp_path, run_cli, value, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"registry: {{url: http://127.0.0.1:1}}\ncleanup: {{keepImagesSeenInUseWithin: {value!r}}}\n")
    r = run_cli("plan", "--config", cfg)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"regsweep: error: {message}")
    assert not (tmp_path / "var").exists()
