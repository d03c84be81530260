"""Kubernetes fixtures: loopback API servers (testbed/kubeapi.py) started for one test, and
kubeconfigs pointing at them.

    kube_env    KubeEnv: `kube_env.server(token=, tls=)` starts a KubeServer, `kube_env.kubeconfig(
                {context: (server, token)})` writes a kubeconfig for them; all stopped after the test

Objects to serve are built with testbed/kube.py (pod, workload, helm_secret, ...).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testbed.kubeapi import KubeServer, write_kubeconfig


# --- fixtures ------------------------------------------------------------------------------------

@dataclass
class KubeEnv:
    """Servers started for a test and a kubeconfig pointing at them."""

    tmp: Path
    servers: list[KubeServer] = field(default_factory=list)

    def server(self, token: str | None = None, tls: "ssl.SSLContext | None" = None) -> KubeServer:
        s = KubeServer(token=token).start(tls)
        self.servers.append(s)
        return s

    def kubeconfig(self, contexts: dict[str, tuple[KubeServer, str | None]], current: str | None = None,
                   cluster_names: dict[str, str] | None = None, name: str = "kubeconfig") -> Path:
        return write_kubeconfig(self.tmp / name, {c: (s.url, t) for c, (s, t) in contexts.items()},
                                current, cluster_names)


@pytest.fixture
def kube_env(tmp_path):
    """Start loopback API servers on demand; write kubeconfigs for them; stop them afterwards."""
    env = KubeEnv(tmp_path)
    yield env
    for s in env.servers:
        s.stop()
