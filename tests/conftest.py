"""The fixtures every test module shares: the Prefect harness, the installed command, and the
session-wide servers.

Each area keeps its fixtures in tests/support/<area>.py, and a test module imports the ones it
uses from there, so its imports say where every fixture comes from. The session-scoped servers
are the exception: pytest keeps one instance per place a fixture is defined, so a fixture
imported into two modules would start two servers. They are defined once, here, by importing
them from their support module:

    registry, registry_client, registry_ca, tls_registry, htpasswd_registry, token_stack,
    token_registry                      tests/support/registry.py
    s3_server, s3_env, ecr_pager        tests/support/s3.py, tests/support/ecr.py
    prefect_server, e2e_worker, screenshots   tests/support/e2e.py
"""

from __future__ import annotations

import os

import pytest

from flows.prefect_env import set_defaults

# Prefect must be configured before it is first imported anywhere in the test session.
set_defaults()

# Session-wide servers (see the module docstring); every other fixture is imported where it is used.
from tests.support.e2e import e2e_worker, prefect_server, screenshots  # noqa: E402,F401
from tests.support.ecr import ecr_pager  # noqa: E402,F401
from tests.support.registry import (htpasswd_registry, registry, registry_ca, registry_client,  # noqa: E402,F401
                                    tls_registry, token_registry, token_stack)
from tests.support.s3 import s3_env, s3_server  # noqa: E402,F401


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
