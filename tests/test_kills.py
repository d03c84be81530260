"""SIGKILL of a sweep at random points, then a new run: the journal resumes, and the registry ends
exactly as one uninterrupted sweep leaves it (tag and digest sets compared), each planned manifest
deleted once over both runs.

The same images go into a reference repository (swept without interruption, in-process) and into
one repository per seed (swept by the `regsweep` command, killed after a random number of journal
records or a random delay, then swept again). Seeds are fixed, so a failure reproduces.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tasks.config.models import load_config
from testbed import push_artifact, push_image, push_index
from tests.support.configs import SWEEP, config
from tests.support.sweeps import journal_events, plan_of, survivors, utcnow
from tests.support.registry import fault_proxy, unique_repo  # noqa: F401 (fixtures)

OLD = datetime(2024, 1, 1, tzinfo=timezone.utc)
FRESH = utcnow().replace(microsecond=0)
SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"
REGSWEEP = Path(sys.executable).parent / "regsweep"


def world(client, repo: str) -> None:
    """Eight old images (one signed), an old two-platform index and a fresh image."""
    for i in range(8):
        push_image(client, repo, f"b{i}", layers=[f"old {i}".encode()], config={"created": OLD})
    push_artifact(client, repo, subject="b0", artifact_type=SIG)
    arm = push_image(client, repo, None, layers=[b"arm"], config={"created": OLD, "architecture": "arm64"})
    amd = push_image(client, repo, None, layers=[b"amd"], config={"created": OLD})
    push_index(client, repo, "multi", [(arm, {"os": "linux", "architecture": "arm64"}),
                                       (amd, {"os": "linux", "architecture": "amd64"})])
    push_image(client, repo, "current", layers=[b"fresh"], config={"created": FRESH})


@pytest.fixture(scope="module")
def reference(registry, registry_client, tmp_path_factory, prefect_harness):
    """What one uninterrupted sweep leaves."""
    from flows.sweep import sweep_flow

    repo = f"kills/reference-{os.getpid()}"
    world(registry_client, repo)
    before = survivors(registry_client, repo)
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path_factory.mktemp("kill-ref")))
    report = sweep_flow(config=cfg, plan=plan_of(cfg), approve=True)
    after = survivors(registry_client, repo)
    assert report["failed"] == 0 and set(after) == {"current"}, after
    return before, after, report["deleted"]


@pytest.mark.parametrize("seed", [2, 5, 6, 8])   # kills after 16 and 29 records, 4.7 s and 5.8 s in
def test_a_sweep_killed_at_a_random_point_resumes_to_the_uninterrupted_end(
        seed, reference, prefect_api_url, registry_client, unique_repo, tmp_path, fault_proxy):
    rng = random.Random(seed)
    before, expected, deletions = reference
    c, repo = registry_client, unique_repo
    world(c, repo)
    assert survivors(c, repo) == before
    path = config(SWEEP, url=fault_proxy.url, repositories=[repo], sweep={"concurrency": rng.choice([1, 2, 4])},
                  write=tmp_path)
    cfg = load_config(path)
    plan = plan_of(cfg)
    fault_proxy.inject(delay=0.2, times=None, method="DELETE")   # deletions spread out in time
    # `planned` for every target comes first (one file), then `started` and `done` for each: kill
    # after a random number of those, or at a random moment (start-up, lock, re-check or deleting)
    mode = rng.choice(["records", "delay"])
    point = deletions + rng.randrange(1, 2 * deletions) if mode == "records" else rng.uniform(1.0, 6.0)

    env = {**os.environ, "PREFECT_API_URL": prefect_api_url}
    proc = subprocess.Popen([str(REGSWEEP), "sweep", "--config", str(path), "--plan", plan, "--yes"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    started = time.monotonic()
    while proc.poll() is None:
        if mode == "delay" and time.monotonic() - started >= point:
            break
        if mode == "records" and len(journal_events(cfg, plan)) >= point:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert killed or mode == "delay", "the sweep finished before the kill point"
    fault_proxy.clear()
    at_kill = journal_events(cfg, plan)

    again = subprocess.run([str(REGSWEEP), "sweep", "--config", str(path), "--plan", plan, "--yes"], env=env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)

    assert again.returncode == 0 and "Traceback" not in again.stderr, (mode, point, again.stderr)
    assert survivors(c, repo) == expected, (mode, point, killed, len(at_kill))
    events = journal_events(cfg, plan)
    done = [e["target"] for e in events if e["event"] == "done"]
    assert len(done) == len(set(done)) == deletions                  # each target done exactly once
    assert not any(e["event"] == "failed" for e in events)
    for target in done:   # one DELETE per target over both runs: nothing deleted twice, nothing skipped
        assert fault_proxy.count("DELETE", f"/manifests/{target}$") == 1, (target, mode, point)
