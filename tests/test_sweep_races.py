"""No deletion races: what changes in the registry while a sweep runs is seen before each DELETE.

Against the real Distribution registry, through tests/support/faults.py's FaultProxy: a DELETE
held at the proxy (or answered 503 with Retry-After) leaves time for someone to tag, promote or
index a target; the sweep must look at the repository again right before each DELETE, and again
before retrying one.
"""

from __future__ import annotations

import time

from tasks.config.models import load_config
from testbed import push_index, tag_manifest
from tests.support.sweeps import (TARGET_DELETES, fresh, journal_events, old, plan_of, resolves_to,
                                  start_in_thread, status, write_config)

MOVED = "tag hotfix now points at it (pushed or moved after the snapshot)"


def outcome_of(report: dict, ref: str) -> tuple[str, str]:
    (o,) = [o for o in report["outcomes"] if o["ref"] == ref]
    return o["status"], o["detail"]


def finished(th, box) -> dict:
    th.join(120)
    assert not th.is_alive(), "the sweep did not finish"
    assert "error" not in box, box.get("error")
    return box["result"]


# --------------------------------------------------------------------------- while a DELETE is in flight


def test_a_tag_pushed_onto_a_target_while_an_earlier_delete_is_held_keeps_that_target(
        sweep, registry, registry_client, unique_repo, tmp_path, fault_proxy):
    c, repo = registry_client, unique_repo
    built = {old(c, repo, "build-1"): "build-1", old(c, repo, "build-2"): "build-2"}
    # Targets go in digest order: d1's DELETE is the first, d2 waits behind it (one at a time).
    d1, d2 = sorted(built)
    cfg = load_config(write_config(tmp_path, fault_proxy.url, repo, sweep={"concurrency": 1}))
    plan = plan_of(cfg)
    fault_proxy.hold(method="DELETE", path=TARGET_DELETES)

    th, box = start_in_thread(sweep, cfg=cfg, plan=plan, approve=True)
    fault_proxy.wait_held(1)
    assert fault_proxy.count("DELETE", f"/manifests/{d1}$") == 1
    tag_manifest(c, repo, d2, "hotfix")   # a hotfix is tagged onto d2 while d1's DELETE is in flight
    fault_proxy.release()
    report = finished(th, box)

    assert status(c, repo, d1) == 404
    assert resolves_to(c, repo, "hotfix") == d2 == resolves_to(c, repo, built[d2])   # hotfix still pulls
    assert fault_proxy.count("DELETE", f"/manifests/{d2}$") == 0
    assert outcome_of(report, d2) == ("skipped", MOVED)
    assert report["deleted"] == 1 and report["failed"] == 0
    ends = [(e["event"], e["detail"]) for e in journal_events(cfg, plan)
            if e["target"] == d2 and e["event"] in ("done", "skipped", "failed")]
    assert ends == [("skipped", MOVED)]


def test_an_index_pushed_over_a_target_while_an_earlier_delete_is_held_keeps_that_target(
        sweep, registry, registry_client, unique_repo, tmp_path, fault_proxy):
    c, repo = registry_client, unique_repo
    d1, d2 = sorted([old(c, repo, "build-1"), old(c, repo, "build-2")])
    cfg = load_config(write_config(tmp_path, fault_proxy.url, repo, sweep={"concurrency": 1}))
    plan = plan_of(cfg)
    fault_proxy.hold(method="DELETE", path=TARGET_DELETES)

    th, box = start_in_thread(sweep, cfg=cfg, plan=plan, approve=True)
    fault_proxy.wait_held(1)
    # No tag names d2 itself: a new multi-platform index lists it as its amd64 image.
    index = push_index(c, repo, "multi", [(d2, {"os": "linux", "architecture": "amd64"})])
    fault_proxy.release()
    report = finished(th, box)

    assert status(c, repo, d1) == 404
    assert status(c, repo, d2) == 200 and resolves_to(c, repo, "multi") == index
    assert fault_proxy.count("DELETE", f"/manifests/{d2}$") == 0
    assert outcome_of(report, d2) == ("skipped", f"listed by index {index}, pushed after the snapshot")


def test_a_target_tagged_while_its_delete_waits_out_a_503_is_not_sent_again(
        sweep, registry, registry_client, unique_repo, tmp_path, fault_proxy):
    c, repo = registry_client, unique_repo
    d1 = old(c, repo, "build-1")
    kept = fresh(c, repo, "current")
    cfg = load_config(write_config(tmp_path, fault_proxy.url, repo, sweep={"concurrency": 1}))
    plan = plan_of(cfg)
    fault_proxy.inject(503, retry_after=3, times=1, method="DELETE", path=f"/manifests/{d1}$")

    th, box = start_in_thread(sweep, cfg=cfg, plan=plan, approve=True)
    deadline = time.monotonic() + 120
    while not any(m == "DELETE" for m, _, _ in fault_proxy.faulted):
        assert time.monotonic() < deadline and th.is_alive(), "no DELETE was answered 503"
        time.sleep(0.02)
    tag_manifest(c, repo, d1, "hotfix")   # during the 3 s the registry asked the sweep to wait
    report = finished(th, box)

    assert resolves_to(c, repo, "hotfix") == d1 and status(c, repo, "build-1") == 200
    assert status(c, repo, kept) == 200
    assert fault_proxy.count("DELETE", f"/manifests/{d1}$") == 1   # the answered-503 one; no retry went out
    assert outcome_of(report, d1) == ("skipped", MOVED)
    assert report["retries"]["count"] == 1 and report["failed"] == 0
