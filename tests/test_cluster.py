"""Kubernetes source against a loopback API server, through the real client and a real kubeconfig."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from kubernetes import client as k8s
from kubernetes.config import new_client_from_config

from tasks.sources.kubernetes import workloads as cluster

from tasks.sources.kubernetes import client as kube
from tasks.config.models import parse_config
from tasks.common.errors import ClusterError
from tasks.snapshot.take import run_source
from tasks.store.store import Store
from testbed.kube import pod, workload
from tests.support.kube import kube_env  # noqa: F401 (fixtures)

TOKEN = "sekret-token-5f0c2d"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def make_config(tmp_path, kubeconfig, **kube):
    return parse_config({"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
                         "kubernetes": {"kubeconfig": str(kubeconfig), **kube}})


def rows_of(config) -> set[tuple]:
    t = cluster.extract(config, Store(config.store), datetime.now(timezone.utc))["workloads"]
    rows = [tuple(r.values()) for r in t.to_pylist()]
    assert len(rows) == len(set(rows)), "duplicate rows"
    return set(rows)


@pytest.fixture
def token_cluster(kube_env):
    """One server requiring a bearer token, and a kubeconfig whose current context points at it."""
    server = kube_env.server(token=TOKEN)
    return server, kube_env.kubeconfig({"prod": (server, TOKEN)})


def test_the_test_server_speaks_the_shapes_the_typed_client_expects(token_cluster):
    server, kubeconfig = token_cluster
    server.add(*(pod("a", f"p{i}", [f"r/x:{i}"]) for i in range(3)))
    api = k8s.CoreV1Api(new_client_from_config(config_file=str(kubeconfig), context="prod", persist_config=False))
    first = api.list_pod_for_all_namespaces(limit=2)
    assert isinstance(first, k8s.V1PodList) and len(first.items) == 2
    assert first.metadata.remaining_item_count == 1 and first.metadata._continue
    rest = api.list_pod_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    assert [p.metadata.name for p in first.items + rest.items] == ["p0", "p1", "p2"]
    assert rest.metadata._continue is None
    assert [p.spec.containers[0].image for p in api.list_namespaced_pod("a").items] == ["r/x:0", "r/x:1", "r/x:2"]
    assert api.list_namespaced_pod("elsewhere").items == []


def test_every_kind_and_container_list(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(
        pod("web", "web-7d9f-abcde", ["r/web:1"], init=["r/migrate:1"], ephemeral=["r/debug:1"]),
        workload("ReplicationController", "legacy", "rc", ["r/rc:1"]),
        workload("Deployment", "web", "web", ["r/web:2"], init=["r/migrate:2"]),
        workload("ReplicaSet", "web", "web-old", ["r/web:0"], replicas=0),   # rollback target
        workload("StatefulSet", "db", "pg", ["r/pg:16"]),
        workload("DaemonSet", "kube-system", "agent", ["r/agent:3"]),
        workload("Job", "batch", "running", ["r/job:run"]),
        workload("Job", "batch", "done", ["r/job:done"], job_conditions=[("Complete", "True")]),
        workload("Job", "batch", "broken", ["r/job:failed"], job_conditions=[("Failed", "True")]),
        workload("Job", "batch", "retrying", ["r/job:retry"], job_conditions=[("Failed", "False")]),
        workload("CronJob", "batch", "nightly", ["r/cron:1"], init=["r/cron-init:1"]),
    )
    rows = rows_of(make_config(tmp_path, kubeconfig))
    assert rows == {
        ("prod", "web", "Pod", "web-7d9f-abcde", "c0", "containers", "r/web:1", None, False),
        ("prod", "web", "Pod", "web-7d9f-abcde", "init0", "initContainers", "r/migrate:1", None, False),
        ("prod", "web", "Pod", "web-7d9f-abcde", "debug0", "ephemeralContainers", "r/debug:1", None, False),
        ("prod", "legacy", "ReplicationController", "rc", "c0", "containers", "r/rc:1", None, False),
        ("prod", "web", "Deployment", "web", "c0", "containers", "r/web:2", None, False),
        ("prod", "web", "Deployment", "web", "init0", "initContainers", "r/migrate:2", None, False),
        ("prod", "web", "ReplicaSet", "web-old", "c0", "containers", "r/web:0", None, False),
        ("prod", "db", "StatefulSet", "pg", "c0", "containers", "r/pg:16", None, False),
        ("prod", "kube-system", "DaemonSet", "agent", "c0", "containers", "r/agent:3", None, False),
        ("prod", "batch", "Job", "running", "c0", "containers", "r/job:run", None, False),
        ("prod", "batch", "Job", "done", "c0", "containers", "r/job:done", None, True),
        ("prod", "batch", "Job", "broken", "c0", "containers", "r/job:failed", None, True),
        ("prod", "batch", "Job", "retrying", "c0", "containers", "r/job:retry", None, False),
        ("prod", "batch", "CronJob", "nightly", "c0", "containers", "r/cron:1", None, False),
        ("prod", "batch", "CronJob", "nightly", "init0", "initContainers", "r/cron-init:1", None, False),
    }


def test_pod_status_image_ids_become_digests(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(pod("a", "p", ["r/app:1", "r/side:1"], init=["r/init:1"], ephemeral=["r/dbg:1"],
                   image_ids={"c0": f"docker-pullable://registry.example.com/app@{D1}",
                              "c1": f"registry.example.com/side@{D2}",   # containerd
                              "init0": D3,                               # bare digest
                              "debug0": ""}))                            # not pulled yet
    ids = {(r[4], r[7]) for r in rows_of(make_config(tmp_path, kubeconfig))}
    assert ids == {("c0", D1), ("c1", D2), ("init0", D3), ("debug0", None)}


def test_scan_in_use_drops_finished_jobs_only(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(workload("Job", "b", "done", ["r/done:1"], job_conditions=[("Complete", "True")]),
               workload("Job", "b", "live", ["r/live:1"]), workload("Deployment", "b", "d", ["r/d:1"]))
    df = cluster.scan_in_use(make_config(tmp_path, kubeconfig).kubernetes)
    assert sorted(df["image"]) == ["r/d:1", "r/live:1"]
    assert list(df.columns) == ["context", "namespace", "kind", "name", "container", "container_type",
                                "image", "image_id", "finished"]


def test_every_configured_context_and_only_the_current_one_by_default(kube_env, tmp_path):
    a, b = kube_env.server(token=TOKEN), kube_env.server()
    a.add(workload("Deployment", "x", "on-a", ["r/a:1"]))
    b.add(workload("Deployment", "x", "on-b", ["r/b:1"]))
    # "prod-alias" reaches server a again under another cluster name
    kc = kube_env.kubeconfig({"prod": (a, TOKEN), "staging": (b, None), "prod-alias": (a, TOKEN)},
                             current="staging", cluster_names={"prod-alias": "another-name"})
    all_three = rows_of(make_config(tmp_path, kc, contexts=["prod", "staging", "prod-alias"]))
    assert {(r[0], r[3]) for r in all_three} == {("prod", "on-a"), ("staging", "on-b"), ("prod-alias", "on-a")}
    assert {(r[0], r[3]) for r in rows_of(make_config(tmp_path, kc))} == {("staging", "on-b")}


def test_kubeconfig_from_the_environment(kube_env, tmp_path, monkeypatch):
    server = kube_env.server()
    server.add(workload("DaemonSet", "x", "ds", ["r/ds:1"]))
    kc = kube_env.kubeconfig({"env-ctx": (server, None)})
    monkeypatch.setenv("KUBECONFIG", str(kc))
    config = parse_config({"store": str(tmp_path), "registry": {"url": "https://r.example.com"}})
    assert {(r[0], r[3]) for r in rows_of(config)} == {("env-ctx", "ds")}


def test_configured_namespaces_are_listed_one_by_one(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    for ns in ("a", "b", "c"):
        server.add(pod(ns, "p", [f"r/{ns}:1"]), workload("Deployment", ns, "d", [f"r/{ns}:2"]))
    rows = rows_of(make_config(tmp_path, kubeconfig, namespaces=["a", "c"]))
    assert {r[6] for r in rows} == {"r/a:1", "r/a:2", "r/c:1", "r/c:2"}
    paths = {p for p, _ in server.requests}
    assert "/api/v1/namespaces/a/pods" in paths and "/apis/apps/v1/namespaces/c/deployments" in paths
    assert not any("/namespaces/b/" in p for p in paths)
    assert "/api/v1/pods" not in paths   # no cluster-wide call when namespaces are configured


def test_lists_are_paginated_with_the_configured_page_size(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(*(pod(f"ns{i % 3}", f"p{i:02d}", [f"r/p:{i}"]) for i in range(7)))
    rows = rows_of(make_config(tmp_path, kubeconfig, pageSize=2))
    assert sorted(r[6] for r in rows) == sorted(f"r/p:{i}" for i in range(7))
    pods = server.list_requests("pods")
    assert len(pods) == 4 and all(q["limit"] == "2" for q in pods)
    assert "continue" not in pods[0] and all("continue" in q for q in pods[1:])


def test_an_expired_continue_token_restarts_the_list(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(*(pod("a", f"p{i}", [f"r/p:{i}"]) for i in range(5)))
    server.expire_continue("pods", nth=2)
    rows = rows_of(make_config(tmp_path, kubeconfig, pageSize=2))  # rows_of also checks no duplicates
    assert sorted(r[3] for r in rows) == [f"p{i}" for i in range(5)]
    starts = [q for q in server.list_requests("pods") if "continue" not in q]
    assert len(starts) == 2   # the first list, and the restart after the 410


def test_a_list_that_keeps_expiring_fails_after_bounded_restarts(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(*(pod("a", f"p{i}", ["r/p:1"]) for i in range(3)))
    server.expire_continue("pods", nth=1, times=100)
    with pytest.raises(ClusterError, match=r"context prod, kind Pod\): listing pods kept expiring"):
        rows_of(make_config(tmp_path, kubeconfig, pageSize=1))
    assert len([q for q in server.list_requests("pods") if "continue" not in q]) == kube.MAX_LIST_RESTARTS + 1


def test_forbidden_in_one_namespace_names_context_namespace_and_kind(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(workload("StatefulSet", "ok", "s", ["r/s:1"]), workload("StatefulSet", "locked", "s", ["r/s:2"]))
    server.forbid("statefulsets", namespace="locked")
    with pytest.raises(ClusterError) as e:
        rows_of(make_config(tmp_path, kubeconfig, namespaces=["ok", "locked"]))
    err = e.value
    assert (err.context, err.namespace, err.kind) == ("prod", "locked", "StatefulSet")
    assert str(err).startswith("kubernetes (context prod, namespace locked, kind StatefulSet): "
                               "listing statefulsets in namespace locked is forbidden (HTTP 403)")
    assert 'cannot list resource "statefulsets"' in str(err)


def test_forbidden_cluster_wide_list(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.forbid("cronjobs")
    with pytest.raises(ClusterError, match=r"\(context prod, kind CronJob\): listing cronjobs cluster-wide "
                                           r"is forbidden \(HTTP 403\)"):
        rows_of(make_config(tmp_path, kubeconfig))


def test_server_error_fails_the_source(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.fail("replicasets", 500)
    with pytest.raises(ClusterError, match=r"kind ReplicaSet\): listing replicasets cluster-wide failed: "
                                           r"HTTP 500 .*etcdserver: request timed out"):
        rows_of(make_config(tmp_path, kubeconfig))


def test_server_error_on_a_later_page_fails_the_source(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(*(pod("a", f"p{i}", ["r/p:1"]) for i in range(4)))
    server.fail("pods", 503, times=None)
    server._faults[-1].on_continue = 1      # the first page succeeds, the second does not
    with pytest.raises(ClusterError, match="HTTP 503"):
        rows_of(make_config(tmp_path, kubeconfig, pageSize=2))


def test_timeout_fails_the_source_quickly(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.slow("daemonsets", 3.0)
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"kind DaemonSet\): listing daemonsets cluster-wide timed out after 0.3s"):
        rows_of(make_config(tmp_path, kubeconfig, timeout=0.3))
    assert time.monotonic() - started < 2.5


def test_unreachable_cluster(kube_env, tmp_path):
    server = kube_env.server()
    kc = kube_env.kubeconfig({"gone": (server, None)})
    server.stop()
    with pytest.raises(ClusterError, match=r"context gone, kind \w+\): listing \w+ cluster-wide failed"):
        rows_of(make_config(tmp_path, kc, timeout=2))


def test_wrong_token_fails_without_revealing_it(kube_env, tmp_path):
    server = kube_env.server(token="the-right-one")
    kc = kube_env.kubeconfig({"prod": (server, TOKEN)})
    with pytest.raises(ClusterError, match=r"is unauthorized \(HTTP 401\)") as e:
        rows_of(make_config(tmp_path, kc))
    assert TOKEN not in str(e.value) and "the-right-one" not in str(e.value)


def test_unknown_context_and_missing_kubeconfig(token_cluster, tmp_path):
    _, kubeconfig = token_cluster
    with pytest.raises(ClusterError, match=r"context nope\): no context 'nope' in kubeconfig .* \(has: prod\)"):
        rows_of(make_config(tmp_path, kubeconfig, contexts=["nope"]))
    with pytest.raises(ClusterError, match=r"kubeconfig .*missing.yaml does not exist"):
        rows_of(make_config(tmp_path, tmp_path / "missing.yaml"))


def test_snapshot_source_failure_is_recorded_and_writes_no_table(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(workload("Deployment", "a", "d", ["r/d:1"]))
    config = make_config(tmp_path, kubeconfig)
    store = Store(config.store)
    ok = run_source("kubernetes", config, store.snapshots.staging_dir("s1"), datetime.now(timezone.utc))
    assert (ok.status, ok.rows) == ("ok", 1)
    server.forbid("deployments", namespace=None)
    staging = store.snapshots.staging_dir("s2")
    failed = run_source("kubernetes", config, staging, datetime.now(timezone.utc))
    assert failed.status == "failed"
    assert failed.error.startswith("kubernetes (context prod, kind Deployment): listing deployments cluster-wide "
                                   "is forbidden")
    assert not store.fs.exists(f"{staging}/workloads.parquet")
    assert TOKEN not in json.dumps(failed.to_json())
