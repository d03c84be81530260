"""The sweep flow run for real: Prefect's approval gate, one sweep at a time, the CLI, and a kill -9.

Flows run against the session's Prefect server (`prefect_harness`); approvals and rejections
go through Prefect's API exactly as the UI sends them (`resume_flow_run` with run input).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tasks.config.models import load_config
from tasks.common.errors import PlanRefused, SweepLocked, SweepNotApproved
from tasks.common.units import parse_time, utcnow
from tasks.store.store import Store
from tests.support.configs import SWEEP, config
from tests.support.sweeps import (TARGET_DELETES, fresh, journal_events, make_plan, old, plan_of, start_in_thread,
                                  status, take_snapshot)
from tests.support.registry import fault_proxy, unique_repo  # noqa: F401 (fixtures)


def wait_for_approval_form(plan_id: str, timeout: float = 60):
    """The paused sweep run of `plan_id` once its input form (schema) is stored."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.input.actions import read_flow_run_input

    deadline = time.monotonic() + timeout
    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run in client.read_flow_runs(flow_run_filter=paused):
                keyset = run.state.state_details.run_input_keyset if run.state else None
                if run.parameters.get("plan") == plan_id and keyset:
                    if read_flow_run_input(keyset["schema"], flow_run_id=run.id) is not None:
                        return run, read_flow_run_input(keyset["description"], flow_run_id=run.id)
            time.sleep(0.2)
    raise AssertionError(f"no paused sweep of plan {plan_id} within {timeout}s")


def final_state(run_id):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def test_approval_through_prefect_api_deletes_and_a_second_sweep_meanwhile_is_refused(
        prefect_harness, registry, registry_client, unique_repo, tmp_path, capfd):
    from prefect.flow_runs import resume_flow_run

    from flows.sweep import sweep_flow

    c, repo = registry_client, unique_repo
    doomed = [old(c, repo, t) for t in ("build-1", "build-2")]
    kept = fresh(c, repo, "build-3")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = plan_of(cfg)

    th, box = start_in_thread(sweep_flow, config=cfg, plan=plan, approval_poll_interval=1)
    run, description = wait_for_approval_form(plan)
    # The form shows what will go: tags, digests and bytes per repository (tests/test_approval_form.py).
    assert "build-1" in description and doomed[0][:19] + "…" in description and "2 manifests (" in description
    assert f"### {repo}\n\n2 manifests, 2 tags, " in description
    assert str(run.id) in capfd.readouterr().err  # the CLI user is told where to approve

    # Meanwhile, a second sweep of the same registry refuses at once and deletes nothing.
    with pytest.raises(SweepLocked, match=f"another sweep of {registry.url} is running"):
        sweep_flow(config=cfg, plan=plan, approve=True)
    assert all(status(c, repo, d) == 200 for d in doomed)

    resume_flow_run(run.id, run_input={"approve": True, "approver": "alice", "comment": "old builds"})
    th.join(60)
    assert "error" not in box, box.get("error")
    assert box["result"]["summary"].startswith("deleted 2 manifests (")
    assert all(status(c, repo, d) == 404 for d in doomed) and status(c, repo, kept) == 200
    assert final_state(run.id).is_completed()


def test_rejection_through_prefect_api_deletes_nothing(prefect_harness, registry, registry_client, unique_repo,
                                                       tmp_path):
    from prefect.flow_runs import resume_flow_run

    from flows.sweep import sweep_flow

    c, repo = registry_client, unique_repo
    doomed = [old(c, repo, t) for t in ("a", "b")]
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = plan_of(cfg)

    th, box = start_in_thread(sweep_flow, config=cfg, plan=plan, approval_poll_interval=1)
    run, _ = wait_for_approval_form(plan)
    resume_flow_run(run.id, run_input={"approve": False, "approver": "bob", "comment": "not before the release"})
    th.join(60)

    assert isinstance(box.get("error"), SweepNotApproved)
    assert str(box["error"]) == f"sweep of plan {plan} rejected by bob (not before the release): nothing was deleted"
    state = final_state(run.id)
    assert state.is_failed() and "rejected by bob" in state.message
    assert all(status(c, repo, d) == 200 for d in doomed)
    assert not any(e["event"] == "started" for e in journal_events(cfg, plan))
    # The lock went with the run: the next sweep may proceed.
    assert sweep_flow(config=cfg, plan=plan, approve=True)["deleted"] == 2


