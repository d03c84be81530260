"""Registry fixtures: real Docker Distribution servers on loopback (see tasks/localregistry.py).

    registry, registry_client   one plain-HTTP registry (delete enabled) for the whole session;
                                tests share it, so each uses its own repository names (unique_repo)
    fresh_registry              factory: fresh_registry(**LocalRegistry options) -> an empty, started registry
"""

from __future__ import annotations

import itertools
import os

import httpx
import pytest

from tasks.localregistry import LocalRegistry

_repo_counter = itertools.count()


@pytest.fixture(scope="session")
def registry():
    """A plain-HTTP Distribution 2.8 registry with delete enabled, shared by the session."""
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture(scope="session")
def registry_client(registry) -> httpx.Client:
    """An httpx client with `base_url` = the session registry, for the push helpers."""
    with registry.client() as client:
        yield client


@pytest.fixture
def unique_repo(request):
    """A repository name no other test in the session uses: `t/<test name>-<n>`."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")[:60]
    return f"t/{stem}-{os.getpid()}-{next(_repo_counter)}"


@pytest.fixture
def fresh_registry():
    """Factory for an empty registry of its own: `fresh_registry(delete_enabled=False, ...)`."""
    started: list[LocalRegistry] = []

    def make(**options) -> LocalRegistry:
        reg = LocalRegistry(**options).start()
        started.append(reg)
        return reg

    yield make
    for reg in started:
        reg.stop()
