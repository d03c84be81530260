"""A real Prefect server and process worker on loopback, and deployments from prefect.yaml, for
`make demo` and the end-to-end tests.

Each runs `prefect ...` from this virtual environment in a session of its own (Ctrl-C in a
terminal reaches the demo, which then stops them in order) and is stopped with everything it
started: a worker runs each flow run as a child process, possibly in a new session, so the whole
process tree is collected before it is signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from testbed.loopback import Loopback, free_port

PREFECT = str(Path(sys.executable).parent / "prefect")


class PrefectProcessError(RuntimeError):
    """A Prefect server, worker or CLI step failed; the message carries its log's last lines."""


def prefect_env(home: Path, api_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a Prefect process: its own home, no telemetry, the given API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_CLI_COLORS="false", PREFECT_CLI_WRAP_LINES="false")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Service:
    """One long-running `prefect` process logging to a file, stopped with all its descendants."""

    def __init__(self, name: str, log: Path):
        self.name, self.log = name, log
        self.proc: subprocess.Popen | None = None

    def _spawn(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([PREFECT, *args], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> set[int]:
        """This process and every descendant alive now."""
        if not self.running:
            return set()
        try:
            root = psutil.Process(self.proc.pid)
            return {root.pid, *(c.pid for c in root.children(recursive=True))}
        except psutil.NoSuchProcess:
            return set()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process and its descendants, SIGKILL what is left after `timeout`."""
        if self.proc is None:
            return
        procs = []
        for pid in self.pids():
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover  (killed above)
            pass
        self.proc = None


class PrefectServer(_Service, Loopback):
    """`prefect server start` on 127.0.0.1 with SQLite under `home` (UI and API on one port)."""

    def __init__(self, home: Path, port: int | None = None):
        super().__init__("prefect server", Path(home) / "server.log")
        self.home = Path(home)
        self.port = port or free_port()   # known before start: clients are configured first

    @property
    def ui_url(self) -> str:
        """The UI; the API is under it at /api."""
        return self.url

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    def run_url(self, flow_run_id: Any) -> str:
        return f"{self.ui_url}/runs/flow-run/{flow_run_id}"

    def start(self, *, wait: bool = True, timeout: float = 180.0) -> "PrefectServer":
        """Start the server; with `wait`, return once it answers (see `wait_healthy`)."""
        env = prefect_env(self.home, PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(self.port),
                          PREFECT_UI_API_URL=self.api_url, PREFECT_SERVER_LOGGING_LEVEL="WARNING",
                          PREFECT_LOGGING_LEVEL="WARNING")
        self.home.mkdir(parents=True, exist_ok=True)
        self._spawn(["server", "start"], env)
        return self.wait_healthy(timeout) if wait else self

    def wait_healthy(self, timeout: float = 180.0) -> "PrefectServer":
        """Block until /api/health answers; PrefectProcessError (server stopped) if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise PrefectProcessError(f"prefect server exited with code {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise PrefectProcessError(f"prefect server not healthy after {timeout:g}s:\n{_tail(self.log)}")


class Worker(_Service):
    """`prefect worker start` polling a process work pool every second; flow runs start in `cwd`."""

    def __init__(self, server: PrefectServer, pool: str, home: Path, *, env: dict[str, str] | None = None):
        super().__init__("prefect worker", Path(home) / f"worker-{pool}.log")
        self.server, self.pool, self.home, self.extra = server, pool, Path(home), dict(env or {})

    def start(self) -> "Worker":
        env = prefect_env(self.home, self.server.api_url, PREFECT_WORKER_QUERY_SECONDS="1",
                          PREFECT_WORKER_PREFETCH_SECONDS="5", PREFECT_LOGGING_LEVEL="WARNING", **self.extra)
        self._spawn(["worker", "start", "--pool", self.pool, "--type", "process", "--install-policy", "never"], env)
        return self


def run_cli(args: list[str], home: Path, api_url: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 300) -> str:
    """Run one `prefect` CLI command; PrefectProcessError with its output when it fails."""
    r = subprocess.run([PREFECT, *args], env=prefect_env(home, api_url, **(env or {})), cwd=cwd, capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise PrefectProcessError(f"prefect {' '.join(args)} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout


def deployment_file(source: Path, dest: Path, *, config: str, pool: str, sweep: dict | None = None,
                    schedules_active: bool = False) -> Path:
    """`source` (deployments/prefect.yaml) with every deployment naming the worker-held configuration
    `config` (see `hold_config`), the work pool renamed, schedules paused unless asked, and `sweep`
    as extra sweep parameters."""
    doc = yaml.safe_load(Path(source).read_text())
    doc.pop("definitions", None)  # the anchors are resolved by now
    for d in doc["deployments"]:
        d["parameters"] = {**d.get("parameters", {}), "config": config}
        if d["entrypoint"].endswith(":sweep_flow"):
            d["parameters"].update(sweep or {})
        d["work_pool"] = {**d.get("work_pool", {}), "name": pool}
        for s in d.get("schedules") or ():
            s["active"] = schedules_active
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("# Written by testbed/prefect.py from " + Path(source).name + "; edits are overwritten.\n"
                    + yaml.safe_dump(doc, sort_keys=False))
    return dest


def hold_config(config_dir: Path, name: str, config: dict) -> Path:
    """Write `config` as the worker-held configuration `name` (`<config_dir>/<name>.yaml`): the
    worker is started with REGSWEEP_CONFIG_DIR=config_dir, and deployments name it (docs/security.md)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{name}.yaml"
    path.write_text("# A configuration the worker holds; deployment runs name it, never pass it.\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


def deploy(prefect_file: Path, pool: str, home: Path, api_url: str, cwd: Path) -> None:
    """Create the process work pool (idempotent) and register every deployment of `prefect_file`."""
    run_cli(["work-pool", "create", pool, "--type", "process", "--overwrite"], home, api_url, cwd)
    run_cli(["--no-prompt", "deploy", "--prefect-file", str(prefect_file), "--all"], home, api_url, cwd)


# --- flow runs, through the server's API ------------------------------------------------------------

def wait_for_run(flow_run_id: Any, *, until: str = "final", timeout: float = 300.0, interval: float = 1.0):
    """The flow run once it is in a final state (`until="final"`) or paused with its input form
    stored (`until="paused"`); PrefectProcessError if it ends otherwise or takes longer."""
    from prefect.client.orchestration import get_client
    from prefect.input.actions import read_flow_run_input

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            state = run.state
            if until == "paused" and state is not None and state.is_paused():
                keyset = (state.state_details.run_input_keyset or {}) if state.state_details else {}
                if keyset.get("schema") and read_flow_run_input(keyset["schema"], flow_run_id=run.id, _sync=True) is not None:
                    return run
            elif until == "paused" and state is not None and state.is_final():
                raise PrefectProcessError(f"flow run {run.name} ended {state.name} instead of pausing: {state.message}")
            elif until == "final" and state is not None and state.is_final():
                return run
            if time.monotonic() > deadline:
                raise PrefectProcessError(f"flow run {run.name} still {state.name if state else '?'} after {timeout:g}s")
            time.sleep(interval)


def cancel_runs(flow_run_ids: list[Any] | None = None, *, states: tuple[str, ...] = ("PAUSED", "RUNNING", "PENDING",
                                                                                    "SCHEDULED", "CANCELLING")) -> int:
    """Mark flow runs (given ones, else every run in `states`) Cancelled; returns how many.

    For runs whose processes are gone (a demo stopped, a test torn down): nothing else would end
    them, and a paused run would wait for an approval no process can act on.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        if flow_run_ids is None:
            flt = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states))))
        else:
            flt = FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids)))
        runs = [r for r in client.read_flow_runs(flow_run_filter=flt, limit=200)
                if r.state is not None and not r.state.is_final()]
        for r in runs:
            client.set_flow_run_state(r.id, Cancelled(message="stopped with the demo or test that ran it"), force=True)
    return len(runs)