def test_approval_timeout_deletes_nothing(prefect_harness, registry, registry_client, unique_repo, tmp_path):
    from flows.sweep import sweep_flow

    c, repo = registry_client, unique_repo
    d = old(c, repo, "a")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], sweep={"approvalTimeout": "2s"},
                             write=tmp_path))
    plan = plan_of(cfg)

    with pytest.raises(SweepNotApproved, match=r"no approval for plan .* within sweep.approvalTimeout 2s: nothing was deleted"):
        sweep_flow(config=cfg, plan=plan, approval_poll_interval=1)
    assert status(c, repo, d) == 200


# --------------------------------------------------------------------------- the command line


def test_dry_run_flow_reports_what_would_go(prefect_harness, registry, registry_client, unique_repo, tmp_path):
    from flows.sweep import sweep_flow

    c, repo = registry_client, unique_repo
    doomed = [old(c, repo, t) for t in ("a", "b", "c")]
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = plan_of(cfg)

    result = sweep_flow(config=cfg, plan=plan, dry_run=True)  # no approval needed: nothing is deleted

    assert result["summary"].startswith("dry run: would delete 3 manifests (") and result["dry_run"]
    assert all(status(c, repo, d) == 200 for d in doomed)
    assert journal_events(cfg, plan) == []


def test_cli_over_max_deletions_exits_1_and_deletes_nothing(run_cli, registry, registry_client, unique_repo, tmp_path):
    c, repo = registry_client, unique_repo
    doomed = [old(c, repo, t) for t in ("a", "b", "c")]
    path = config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path)
    plan = plan_of(load_config(path))

    over = run_cli("sweep", "--config", path, "--plan", plan, "--yes", "--max-deletions", "2")

    assert over.returncode == 1
    assert over.stdout.strip().splitlines()[-1] == "not approved: deleted nothing"
    assert over.stderr.strip() == (f"regsweep: error: plan {plan} would delete 3 manifests/tags in {registry.url}, "
                                   "more than the 2 that approval up front (--yes) covers: nothing was deleted. "
                                   "Approve it in the Prefect UI (run without --yes) or raise --max-deletions.")
    assert all(status(c, repo, d) == 200 for d in doomed)


