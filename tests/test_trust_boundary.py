"""Deployment runs cannot be given rights: the configuration is the worker's, never a run's.

The flows are served (prefect `serve`, the same Runner a worker uses) against the session's
Prefect server from a process started with REGSWEEP_CONFIG_DIR; runs are created as the UI or the
API would create them, with hostile parameters. A loopback server on another address (127.0.0.2)
plays the attacker's host and records every request it gets.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from testbed.push import push_image

SECRET = "sentinel-worker-secret-7f3a"
SERVE = textwrap.dedent("""
    import sys
    from prefect import serve
    from flows.history import growth_flow
    from flows.plan import plan_flow
    from flows.snapshot import snapshot_flow
    from flows.sweep import sweep_flow
    serve(snapshot_flow.to_deployment("trust", parameters={"config": "team"}),
          sweep_flow.to_deployment("trust", parameters={"config": "team"}),
          plan_flow.to_deployment("trust", parameters={"config": "team"}),
          growth_flow.to_deployment("trust", parameters={"config": "team"}))
""")


class Recorder(ThreadingHTTPServer):
    """The attacker's host: answers every request with a Basic challenge and keeps what it was sent."""

    def __init__(self):
        self.seen: list[tuple[str, str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                recorder.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="evil"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_POST = do_GET

            def log_message(self, *a):
                pass

        super().__init__(("127.0.0.2", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.2:{self.server_address[1]}"


@pytest.fixture(scope="module")
def evil():
    server = Recorder()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def worker_configs(tmp_path_factory, registry, evil):
    """The worker's directory of configurations: `team` scans the test registry; a secret file sits beside."""
    d = tmp_path_factory.mktemp("worker-configs")
    (d / "secret.txt").write_text(SECRET + "\n")
    team = {"store": str(d / "store"), "registry": {"url": registry.url, "repositories": ["trust/*"]},
            "helm": {"enabled": False},
            "cleanup": {"disableKubernetesBasedPolicy": True, "disableGitHistoryBasedPolicy": True}}
    (d / "team.yaml").write_text(yaml.safe_dump(team))
    (d / "unattended.yaml").write_text(yaml.safe_dump({**team, "store": str(d / "store-unattended"),
                                                       "sweep": {"upFrontApproval": True, "maxDeletions": 5}}))
    return d


@pytest.fixture(scope="module")
def served(prefect_api_url, worker_configs):
    """The flows served from a process that holds the worker's configurations."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "REGSWEEP_CONFIG_DIR": str(worker_configs),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PYTHONPATH": str(root)}
    log = open(worker_configs / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", SERVE], env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while True:
            try:
                for name in ("regsweep-snapshot/trust", "regsweep-plan/trust", "regsweep-history/trust",
                             "regsweep-sweep/trust"):
                    client.read_deployment_by_name(name)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    pytest.fail("serve did not register the deployments:\n" + (worker_configs / "serve.log").read_text())
                time.sleep(1)
    yield proc
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _run(name: str, parameters: dict):
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=parameters, timeout=240, poll_interval=1)


def test_a_deployment_run_given_a_whole_configuration_is_refused_and_sends_nothing(served, evil, worker_configs):
    hostile = {"store": str(worker_configs / "elsewhere"),
               "registry": {"url": evil.url, "allowInsecureCredentials": True,   # the attacker sets what it likes
                            "auth": {"username": "x", "password_file": str(worker_configs / "secret.txt")}},
               "helm": {"enabled": False},
               "cleanup": {"disableKubernetesBasedPolicy": True, "disableGitHistoryBasedPolicy": True}}
    run = _run("regsweep-snapshot/trust", {"config": hostile})
    assert run.state.is_failed()
    assert "a deployment run takes the name of a configuration the worker holds" in run.state.message
    assert evil.seen == []
    assert not (worker_configs / "elsewhere").exists()


@pytest.mark.parametrize("name", ["../team", "/etc/passwd", "team.yaml", "s3://bucket/x", "Team"])
def test_a_configuration_name_that_is_a_path_is_refused(served, name):
    run = _run("regsweep-plan/trust", {"config": name})
    assert run.state.is_failed()
    assert "must name a configuration the worker holds" in run.state.message


def test_a_name_the_worker_does_not_hold_is_refused(served):
    run = _run("regsweep-plan/trust", {"config": "nosuch"})
    assert run.state.is_failed()
    assert "the worker holds no configuration named 'nosuch'" in run.state.message


def test_a_parameter_the_flow_does_not_declare_is_refused(served, worker_configs):
    target = worker_configs / "overwritten.png"
    run = _run("regsweep-history/trust", {"config": "team", "chart": str(target)})
    assert run.state.is_failed() or run.state.is_crashed()   # Prefect refuses the parameter before the flow runs
    assert not target.exists()


def test_the_worker_s_own_configuration_runs(served, registry_client, worker_configs):
    push_image(registry_client, "trust/app", "v1")
    run = _run("regsweep-snapshot/trust", {"config": "team"})
    assert run.state.is_completed(), run.state.message
    published = list((worker_configs / "store" / "snapshots").glob("*/snapshot.json"))
    assert len(published) == 1 and '"complete": true' in published[0].read_text()


def test_a_deployment_run_cannot_approve_up_front_unless_the_worker_s_configuration_allows_it(served):
    run = _run("regsweep-sweep/trust", {"config": "team", "approve": True})
    assert run.state.is_failed()
    assert "approve: a deployment run cannot approve up front" in run.state.message
    # the worker's own configuration may allow it: the run then gets past the gate (and finds no plan)
    run = _run("regsweep-sweep/trust", {"config": "unattended", "approve": True, "max_deletions": 5})
    assert run.state.is_failed() and "no plans yet" in run.state.message


def test_a_deployment_run_cannot_raise_the_deletion_cap_above_the_worker_s(served):
    run = _run("regsweep-sweep/trust", {"config": "unattended", "approve": True, "max_deletions": 1_000_000})
    assert run.state.is_failed()
    assert "max_deletions: above the worker's sweep.maxDeletions (5): refused" in run.state.message
