"""`make demo` works as a newcomer meets it: the whole cycle up to a paused sweep, then Ctrl-C.

Runs the module `make demo` runs, in a fresh directory: it must print where the paused sweep is
(and the server must show it paused there), stop everything it started on SIGINT, and do it
all again, with the same result, on a second run in the same directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 300) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, path.read_text())
        if m:
            return m
        assert proc.poll() is None, f"demo exited with {proc.returncode}:\n{path.read_text()}"
        time.sleep(0.5)
    raise AssertionError(f"demo printed no {pattern!r} within {timeout}s:\n{path.read_text()}")


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


def _run_demo(tmp_path: Path, name: str):
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(ROOT)
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "testbed.rundemo"], cwd=tmp_path, env=env, stdout=o, stderr=e,
                                stdin=subprocess.DEVNULL)
    return proc, out, err


def test_make_demo_pauses_a_sweep_on_its_server_and_stops_everything(tmp_path):
    results = []
    for attempt in ("first", "second"):
        proc, out, err = _run_demo(tmp_path, attempt)
        try:
            url = _wait_for(out, r"1\. open (http://127\.0\.0\.1:\d+)/runs/flow-run/([0-9a-f-]{36})", proc).groups()
            _wait_for(err, r"demo: ready in \d+ s", proc)
            # The paused sweep is there, on the server the demo started, from the sweep deployment.
            run = httpx.get(f"{url[0]}/api/flow_runs/{url[1]}", timeout=30).json()
            assert run["state"]["type"] == "PAUSED"
            deployment = httpx.get(f"{url[0]}/api/deployments/{run['deployment_id']}", timeout=30).json()
            assert deployment["name"] == "sweep-approved"
            children = _descendants(proc.pid)
            assert len(children) >= 3   # server, worker (with the paused run), registry
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 0, err.read_text()
        assert _alive(children) == [], "left running after Ctrl-C"
        text = out.read_text()
        assert "Traceback" not in text + err.read_text()
        results.append(re.search(r"plan-daily\s+Completed\s+plan \S+: (delete \d+ of \d+ rows, [\d.]+ \w+)", text).group(1))
        for line in ("regsweep demo is up; Ctrl-C stops all of it.", "click \"Resume\"",
                     "switch \"Approve these deletions\" on", "regsweep explain --config var/demo/regsweep.yaml",
                     "regsweep history --config var/demo/regsweep.yaml", "keep demo/web:sha-", "delete demo/api:sha-",
                     "in use: prod/prod/Deployment/web", "helm: prod/prod/web revision 3 (deployed)",
                     "unique_bytes"):   # the growth table the history command prints
            assert line in text, line
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url[0]}/api/health", timeout=5)
    # Idempotent: the same world, the same plan; the history gained the second snapshot.
    assert results[0] == results[1]
    assert len(list((tmp_path / "var" / "demo" / "store" / "snapshots").iterdir())) == 2
