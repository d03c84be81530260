"""Two sweeps at once: exactly one proceeds, the other exits 1 naming the holder, nothing is
deleted twice and the journal stays consistent — on a local store and on S3 (moto on loopback),
from two CLI runs and from a CLI run beside a deployment run.

The proxy in front of the registry holds the winner's first DELETE at a gate until the loser has
given up, so the two runs overlap whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tasks.config.models import load_config
from tasks.common.errors import SweepLocked
from tasks.sweep.lock import lock_path, sweep_lock
from tasks.store.store import Store
from tests.support.configs import SWEEP, config
from tests.support.sweeps import journal_events, old, plan_of, status
from tests.support.registry import fault_proxy, unique_repo  # noqa: F401 (fixtures)
from tests.support.s3 import s3_store  # noqa: F401 (fixtures)

REGSWEEP = Path(sys.executable).parent / "regsweep"


def test_an_s3_lock_has_exactly_one_holder_however_many_race_for_it(s3_store):
    store = Store(s3_store)
    assert store.atomic_create
    for round_ in range(3):
        barrier, won, refused = threading.Barrier(6), [], []
        release = threading.Event()

        def contender(i: int) -> None:
            barrier.wait()
            try:
                with sweep_lock(store, "https://registry.example.com", f"plan-{i}"):
                    won.append(i)
                    release.wait(30)
            except SweepLocked as e:
                refused.append(str(e))

        threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        while len(won) + len(refused) < 6 and not (won and len(refused) == 5):
            threading.Event().wait(0.05)
        release.set()
        for t in threads:
            t.join(30)
        assert len(won) == 1 and len(refused) == 5, (round_, won, refused)
        assert all(f"plan plan-{won[0]}" in m and f"pid {os.getpid()}" in m for m in refused)
        assert not store.fs.exists(lock_path(store, "https://registry.example.com"))   # released


def test_a_dead_sweeps_s3_lock_is_taken_over_and_another_hosts_is_not(s3_store):
    store = Store(s3_store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = lock_path(store, "http://127.0.0.1:5000")
    store.write_json(path, {"pid": dead.pid, "host": os.uname().nodename, "since": "2026-01-01T00:00:00+00:00"})
    with sweep_lock(store, "http://127.0.0.1:5000", "p") as owner:
        assert json.loads(store.read_versioned(path)[0])["pid"] == owner["pid"] == os.getpid()
    store.write_json(path, {"pid": dead.pid, "host": "elsewhere", "since": "2026-01-01T00:00:00+00:00"})
    with pytest.raises(SweepLocked, match="pid .* on elsewhere"):
        with sweep_lock(store, "http://127.0.0.1:5000", "p"):
            pass


def _start(path: Path, plan: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(REGSWEEP), "sweep", "--config", str(path), "--plan", plan, "--yes"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def _config(tmp_path, url, repo, store: str | None) -> Path:
    # A long registry timeout: the winner's DELETE waits at the gate meanwhile.
    return config(SWEEP, store=store, url=url, repositories=[repo], registry={"timeout": 300}, write=tmp_path)


def _check_end(cfg, plan, doomed, kept, proxy, client, repo) -> None:
    assert all(status(client, repo, d) == 404 for d in doomed) and status(client, repo, kept) == 200
    for d in doomed:  # nothing deleted twice
        assert proxy.count("DELETE", f"/manifests/{d}$") == 1, d
    events = journal_events(cfg, plan)
    done = [e["target"] for e in events if e["event"] == "done"]
    started = [e["target"] for e in events if e["event"] == "started"]
    assert sorted(done) == sorted(doomed) and sorted(started) == sorted(doomed)   # once each, nothing failed
    assert not any(e["event"] == "failed" for e in events)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_cli_sweeps_at_once_one_proceeds_the_other_exits_1_naming_it(
        where, prefect_api_url, registry, registry_client, unique_repo, tmp_path, fault_proxy, request):
    c, repo = registry_client, unique_repo
    doomed = [old(c, repo, f"b{i}") for i in range(4)]
    from tests.support.sweeps import fresh

    kept = fresh(c, repo, "current")
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url}
    store = None
    if where == "s3":
        store = request.getfixturevalue("s3_store")
        env.update(request.getfixturevalue("s3_env"))
    path = _config(tmp_path, fault_proxy.url, repo, store)
    cfg = load_config(path)
    plan = plan_of(cfg)
    fault_proxy.hold(method="DELETE")

    first, second = _start(path, plan, env), _start(path, plan, env)
    fault_proxy.wait_held(1, timeout=240)      # one of them holds the lock and is deleting
    loser = None
    while loser is None:
        for p in (first, second):
            if p.poll() is not None:
                loser = p
                break
        else:
            threading.Event().wait(0.1)
    out, err = loser.communicate()
    fault_proxy.release()
    winner = second if loser is first else first
    w_out, w_err = winner.communicate(timeout=240)

    assert loser.returncode == 1 and "Traceback" not in err, err
    assert out.strip().splitlines()[-1] == "refused: deleted nothing"
    assert err.strip().splitlines() == [err.strip()]
    assert f"another sweep of {fault_proxy.url} is running: pid {winner.pid} on {os.uname().nodename}, plan {plan}" in err
    assert winner.returncode == 0, w_err
    assert w_out.strip().splitlines()[-1].startswith(f"deleted {len(doomed)} manifests (")
    _check_end(cfg, plan, doomed, kept, fault_proxy, c, repo)
    assert not Store(cfg.store).fs.exists(lock_path(Store(cfg.store), cfg.registry.url))


def test_a_cli_sweep_beside_a_deployment_run_of_the_sweep(prefect_api_url, registry, registry_client, unique_repo,
                                                          tmp_path, fault_proxy):
    """The deployment (deployments/prefect.yaml's sweep flow, served by `flow.serve`) holds the lock;
    the CLI run exits 1 naming it; released, the deployment run completes and deletes each once."""
    from prefect.deployments import run_deployment

    from tests.support.sweeps import fresh

    c, repo = registry_client, unique_repo
    doomed = [old(c, repo, f"b{i}") for i in range(3)]
    kept = fresh(c, repo, "current")
    path = _config(tmp_path, fault_proxy.url, repo, None)
    held = yaml.safe_load(path.read_text())   # the worker holds it, and lets its deployment runs approve up front
    held.setdefault("sweep", {})["upFrontApproval"] = True
    path.write_text(yaml.safe_dump(held))
    cfg = load_config(path)
    plan = plan_of(cfg)
    entry = yaml.safe_load(Path("deployments/prefect.yaml").read_text())
    sweep_dep = next(d for d in entry["deployments"] if d["entrypoint"] == "flows/sweep.py:sweep_flow")
    name = f"sweep-{os.getpid()}-{repo.rsplit('-', 1)[-1]}"
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "REGSWEEP_CONFIG_DIR": str(path.parent)}
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; from flows.sweep import sweep_flow; "
                               "sweep_flow.serve(name=sys.argv[1], limit=2, print_starting_message=False)", name],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        fault_proxy.hold(method="DELETE")
        parameters = {"config": path.stem, "plan": plan, "approve": True}
        assert sweep_dep["entrypoint"] == "flows/sweep.py:sweep_flow"   # the flow served here
        run = _wait_for_deployment_then_run(f"regsweep-sweep/{name}", parameters, run_deployment, server)
        _wait_held_while_running(fault_proxy, run.id, server)
        cli = subprocess.run([str(REGSWEEP), "sweep", "--config", str(path), "--plan", plan, "--yes"], env=env,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=240)
        fault_proxy.release()
        assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
        assert f"another sweep of {fault_proxy.url} is running: pid " in cli.stderr and f"plan {plan}" in cli.stderr
        assert cli.stdout.strip().splitlines()[-1] == "refused: deleted nothing"
        state = _wait_final(run.id)
        assert state.is_completed(), state
        _check_end(cfg, plan, doomed, kept, fault_proxy, c, repo)
    finally:
        fault_proxy.release()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def _wait_for_deployment_then_run(full_name: str, parameters: dict, run_deployment, server: subprocess.Popen):
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for _ in range(1200):
            assert server.poll() is None, server.stderr.read()
            try:
                client.read_deployment_by_name(full_name)
                break
            except ObjectNotFound:
                threading.Event().wait(0.1)
    return run_deployment(full_name, parameters=parameters, timeout=0)


def _wait_held_while_running(proxy, run_id, server, timeout: float = 240) -> None:
    """Until the deployment run's first DELETE waits at the proxy's gate; fail at once if the run ends."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for _ in range(int(timeout * 10)):
            if proxy.held:
                return
            state = client.read_flow_run(run_id).state
            assert state is None or not state.is_final(), (state, server.stderr.read() if server.poll() else "")
            threading.Event().wait(0.1)
    raise AssertionError(f"the deployment run {run_id} sent no DELETE within {timeout}s")


def _wait_final(run_id, timeout: float = 240):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for _ in range(int(timeout * 10)):
            state = client.read_flow_run(run_id).state
            if state is not None and state.is_final():
                return state
            threading.Event().wait(0.1)
    raise AssertionError(f"flow run {run_id} did not finish within {timeout}s")
