"""The gated sweep against a real Distribution 2.8 registry, real snapshots and real plans.

Each test fills its own repository through the registry's HTTP API, takes a snapshot with the
real registry extractor, evaluates it into a stored plan, sweeps by running the sweep flow (the
one orchestration, on the session's Prefect server), and then asks the registry itself (GET
manifest → 404 or 200) what is left. Old images (built 2024) are planned `delete`, images built
now are kept by the "fresh" rule; everything else keeps its real behaviour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.config.models import load_config
from tasks.common.errors import PlanRefused, StoreError, SweepFailed, SweepLocked, SweepNotApproved
from testbed import push_artifact, push_index, tag_manifest
from tasks.common.units import utcnow
from tasks.store.store import Store, new_id
from tasks.sweep.lock import lock_path, sweep_lock
from tests.support.configs import SWEEP, config
from tests.support.sweeps import (PROBE_DELETES, TARGET_DELETES, fresh, journal_events, make_plan, old, plan_of,
                                  resolves_to, status, take_snapshot)
from tests.support.kube import kube_env  # noqa: F401 (fixtures)
from tests.support.registry import fault_proxy, fresh_registry, unique_repo  # noqa: F401 (fixtures)
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)

# --------------------------------------------------------------------------- what goes, what stays


def test_sweep_deletes_what_the_plan_deletes_and_nothing_else(sweep, registry, registry_client, unique_repo, tmp_path):
    c, repo = registry_client, unique_repo
    a = old(c, repo, "a")
    tag_manifest(c, repo, a, "a-alias")
    keep = fresh(c, repo, "keep")
    gone_subject = old(c, repo, "signed-old")
    sig_old = push_artifact(c, repo, subject=gone_subject, artifact_type="application/vnd.dev.cosign.simplesigning.v1+json")
    sig_kept = push_artifact(c, repo, subject=keep, artifact_type="application/vnd.dev.cosign.simplesigning.v1+json")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = plan_of(cfg)

    report = sweep(cfg, plan, approve=True)

    assert report["failed"] == 0
    for d in (a, gone_subject, sig_old):
        assert status(c, repo, d) == 404, d
    assert status(c, repo, f"sha256-{gone_subject.split(':')[1]}") == 404  # its referrers fallback index
    for d in (keep, sig_kept):
        assert status(c, repo, d) == 200
    assert status(c, repo, f"sha256-{keep.split(':')[1]}") == 200
    assert report["deleted"] == 4  # a (with its alias), the old subject, its signature, its fallback index
    assert report["summary"].startswith("deleted 4 manifests (")
    events = journal_events(cfg, plan)
    started = [e["target"] for e in events if e["event"] == "started"]
    done = [e["target"] for e in events if e["event"] == "done"]
    assert sorted(started) == sorted(done) and len(done) == 4
    # The subject went before its signature and fallback index.
    order = [e["target"] for e in events if e["event"] == "started"]
    assert order.index(gone_subject) < order.index(sig_old)


def test_index_and_its_children_go_together_while_a_kept_index_keeps_shared_children(
        sweep, registry, registry_client, unique_repo, tmp_path):
    c, repo = registry_client, unique_repo
    amd_old, shared, arm_new = old(c, repo, None), old(c, repo, None), fresh(c, repo, None)
    plat = lambda arch: {"os": "linux", "architecture": arch}  # noqa: E731
    old_index = push_index(c, repo, "v1", [(amd_old, plat("amd64")), (shared, plat("arm64"))])
    new_index = push_index(c, repo, "v2", [(shared, plat("amd64")), (arm_new, plat("arm64"))])
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))

    report = sweep(cfg, plan_of(cfg), approve=True)

    assert report["failed"] == 0
    assert status(c, repo, old_index) == 404 and status(c, repo, amd_old) == 404
    assert status(c, repo, new_index) == 200 and status(c, repo, shared) == 200 and status(c, repo, arm_new) == 200
    assert status(c, repo, "v2") == 200


def test_a_tag_repushed_after_planning_survives(sweep, registry, registry_client, unique_repo, tmp_path):
    """The registry re-check: a planned tag that moved to another image keeps its old digest."""
    c, repo = registry_client, unique_repo
    first = old(c, repo, "latest")
    other = old(c, repo, "other")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = plan_of(cfg)
    second = fresh(c, repo, "latest")  # CI pushed a new `latest` after the plan was made

    report = sweep(cfg, plan, approve=True)

    assert status(c, repo, "latest") == 200 and status(c, repo, second) == 200
    assert status(c, repo, first) == 200  # the planned digest stays: its tag no longer says it may go
    assert status(c, repo, other) == 404
    skipped = {o["digest"]: o["detail"] for o in report["outcomes"] if o["status"] == "skipped"}
    assert f"tag latest now points at {second}" in skipped[first]
    assert report["summary"].endswith("skipped 1, failed 0")
    # The journal says why too: the old digest ended `skipped`, never `done`.
    ends = [(e["event"], e["detail"]) for e in journal_events(cfg, plan)
            if e["target"] == first and e["event"] in ("done", "skipped", "failed")]
    assert ends == [("skipped", f"tag latest now points at {second}, not the planned {first}")]


def test_a_digest_shared_with_a_kept_tag_survives(sweep, registry, registry_client, unique_repo, tmp_path):
    c, repo = registry_client, unique_repo
    build = old(c, repo, "build-17")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = plan_of(cfg)
    tag_manifest(c, repo, build, "release-1.0")  # promoted after the plan: the digest now has a kept tag

    report = sweep(cfg, plan, approve=True)

    assert status(c, repo, build) == 200 and status(c, repo, "release-1.0") == 200
    assert report["deleted"] == 0
    assert "tag release-1.0 now points at it" in report["outcomes"][0]["detail"]


def test_a_plan_deleting_one_of_two_tags_on_a_digest_keeps_the_digest(sweep, registry, registry_client, unique_repo, tmp_path):
    """Digest-level safety even when a plan marks tags of one digest differently."""
    from tasks.store.schemas import PLAN

    c, repo = registry_client, unique_repo
    d = old(c, repo, "nightly")
    tag_manifest(c, repo, d, "stable")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    store = Store(cfg.store)
    plan = plan_of(cfg)
    rows = store.plans.table(plan).to_pylist()
    for r in rows:
        if r["tag"] == "stable":
            r["action"], r["reasons"] = "keep", ["hand edit"]
    edited = new_id()
    store.plans.publish(edited, pa.Table.from_pylist(rows, schema=PLAN), {**store.plans.meta(plan), "id": edited})

    report = sweep(cfg, edited, approve=True)

    assert status(c, repo, d) == 200 and status(c, repo, "nightly") == 200 and status(c, repo, "stable") == 200
    # Distribution 2.8 cannot delete a tag alone (400 DIGEST_INVALID): the lone tag is skipped, said so.
    (o,) = report["outcomes"]
    assert o["ref"] == "nightly" and o["status"] == "skipped" and "cannot delete a tag alone" in o["detail"]
    assert "(tag stable on this digest is not planned for deletion)" in o["detail"]
    assert report["failed"] == 0


# --------------------------------------------------------------------------- refusals


def test_incomplete_snapshot_plan_is_refused(sweep, registry, registry_client, unique_repo, tmp_path, kube_env):
    c, repo = registry_client, unique_repo
    d = old(c, repo, "a")
    server = kube_env.server()
    kubeconfig = kube_env.kubeconfig({"prod": (server, None)})
    server.fail("pods", 500)  # one list call fails: the snapshot is incomplete
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], kubeconfig=kubeconfig, write=tmp_path))
    sid = take_snapshot(cfg)
    assert Store(cfg.store).snapshots.meta(sid)["complete"] is False
    plan = make_plan(cfg, sid)

    with pytest.raises(PlanRefused, match=f"plan {plan} comes from incomplete snapshot {sid}"):
        sweep(cfg, plan, approve=True)
    assert status(c, repo, d) == 200
    assert journal_events(cfg, plan) == []


def test_too_old_plan_and_plan_for_another_registry_are_refused(sweep, registry, registry_client, unique_repo, tmp_path):
    c, repo = registry_client, unique_repo
    d = old(c, repo, "a")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], sweep={"maxPlanAge": "24h"}, write=tmp_path))
    plan = plan_of(cfg)
    # A plan made now of a snapshot taken 25 hours ago: the observation is what has aged.
    stale = make_plan(cfg, take_snapshot(cfg, now=utcnow() - timedelta(hours=25)))

    with pytest.raises(PlanRefused, match=r"taken 25\.\dh ago, older than sweep.maxPlanAge 24h"):
        sweep(cfg, stale, approve=True)
    other = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"url": "http://127.0.0.1:9"})})
    with pytest.raises(PlanRefused, match=f"made for registry {registry.url}, not http://127.0.0.1:9"):
        sweep(other, plan, approve=True)
    # A keep rule added after planning must not be bypassed by sweeping the old plan.
    stricter = cfg.model_copy(update={"cleanup": cfg.cleanup.model_copy(update={"unlinkedImages": "keep"})})
    with pytest.raises(PlanRefused, match="different cleanup policy .* run `regsweep plan` again"):
        sweep(stricter, plan, approve=True)
    assert status(c, repo, d) == 200


def test_over_max_deletions_deletes_nothing_and_without_approval_nothing_either(
        sweep, registry, registry_client, unique_repo, tmp_path):
    c, repo = registry_client, unique_repo
    ds = [old(c, repo, t) for t in ("a", "b", "c")]
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], sweep={"approvalTimeout": "1s"},
                             write=tmp_path))
    plan = plan_of(cfg)

    with pytest.raises(SweepNotApproved, match="would delete 3 .* more than the 2 that approval up front"):
        sweep(cfg, plan, approve=True, max_deletions=2)
    # Without approval up front the flow waits for one (the Prefect form); nobody gives it.
    with pytest.raises(SweepNotApproved, match="no approval for plan .* within sweep.approvalTimeout 1s"):
        sweep(cfg, plan, approval_poll_interval=1)
    assert all(status(c, repo, d) == 200 for d in ds)
    assert not any(e["event"] == "started" for e in journal_events(cfg, plan))


def test_dry_run_deletes_nothing_and_reports_what_would_go(sweep, registry, registry_client, unique_repo, tmp_path):
    c, repo = registry_client, unique_repo
    ds = [old(c, repo, t) for t in ("a", "b")]
    fresh(c, repo, "new")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = plan_of(cfg)

    report = sweep(cfg, plan, dry_run=True)

    assert report["summary"].startswith("dry run: would delete 2 manifests (")
    assert all(status(c, repo, d) == 200 for d in ds)
    assert journal_events(cfg, plan) == []


# --------------------------------------------------------------------------- registry trouble


def test_registry_answering_503_then_429_recovers_with_retries(sweep, registry, registry_client, unique_repo, tmp_path,
                                                                fault_proxy):
    c, repo = registry_client, unique_repo
    ds = [old(c, repo, t) for t in ("a", "b", "c")]
    cfg = load_config(config(SWEEP, url=fault_proxy.url, repositories=[repo], write=tmp_path))
    plan = plan_of(cfg)
    fault_proxy.inject(503, times=2, method="DELETE", path=TARGET_DELETES)
    fault_proxy.inject(429, times=1, method="DELETE", path=TARGET_DELETES, retry_after="1")

    report = sweep(cfg, plan, approve=True)

    assert report["deleted"] == 3 and report["failed"] == 0
    assert all(status(c, repo, d) == 404 for d in ds)
    assert len([f for f in fault_proxy.faulted if f[0] == "DELETE"]) == 3
    assert fault_proxy.count("DELETE", TARGET_DELETES) == 6
    assert fault_proxy.count("DELETE", PROBE_DELETES) == 2   # the capability probe, before approval


def planned_tags(cfg, plan_id: str) -> dict[tuple[str, str], str]:
    """(repository, tag) -> digest of every tag the plan deletes."""
    rows = Store(cfg.store).plans.table(plan_id).to_pylist()
    return {(r["repository"], r["tag"]): r["digest"] for r in rows if r["action"] == "delete" and r["tag"]}


@pytest.mark.parametrize("fault", [
    pytest.param({"status": 500, "method": "GET", "path": r"/tags/list"}, id="tag-list-500"),
    pytest.param({"drop": True, "method": "HEAD", "path": r"/manifests/"}, id="head-dropped"),
])
def test_a_registry_failing_the_recheck_fails_the_sweep_and_deletes_nothing(
        sweep, registry, registry_client, unique_repo, tmp_path, fault_proxy, fault):
    c, repo = registry_client, unique_repo
    for t in ("a", "b", "c"):
        old(c, repo, t)
    cfg = load_config(config(SWEEP, url=fault_proxy.url, repositories=[repo], write=tmp_path))
    plan = plan_of(cfg)
    planned = planned_tags(cfg, plan)
    assert len(planned) == 3
    fault_proxy.inject(times=None, **fault)   # the registry goes wrong between planning and sweeping

    with pytest.raises(SweepFailed) as exc:
        sweep(cfg, plan, approve=True)

    message = str(exc.value)
    assert message.startswith("the registry re-check before deleting failed, so nothing was deleted: registry ")
    assert "\n" not in message and exc.value.report is None
    assert fault_proxy.faulted and fault_proxy.count("DELETE", TARGET_DELETES) == 0
    # The registry itself (not through the proxy) still serves every planned tag at its planned digest.
    assert {k: resolves_to(c, *k) for k in planned} == planned
    assert not any(e["event"] == "started" for e in journal_events(cfg, plan))


def test_registry_with_delete_disabled_is_refused_before_approval_in_one_line(sweep, fresh_registry, tmp_path):
    reg = fresh_registry(delete_enabled=False)
    repo = "app"
    with reg.client() as c:
        ds = [old(c, repo, t) for t in ("a", "b", "c", "d", "e")]
        cfg = load_config(config(SWEEP, url=reg.url, repositories=[repo], write=tmp_path))
        plan = plan_of(cfg)   # a plan that recorded no capabilities: the sweep asks the registry itself

        with pytest.raises(SweepFailed) as exc:
            sweep(cfg, plan)   # no up-front approval: it must refuse before pausing for one

        message = str(exc.value)
        assert message.startswith(f"registry {reg.url} refuses deletion (")
        assert "storage.delete.enabled" in message and "found before asking for approval: nothing was deleted" in message
        assert "\n" not in message and exc.value.report is None
        assert all(status(c, repo, d) == 200 for d in ds)
    assert not [e for e in journal_events(cfg, plan) if e["event"] in ("started", "failed", "done")]


# --------------------------------------------------------------------------- clusters


def test_fresh_cluster_scan_keeps_an_image_deployed_after_planning(sweep, registry, registry_client, unique_repo, tmp_path,
                                                                    kube_env):
    from testbed.kube import pod, workload

    c, repo = registry_client, unique_repo
    used, by_digest, unused = old(c, repo, "v1"), old(c, repo, "v2"), old(c, repo, "v3")
    server = kube_env.server()
    kubeconfig = kube_env.kubeconfig({"prod": (server, None)})
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], kubeconfig=kubeconfig, write=tmp_path))
    plan = plan_of(cfg)
    server.add(workload("Deployment", "shop", "web", [f"{registry.host}/{repo}:v1"]),
               pod("shop", "job-x", ["busybox"], image_ids={"c0": f"docker-pullable://{registry.host}/{repo}@{by_digest}"}))

    report = sweep(cfg, plan, approve=True)

    assert status(c, repo, used) == 200 and status(c, repo, by_digest) == 200
    assert status(c, repo, unused) == 404
    why = {o["digest"]: o["detail"] for o in report["outcomes"] if o["status"] == "skipped"}
    assert "in use by Deployment shop/web in context prod" in why[used]
    assert "in use by Pod shop/job-x" in why[by_digest]


def test_cluster_unreachable_before_deleting_deletes_nothing(sweep, registry, registry_client, unique_repo, tmp_path,
                                                             kube_env):
    c, repo = registry_client, unique_repo
    d = old(c, repo, "v1")
    server = kube_env.server()
    kubeconfig = kube_env.kubeconfig({"prod": (server, None)})
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], kubeconfig=kubeconfig, write=tmp_path))
    plan = plan_of(cfg)
    server.fail("deployments", 500)

    with pytest.raises(SweepFailed, match="fresh cluster scan before deleting failed, so nothing was deleted"):
        sweep(cfg, plan, approve=True)
    assert status(c, repo, d) == 200
    assert not any(e["event"] == "started" for e in journal_events(cfg, plan))


# --------------------------------------------------------------------------- one at a time, journal


def test_a_second_sweep_of_the_same_registry_is_refused(sweep, registry, registry_client, unique_repo, tmp_path):
    c, repo = registry_client, unique_repo
    d = old(c, repo, "a")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = plan_of(cfg)
    store = Store(cfg.store)

    with sweep_lock(store, cfg.registry.url, "other-plan"):
        with pytest.raises(SweepLocked, match=rf"another sweep of {registry.url} is running: pid {os.getpid()}"):
            sweep(cfg, plan, approve=True)
        assert status(c, repo, d) == 200
    assert not os.path.exists(lock_path(store, cfg.registry.url))
    assert sweep(cfg, plan, approve=True)["deleted"] == 1


@pytest.mark.parametrize("part", ["locks", "journal"])
def test_a_store_that_cannot_hold_the_lock_or_journal_fails_naming_the_path_and_deletes_nothing(
        sweep, registry, registry_client, unique_repo, tmp_path, part):
    c, repo = registry_client, unique_repo
    ds = [old(c, repo, t) for t in ("a", "b")]
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = plan_of(cfg)
    blocker = Path(Store(cfg.store).path(part))
    blocker.write_text("a file where the store needs a directory")

    with pytest.raises(StoreError) as exc:
        sweep(cfg, plan, approve=True)

    message = str(exc.value)
    assert f"cannot {'create the sweep lock' if part == 'locks' else 'write'} {blocker}/" in message
    assert "\n" not in message
    assert all(status(c, repo, d) == 200 for d in ds)
    assert blocker.read_text() == "a file where the store needs a directory"


def test_a_lock_left_by_a_dead_sweep_is_taken_over(tmp_path):
    store = Store(str(tmp_path / "store"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = lock_path(store, "http://127.0.0.1:5000")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"pid": dead.pid, "host": os.uname().nodename, "since": "2026-01-01T00:00:00+00:00"}, f)
    with sweep_lock(store, "http://127.0.0.1:5000", "p") as owner:
        assert json.load(open(path))["pid"] == owner["pid"] == os.getpid()
    # Another host's lock cannot be checked from here, so it is respected.
    with open(path, "w") as f:
        json.dump({"pid": dead.pid, "host": "elsewhere", "since": "2026-01-01T00:00:00+00:00"}, f)
    with pytest.raises(SweepLocked, match="pid .* on elsewhere"):
        with sweep_lock(store, "http://127.0.0.1:5000", "p"):
            pass
