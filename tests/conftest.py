"""Shared fixtures. Each area keeps its own fixtures in tests/support/<area>.py."""

from __future__ import annotations

import os

import pytest

from flows.prefect_env import set_defaults

# Prefect must be configured before it is first imported anywhere in the test session.
set_defaults()

pytest_plugins = ["tests.support.registry", "tests.support.kube", "tests.support.gitrepo", "tests.support.s3",
                  "tests.support.sweeps", "tests.support.e2e",
                  "tests.support.ecr", "tests.support.gitlab", "tests.support.harbor", "tests.support.github",
                  "tests.support.dockerhub", "tests.support.rigs"]


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (starting one costs ~13 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """The harness server's API URL, so CLI subprocesses skip starting their own server."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture
def run_cli(prefect_api_url):
    """Run the installed `regsweep` command as a user would, against the test Prefect server."""
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "regsweep"

    def run(*args: str, env: dict | None = None, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "PREFECT_API_URL": prefect_api_url, **(env or {})}
        return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                              env=full_env, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)

    return run
