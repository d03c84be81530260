"""End-to-end fixtures: a real `prefect server` and process worker on loopback, and headless Chromium.

    prefect_server   session: testbed.prefect.PrefectServer in the session's tmp dir (not the harness)
    e2e_worker       session: a process worker polling the E2E_POOL work pool, flow runs in the repo root
    on_server        context manager: this process's Prefect client talks to `prefect_server`
    browser          module: Debian's chromium driven by Playwright (never a downloaded browser)
    screenshots      where screenshots go: $REGSWEEP_SCREENSHOTS, else var/screenshots (ignored by git)

The session-scoped ones are global through tests/conftest.py; a test module imports `browser`.
Tests using them are marked `e2e` and run by `make test-e2e` (docs/development/testing.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from testbed.prefect import PrefectServer, Worker, cancel_runs

ROOT = Path(__file__).resolve().parents[2]
E2E_POOL = "regsweep-e2e"
CHROMIUM = "/usr/bin/chromium"
# Keep Chromium quiet on a closed network (see the project's testing notes).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server")).start()
    yield server
    server.stop()


@contextlib.contextmanager
def on_server(server: PrefectServer):
    """Point this process's Prefect client (run_deployment, reads) at `server`."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_UI_URL: server.ui_url}):
        yield


@pytest.fixture(scope="session")
def worker_configs(tmp_path_factory) -> Path:
    """The directory of configurations the end-to-end worker holds (REGSWEEP_CONFIG_DIR)."""
    return tmp_path_factory.mktemp("worker-configs")


@pytest.fixture(scope="session")
def e2e_worker(prefect_server, tmp_path_factory, worker_configs):
    worker = Worker(prefect_server, E2E_POOL, tmp_path_factory.mktemp("prefect-worker"),
                    env={"REGSWEEP_HOME": str(ROOT), "REGSWEEP_CONFIG_DIR": str(worker_configs)}).start()
    yield worker
    with on_server(prefect_server):
        cancel_runs()   # a test that failed may leave a run paused
    worker.stop()


# Module scope, not session: while Playwright's sync API is open its event loop stays marked as
# running in this thread, and every later test's `asyncio.run()` would fail.
@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    path = Path(os.environ.get("REGSWEEP_SCREENSHOTS") or ROOT / "var" / "screenshots")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
