"""No deletion races: what changes in the registry while a sweep runs is seen before each DELETE.

Against the real Distribution registry, through tests/support/faults.py's FaultProxy: a DELETE
held at the proxy (or answered 503 with Retry-After) leaves time for someone to tag, promote or
index a target; the sweep must look at the repository again right before each DELETE, and again
before retrying one. A registry whose tag DELETE takes the manifest along is caught after the
first lone tag, and no further lone tag is deleted.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tasks.common.errors import SweepFailed
from tasks.config.models import load_config
from testbed import MANIFEST_ACCEPT, push_index, tag_manifest
from tests.support.faults import FaultProxy
from tests.support.configs import SWEEP, config
from tests.support.sweeps import (TARGET_DELETES, edit_plan, fresh, journal_events, old, plan_of, resolves_to,
                                  start_in_thread, status)

from tests.support.registry import fault_proxy, unique_repo  # noqa: F401,E402 (fixtures)
from tests.support.sweeps import sweep  # noqa: F401,E402 (fixtures)

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
    cfg = load_config(config(SWEEP, url=fault_proxy.url, repositories=[repo], sweep={"concurrency": 1}, write=tmp_path))
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
    cfg = load_config(config(SWEEP, url=fault_proxy.url, repositories=[repo], sweep={"concurrency": 1}, write=tmp_path))
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
    cfg = load_config(config(SWEEP, url=fault_proxy.url, repositories=[repo], sweep={"concurrency": 1}, write=tmp_path))
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


# --------------------------------------------------------------------------- a tag DELETE that is not one


class TagDeleteTakesTheManifest(FaultProxy):
    """A registry whose DELETE of a tag deletes the manifest the tag names, and so every tag on
    it, instead of the tag alone: Distribution behind a proxy that turns `DELETE
    /v2/<repo>/manifests/<tag>` into a DELETE by the digest the tag resolves to."""

    def __init__(self, upstream: str):
        super().__init__(upstream)
        self.tag_deletes: list[str] = []

    class handler(FaultProxy.handler):
        def do_DELETE(self):
            proxy = self.owner
            m = re.fullmatch(r"/v2/(.+)/manifests/([^/?:]+)", self.path)
            if m:
                repo, tag = m.groups()
                proxy.tag_deletes.append(tag)
                head = httpx.head(f"{proxy.upstream}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
                if head.status_code != 200:
                    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
                    return self.reply(404, body.encode(), {"Content-Type": "application/json"})
                self.path = f"/v2/{repo}/manifests/{head.headers['docker-content-digest']}"
            return self._any()


def test_a_lone_tag_delete_that_took_its_digest_stops_every_further_lone_tag_delete(
        sweep, registry, registry_client, unique_repo, tmp_path):
    c, repo = registry_client, unique_repo
    d = {old(c, repo, "old-1"): ("old-1", "release-1"), old(c, repo, "old-2"): ("old-2", "release-2")}
    for digest, (_, release) in d.items():
        tag_manifest(c, repo, digest, release)
    with TagDeleteTakesTheManifest(registry.url) as proxy:
        cfg = load_config(config(SWEEP, url=proxy.url, repositories=[repo], write=tmp_path))
        # Each digest keeps its release tag; its old tag goes alone. The capability probe (a
        # random tag, answered 404) says lone tags can be deleted.
        plan = edit_plan(cfg, plan_of(cfg), {"release-1": "keep", "release-2": "keep"})

        with pytest.raises(SweepFailed) as exc:
            sweep(cfg, plan, approve=True)

    first, second = sorted(d)   # lone tags go in digest order, one at a time until one proves safe
    first_tag, second_tag = d[first][0], d[second][0]
    assert [t for t in proxy.tag_deletes if not t.startswith("regsweep-capability-probe-")] == [first_tag]
    # The damage is the first lone tag's digest (found gone at once); the other digest is untouched.
    assert status(c, repo, first) == 404
    assert status(c, repo, second) == 200 and all(resolves_to(c, repo, t) == second for t in d[second])
    unsafe = (f"registry {proxy.url} deleted manifest {first} with tag {repo}:{first_tag}: its tag deletion is "
              "unsafe (it deletes the manifest and every tag on it, not the tag alone)")
    report = exc.value.report
    why = {o.ref: (o.status, o.detail) for o in report.outcomes}
    assert why[first_tag] == ("failed", f"{unsafe}; no further lone tag is deleted")
    assert why[second_tag] == ("skipped", f"not attempted: {unsafe}")
    assert report.notes["warnings"]["count"] == 1
    assert str(exc.value).startswith(f"1 deletions failed in {proxy.url} (first: {repo}@{first}: {unsafe}")