def test_sweep_killed_midway_resumes_from_the_journal(prefect_api_url, run_cli, registry, registry_client,
                                                      unique_repo, tmp_path, fault_proxy):
    import sys

    c, repo = registry_client, unique_repo
    doomed = [old(c, repo, f"b{i:02d}") for i in range(10)]
    kept = fresh(c, repo, "current")
    path = config(SWEEP, url=fault_proxy.url, repositories=[repo], sweep={"concurrency": 2}, write=tmp_path)
    cfg = load_config(path)
    plan = plan_of(cfg)
    fault_proxy.inject(delay=0.5, times=None, method="DELETE")  # slow deletes: time to kill mid-way

    exe = Path(sys.executable).parent / "regsweep"
    proc = subprocess.Popen([str(exe), "sweep", "--config", str(path), "--plan", plan, "--yes"],
                            env={**os.environ, "PREFECT_API_URL": prefect_api_url},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while sum(e["event"] == "done" for e in journal_events(cfg, plan)) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sweep never got going"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    fault_proxy.clear()
    events = journal_events(cfg, plan)
    done_before = {e["target"] for e in events if e["event"] == "done"}
    assert 3 <= len(done_before) < len(doomed)
    assert any(e["event"] == "started" and e["target"] not in done_before for e in events)  # killed mid-request
    # Every DELETE that reached the registry had been journalled `started` first.
    requested = {path.rsplit("/", 1)[1] for method, path in fault_proxy.requests
                 if method == "DELETE" and re.search(TARGET_DELETES, path)}
    assert requested and requested <= {e["target"] for e in events if e["event"] == "started"}

    again = run_cli("sweep", "--config", path, "--plan", plan, "--yes")

    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    last = again.stdout.strip().splitlines()[-1]
    assert f"({len(done_before)} deleted by an earlier run of plan {plan})" in last
    assert last.endswith(f"skipped 0, failed 0 ({len(done_before)} deleted by an earlier run of plan {plan})")
    assert all(status(c, repo, d) == 404 for d in doomed) and status(c, repo, kept) == 200
    # Exactly one DELETE per planned manifest over both runs: nothing deleted twice, nothing skipped.
    for d in doomed:
        assert fault_proxy.count("DELETE", f"/manifests/{d}$") == 1, d
    assert fault_proxy.count("DELETE", TARGET_DELETES) == len(doomed)
    events = journal_events(cfg, plan)
    assert {e["target"] for e in events if e["event"] == "done"} == set(doomed)
    assert list(Path(Store(cfg.store).path("locks")).glob("*.lock")) == []  # the dead run's lock was taken over


def test_cli_store_that_cannot_hold_the_journal_exits_1_naming_the_path(run_cli, registry, registry_client,
                                                                        unique_repo, tmp_path):
    c, repo = registry_client, unique_repo
    doomed = [old(c, repo, t) for t in ("a", "b")]
    path = config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path)
    cfg = load_config(path)
    plan = plan_of(cfg)
    blocker = Path(Store(cfg.store).path("journal"))
    blocker.write_text("a file where the store needs a directory")

    r = run_cli("sweep", "--config", path, "--plan", plan, "--yes")

    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and str(blocker) in r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"failed: store error; journal/{plan} in the store records every deletion made"
    assert all(status(c, repo, d) == 200 for d in doomed)


def test_a_plan_that_ages_past_max_plan_age_while_awaiting_approval_is_refused_after_it(
        prefect_harness, registry, registry_client, unique_repo, tmp_path):
    """The plan's age is checked when the sweep starts and again once approval came, before any DELETE."""
    from prefect.flow_runs import resume_flow_run

    from flows.sweep import sweep_flow

    c, repo = registry_client, unique_repo
    doomed = old(c, repo, "a")
    # Long enough for the snapshot, the plan and the flow's start on a loaded machine (the first
    # check must pass), short enough to wait out in a test.
    limit = 12
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], sweep={"maxPlanAge": f"{limit}s"}, write=tmp_path))
    sid = take_snapshot(cfg)
    plan = make_plan(cfg, sid)
    taken = parse_time(Store(cfg.store).snapshots.meta(sid)["created_at"])

    th, box = start_in_thread(sweep_flow, config=cfg, plan=plan, approval_poll_interval=1)
    run, _ = wait_for_approval_form(plan)
    assert utcnow() - taken < timedelta(seconds=limit), "the setup took longer than the plan may age"
    while utcnow() - taken <= timedelta(seconds=limit + 1):   # approval comes after the plan aged out
        time.sleep(0.2)
    resume_flow_run(run.id, run_input={"approve": True, "approver": "carol", "comment": ""})
    th.join(60)

    error = box.get("error")
    assert isinstance(error, PlanRefused), box
    assert str(error).startswith(f"plan {plan} is based on snapshot {sid} taken ")
    assert str(error).endswith(f"older than sweep.maxPlanAge {limit}s: take a new snapshot and plan; nothing was "
                               "deleted (checked again after approval, before the first DELETE)")
    assert status(c, repo, doomed) == 200
    assert not any(e["event"] in ("planned", "started") for e in journal_events(cfg, plan))
    assert final_state(run.id).is_failed()
