"""`make demo`: the whole product on one machine, up until Ctrl-C.

A Prefect server (SQLite, loopback) and a process worker; a local registry seeded from a git
history with main, a release branch with tags, an active and a stale feature branch; two
clusters and a Helm history as kubectl dumps (offline input); the deployments of
deployments/prefect.yaml registered with the demo's configuration; one snapshot → plan → sweep
cycle run through them, the sweep paused for approval in the UI. Everything lives under
./var/demo: the store and Prefect's database persist between runs (history grows), the registry,
git repository and dumps are rebuilt. A run left over from an earlier demo is cancelled.
The demo infrastructure is the rest of testbed/ (demo.py: the sample world, prefect.py: server
and worker), which is why this driver lives here and not in the product's flows/.

    python -m testbed.rundemo [--until-paused]

`--until-paused` stops everything as soon as the instructions are printed (a quick check).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from flows.prefect_env import set_defaults

ROOT = Path(__file__).resolve().parents[1]
POOL = "regsweep-demo"
DEPLOYMENTS = {"snapshot": "regsweep-snapshot/snapshot-hourly", "plan": "regsweep-plan/plan-daily",
               "sweep": "regsweep-sweep/sweep-approved"}


def _port(preferred: int = 4200) -> int | None:
    """Prefect's usual port when it is free, else None (any free port)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return None
    return preferred


def demo_config(base: Path, registry_url: str, dumps: dict[str, list[Path]]) -> dict:
    """The demo's configuration: werf's default policies, the dumps as cluster input."""
    from testbed.demo import ALIAS

    return {
        "store": str(base / "store"),
        "registry": {"url": registry_url, "aliases": [ALIAS], "concurrency": 8},
        "link": {"tagPatterns": ["^sha-(?P<commit>[0-9a-f]{7,40})$"]},
        "git": {"path": str(base / "git")},
        "kubernetes": {"dumps": [{"file": str(p), "context": p.stem} for p in dumps["kubernetes"]]},
        "helm": {"dumps": [{"file": str(p), "context": "prod"} for p in dumps["helm"]]},
        "cleanup": {
            "keepPolicies": [
                {"references": {"tag": "/.*/", "limit": {"last": 10}}},
                {"references": {"branch": "/.*/", "limit": {"last": 10, "in": "168h", "operator": "And"}},
                 "imagesPerReference": {"last": 2, "in": "168h", "operator": "And"}},
                {"references": {"branch": "/^(main|master)$/"}, "imagesPerReference": {"last": 5}},
            ],
            "keepImagesBuiltWithinLastNHours": 2,
        },
        "sweep": {"maxPlanAge": "24h", "approvalTimeout": "24h"},
    }


def _say(line: str = "") -> None:
    print(line, flush=True)


def _note(line: str) -> None:
    print(f"demo: {line}", file=sys.stderr, flush=True)


class _Stop(Exception):
    pass


def _on_signal(signum, frame):
    raise _Stop()


def run_cycle(server) -> dict:
    """Snapshot and plan through their deployments (waiting for each), then the sweep up to its pause."""
    from prefect.deployments import run_deployment

    from testbed.prefect import PrefectProcessError, wait_for_run

    out = {}
    for step in ("snapshot", "plan"):
        run = run_deployment(DEPLOYMENTS[step], timeout=0, _sync=True)
        run = wait_for_run(run.id, timeout=300)
        if not run.state.is_completed():
            raise PrefectProcessError(f"the {step} run {server.run_url(run.id)} ended {run.state.name}: {run.state.message}")
        out[step] = run
        _note(f"{step} run {run.name}: {run.state.name}")
    run = run_deployment(DEPLOYMENTS["sweep"], timeout=0, _sync=True)
    out["sweep"] = wait_for_run(run.id, until="paused", timeout=300)
    _note(f"sweep run {run.name}: paused for approval")
    return out


