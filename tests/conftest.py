"""Shared fixtures. Each area keeps its own fixtures in tests/support/<area>.py."""

from __future__ import annotations

import os

import pytest

# Prefect must be configured before it is first imported anywhere in the test session.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "ERROR")

pytest_plugins = ["tests.support.registry", "tests.support.kube", "tests.support.gitrepo"]


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (starting one costs ~13 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
