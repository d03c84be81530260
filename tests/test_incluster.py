"""In-cluster operation: the service-account token and CA, KUBERNETES_SERVICE_HOST/PORT, over TLS.

The loopback API server serves TLS with a throw-away CA (trustme) and requires the token; the
real client's in-cluster loader reads them from `kubernetes.serviceAccount` (by default the
directory Kubernetes mounts them in), so nothing about the client is altered.
"""

from __future__ import annotations

import json
import ssl

import pytest
import trustme
import yaml

from tasks.sources.kubernetes import workloads as cluster

from tasks.sources.kubernetes import helm
from tasks.config.models import parse_config
from tasks.common.errors import ClusterError
from testbed.kube import helm_release, helm_secret, manifest, pod_spec, workload
from tests.support.kube import kube_env  # noqa: F401 (fixtures)

TOKEN = "sa-token-7c1e93b2"


@pytest.fixture
def in_cluster(kube_env, tmp_path, monkeypatch):
    """A TLS API server requiring TOKEN, a mounted-service-account directory, and the pod's environment."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    server = kube_env.server(token=TOKEN, tls=ctx)
    server.add(workload("Deployment", "shop", "web", ["registry.example.com/shop/web:v7"]),
               helm_secret(helm_release("web", "shop", 3, manifest(
                   {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                    "spec": {"template": {"spec": pod_spec(["registry.example.com/shop/web:v6"])}}}))))
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(TOKEN)
    ca.cert_pem.write_to_path(str(sa / "ca.crt"))
    (sa / "namespace").write_text("regsweep")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.port),
           "KUBECONFIG": "", "HOME": str(tmp_path / "home")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return server, sa, env


def test_in_cluster_config_reads_the_service_account_and_verifies_tls(in_cluster, tmp_path):
    server, sa, _ = in_cluster
    cfg = parse_config({"registry": {"url": "https://registry.example.com"},
                        "kubernetes": {"serviceAccount": str(sa)}})
    rows = cluster.scan(cfg.kubernetes)
    assert [(r[0], r[1], r[2], r[6]) for r in rows] == [("in-cluster", "shop", "Deployment", "registry.example.com/shop/web:v7")]
    assert [(r[0], r[2], r[3], r[9]) for r in helm.scan(cfg.kubernetes, cfg.helm)] == [
        ("in-cluster", "web", 3, "registry.example.com/shop/web:v6")]
    assert server.requests and all(q.get("limit") for _, q in server.requests)


def test_a_ca_that_did_not_sign_the_servers_certificate_fails_the_source(in_cluster, tmp_path):
    server, sa, _ = in_cluster
    trustme.CA().cert_pem.write_to_path(str(sa / "ca.crt"))  # some other cluster's CA
    cfg = parse_config({"registry": {"url": "https://registry.example.com"},
                        "kubernetes": {"serviceAccount": str(sa)}})
    with pytest.raises(ClusterError, match="context in-cluster.*CERTIFICATE_VERIFY_FAILED"):
        cluster.scan(cfg.kubernetes)


def test_a_missing_token_names_the_in_cluster_configuration(in_cluster, tmp_path):
    _, sa, _ = in_cluster
    (sa / "token").unlink()
    cfg = parse_config({"registry": {"url": "https://registry.example.com"},
                        "kubernetes": {"serviceAccount": str(sa)}})
    with pytest.raises(ClusterError, match="in-cluster configuration: Service token file does not exist"):
        cluster.scan(cfg.kubernetes)


def test_snapshot_cli_inside_a_cluster(in_cluster, tmp_path, run_cli):
    server, sa, env = in_cluster
    path = tmp_path / "regsweep.yaml"
    path.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
                                    "kubernetes": {"serviceAccount": str(sa)}}))
    res = run_cli("snapshot", "--config", path, "--sources", "kubernetes,helm", env=env)
    assert res.returncode == 0, res.stderr
    sid = res.stdout.strip().splitlines()[-1]
    meta = json.loads((tmp_path / "store" / "snapshots" / sid / "snapshot.json").read_text())
    assert meta["complete"] is True
    assert meta["sources"]["kubernetes"]["rows"] == 1 and meta["sources"]["helm"]["rows"] == 1
    assert TOKEN not in res.stdout + res.stderr + json.dumps(meta)