def instructions(server, registry_url: str, summary: dict, history, config: dict, config_path: Path,
                 runs: dict) -> list[str]:
    """What a newcomer reads: where everything is, what to click, what explain and history say."""
    from tasks.config.models import load_config
    from tasks.history.growth import growth_report, render_text
    from tasks.plan.explain import explain
    from tasks.store.store import Store
    from tasks.sweep.report import bytes_text

    cfg = load_config(config_path)
    store = Store(cfg.store)
    plan_id = store.plans.resolve("latest")
    meta = store.plans.meta(plan_id)
    rel = os.path.relpath(config_path)
    sweep = runs["sweep"]
    dumps = ", ".join(os.path.relpath(d["file"]) for d in config["kubernetes"]["dumps"] + config["helm"]["dumps"])
    lines = [
        "",
        "regsweep demo is up; Ctrl-C stops all of it.",
        "",
        f"  Prefect UI     {server.ui_url}",
        f"  registry       {registry_url}: {len(summary['repositories'])} repositories, {summary['tags']} tags "
        f"(clusters call it {config['registry']['aliases'][0]})",
        f"  cluster input  {dumps}",
        f"  configuration  {rel}",
        "",
        f"Ran through the deployments of deployments/prefect.yaml (work pool {POOL}, schedules paused):",
        f"  snapshot-hourly  {runs['snapshot'].state.name:9}  snapshot {meta['snapshot_id']}",
        f"  plan-daily       {runs['plan'].state.name:9}  plan {plan_id}: delete {meta['delete']} of "
        f"{meta['rows']} rows, {bytes_text(meta['image_bytes_deleted'], meta['bytes_reclaimable'])}",
        f"  sweep-approved   {'Paused':9}  waiting for your approval",
        "",
        "Approve (or reject) the sweep in the browser:",
        f"  1. open {server.run_url(sweep.id)}",
        "  2. click \"Resume\" (top right): the form lists, per repository, what goes and why",
        "  3. switch \"Approve these deletions\" on (leave it off to reject), type your name, click \"Submit\"",
        "  The sweep re-checks every tag and the cluster dumps, deletes, and this terminal prints the result.",
        "",
        "Meanwhile, from another terminal in this directory:",
    ]
    web = f"demo/web:sha-{history.sha('main', 6)[:12]}"          # in use, and a Helm revision
    stale = f"demo/api:sha-{history.sha('feature/search-v1', 1)[:12]}"   # a stale branch's: deleted
    for ref in (web, stale):
        lines += [f"  $ .venv/bin/regsweep explain --config {rel} {ref}"]
        lines += [f"    {line}" for line in explain(cfg, ref, plan_id)[1:]]
    lines += [f"  $ PREFECT_API_URL={server.api_url} .venv/bin/regsweep history --config {rel}"]
    lines += [f"    {line}" for line in render_text(growth_report(store)).splitlines()]
    return lines


def watch(server, sweep_id) -> None:
    """Until Ctrl-C: report once what became of the paused sweep."""
    from prefect.client.orchestration import get_client

    reported = False
    with get_client(sync_client=True) as client:
        while True:
            time.sleep(2)
            if reported:
                continue
            state = client.read_flow_run(sweep_id).state
            if state is not None and state.is_final():
                _say(f"\nsweep {state.name.lower()}: {state.message or ''}".rstrip(": "))
                _say(f"  details: {server.run_url(sweep_id)} (Artifacts tab); Ctrl-C stops the demo")
                reported = True


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C (or, with `--until-paused`, until the sweep waits for approval); exit code."""
    args = sys.argv[1:] if argv is None else argv
    base = Path("var/demo").resolve()
    home = base / "prefect"
    from testbed import LocalRegistryError
    from testbed.prefect import PrefectProcessError, PrefectServer

    server = PrefectServer(home, port=_port())
    # Prefect's client in this process talks to the demo's server, quietly.
    set_defaults(PREFECT_HOME=str(home))
    os.environ["PREFECT_API_URL"] = server.api_url
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    started = time.monotonic()
    worker = registry = None
    code = 0
    try:
        server.start(wait=False)   # the slowest to start: it comes up while the rest is built
        import yaml

        from testbed import LocalRegistry
        from testbed.demo import build_history, seed_demo, write_dumps
        from testbed.prefect import Worker, cancel_runs, deploy, deployment_file, hold_config

        now = datetime.now(timezone.utc).replace(microsecond=0)
        history = build_history(base / "git", now)
        shutil.rmtree(base / "registry", ignore_errors=True)   # rebuilt each run, like the git history
        registry = LocalRegistry(base / "registry", log_level="warn").start()
        summary = seed_demo(registry.url, history)
        dumps = write_dumps(base / "cluster", history, summary)
        config = demo_config(base, registry.url, dumps)
        config_path = base / "regsweep.yaml"
        config_path.write_text("# Written by `make demo` (testbed/rundemo.py); rewritten on every run.\n"
                               + yaml.safe_dump(config, sort_keys=False))
        _note(f"registry {registry.url}: {summary['tags']} tags; waiting for the Prefect server")
        server.wait_healthy()
        left = cancel_runs()
        if left:
            _note(f"cancelled {left} run(s) left over from an earlier demo")
        hold_config(base / "worker-configs", "demo", config)   # the worker holds it; the deployments name it
        prefect_file = deployment_file(ROOT / "deployments" / "prefect.yaml", base / "prefect.yaml", config="demo",
                                       pool=POOL, sweep={"approval_poll_interval": 2})
        deploy(prefect_file, POOL, home, server.api_url, ROOT)
        worker = Worker(server, POOL, home, env={"REGSWEEP_HOME": str(ROOT),
                                                 "REGSWEEP_CONFIG_DIR": str(base / "worker-configs")}).start()
        runs = run_cycle(server)
        for line in instructions(server, registry.url, summary, history, config, config_path, runs):
            _say(line)
        _note(f"ready in {time.monotonic() - started:.0f} s")
        if "--until-paused" in args:
            return code
        watch(server, runs["sweep"].id)
    except _Stop:
        pass
    except (PrefectProcessError, LocalRegistryError) as e:
        _note(f"error: {e}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not cut the clean-up short
        _note("stopping")
        if server.running:
            try:
                from testbed.prefect import cancel_runs

                cancel_runs()
            except Exception as e:  # the server may be what failed
                _note(f"could not cancel runs: {e}")
        for service in (worker, server):
            if service is not None:
                service.stop()
        if registry is not None:
            registry.stop()
        _note("stopped: nothing left running")
    return code


if __name__ == "__main__":
    sys.exit(main())
