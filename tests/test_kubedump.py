"""Offline cluster input: kubectl JSON dumps read in place of a live cluster, same tables and rules."""

from __future__ import annotations

import json

import pytest
import yaml

from tasks.sources.kubernetes import workloads as cluster

from tasks.sources.kubernetes import helm
from tasks.config.models import load_config, parse_config
from tasks.common.errors import ClusterError, HelmError
from tasks.store.store import Store
from testbed.kube import helm_configmap, helm_release, helm_secret, kubectl_list, manifest, pod, pod_spec, workload
from tests.support.configs import SWEEP, config
from tests.support.sweeps import old, plan_of, status
from tests.support.kube import kube_env  # noqa: F401 (fixtures)
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)

D1 = "sha256:" + "1" * 64

OBJECTS = [
    pod("web", "web-7d9f-abcde", ["r/web:1"], init=["r/migrate:1"], image_ids={"c0": f"docker-pullable://r/web@{D1}"}),
    workload("ReplicationController", "legacy", "rc", ["r/rc:1"]),
    workload("Deployment", "web", "web", ["r/web:2"]),
    workload("ReplicaSet", "web", "web-old", ["r/web:0"], replicas=0),
    workload("StatefulSet", "db", "pg", ["r/pg:16"]),
    workload("DaemonSet", "kube-system", "agent", ["r/agent:3"]),
    workload("Job", "batch", "done", ["r/job:done"], job_conditions=[("Complete", "True")]),
    workload("CronJob", "batch", "nightly", ["r/cron:1"]),
]


def _app(tag: str) -> str:
    return manifest({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
                     "spec": {"template": {"spec": pod_spec([f"r/app:{tag}"])}}})


HELM = [helm_secret(helm_release("app", "shop", 1, _app("v1"), status="superseded")),
        helm_secret(helm_release("app", "shop", 2, _app("v2"))),
        helm_configmap(helm_release("legacy", "ops", 4, _app("v0")))]


def _tables(cfg) -> dict:
    store = Store(cfg.store)
    wl = cluster.extract(cfg, store, None)["workloads"].to_pylist()
    hl = helm.extract(cfg, store, None)["helm"].to_pylist()
    return {"workloads": sorted(map(lambda r: tuple(r.values()), wl), key=repr),
            "helm": sorted(map(lambda r: tuple(r.values()), hl), key=repr)}


def _write(path, doc) -> str:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


def _offline(tmp_path, workloads=None, helm_dump=None, **kube) -> dict:
    data = {"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
            "kubernetes": {"dumps": [{"file": workloads, "context": "prod"}], **kube}, "helm": {}}
    if helm_dump:
        data["helm"]["dumps"] = [{"file": helm_dump, "context": "prod"}]
    return data


def test_dumps_yield_the_same_tables_as_the_live_cluster(kube_env, tmp_path):
    server = kube_env.server()
    server.add(*json.loads(json.dumps(OBJECTS + HELM)))
    live = parse_config({"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
                         "kubernetes": {"kubeconfig": str(kube_env.kubeconfig({"prod": (server, None)}))}})
    # kubectl prints Helm's objects together with other Secrets when the selector is forgotten:
    # the source applies owner=helm itself.
    other = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "db", "namespace": "shop"},
             "data": {"release": "bm90IGhlbG0="}}
    offline = parse_config(_offline(tmp_path, _write(tmp_path / "workloads.json", kubectl_list(OBJECTS)),
                                    _write(tmp_path / "helm.json", kubectl_list(HELM + [other]))))
    want = _tables(live)
    assert want["workloads"] and want["helm"]
    assert _tables(offline) == want


@pytest.mark.unit
def test_a_typed_list_a_single_object_and_the_namespace_filter(tmp_path):
    items = [dict(o) for o in json.loads(json.dumps(OBJECTS)) if o["kind"] == "Pod"]
    for o in items:
        o.pop("kind")  # the API server's PodList omits each item's kind
    pods = _write(tmp_path / "pods.json", {"kind": "PodList", "apiVersion": "v1", "items": items})
    single = _write(tmp_path / "sts.json", OBJECTS[4])
    cfg = parse_config({"registry": {"url": "https://r.example.com"},
                        "kubernetes": {"dumps": [pods, single], "namespaces": ["db", "web"]}})
    rows = {(r[0], r[1], r[2], r[6], r[7]) for r in cluster.scan(cfg.kubernetes)}
    assert rows == {("pods", "web", "Pod", "r/web:1", D1), ("pods", "web", "Pod", "r/migrate:1", None),
                    ("sts", "db", "StatefulSet", "r/pg:16", None)}


@pytest.mark.unit
@pytest.mark.parametrize("content, problem", [
    (json.dumps(kubectl_list(OBJECTS))[:-300], "is not valid JSON, truncated or garbled?"),
    ("\x00\x17garbage", "is not valid JSON, truncated or garbled?"),
    (json.dumps({"kind": "List", "items": {"a": 1}}), "`items` is not a list of objects"),
    (json.dumps({"items": []}), "is not a Kubernetes object or list"),
    (json.dumps({"kind": "List", "items": [{"metadata": {}}]}), "item 0 has no kind"),
])
def test_a_malformed_dump_fails_the_source_with_one_line_naming_the_file(tmp_path, content, problem):
    path = _write(tmp_path / "broken.json", content)
    cfg = parse_config(_offline(tmp_path, path, path))
    with pytest.raises(ClusterError) as e:
        cluster.scan(cfg.kubernetes)
    assert path in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)
    assert "kubectl get pods,deploy,rs,sts,ds,job,cronjob,rc -A -o json" in str(e.value)
    with pytest.raises(HelmError, match="kubectl get secrets,configmaps -A -l owner=helm -o json"):
        helm.scan(cfg.kubernetes, cfg.helm)


def test_a_truncated_dump_makes_the_snapshot_incomplete_and_deletes_nothing(registry, registry_client, unique_repo,
                                                                            tmp_path, run_cli):
    c, repo = registry_client, unique_repo
    d = old(c, repo, "v1")
    dump = tmp_path / "prod.json"
    good = json.dumps(kubectl_list([workload("Deployment", "shop", "other", ["r/other:1"])]))
    dump.write_text(good[: len(good) // 2])
    path = config(SWEEP, url=registry.url, repositories=[repo], kubeconfig=tmp_path / "unused", write=tmp_path)
    data = yaml.safe_load(path.read_text())
    data["kubernetes"] = {"dumps": ["prod.json"]}  # relative to the config file
    path.write_text(yaml.safe_dump(data))

    res = run_cli("snapshot", "--config", path)
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("regsweep: error:")]
    assert len(errors) == 1 and str(dump) in errors[0] and "truncated or garbled" in errors[0]
    assert "Traceback" not in res.stderr
    sid = res.stdout.strip().splitlines()[-1]
    meta = json.loads((tmp_path / "store" / "snapshots" / sid / "snapshot.json").read_text())
    assert meta["complete"] is False and meta["sources"]["kubernetes"]["status"] == "failed"

    res = run_cli("plan", "--config", path, "--snapshot", sid)
    assert res.returncode == 0, res.stderr
    plan = res.stdout.strip().splitlines()[-1]
    res = run_cli("sweep", "--config", path, "--plan", plan, "--yes")
    assert res.returncode == 1 and "incomplete snapshot" in res.stderr
    assert status(c, repo, d) == 200


def test_a_missing_dump_file_is_a_configuration_error(tmp_path, run_cli):
    path = tmp_path / "regsweep.yaml"
    path.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "registry": {"url": "https://r.example.com"},
                                    "kubernetes": {"dumps": ["prod.json"]}, "helm": {"enabled": False}}))
    res = run_cli("snapshot", "--config", path, "--sources", "kubernetes")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == f"regsweep: error: kubernetes.dumps[0].file: {tmp_path / 'prod.json'} does not exist"


def test_the_sweeps_cluster_recheck_rereads_the_dumps(sweep, registry, registry_client, unique_repo, tmp_path):
    c, repo = registry_client, unique_repo
    deployed_since, unused = old(c, repo, "v1"), old(c, repo, "v2")
    dump = tmp_path / "prod.json"
    dump.write_text(json.dumps(kubectl_list([])))
    path = config(SWEEP, url=registry.url, repositories=[repo], kubeconfig=tmp_path / "unused", write=tmp_path)
    data = yaml.safe_load(path.read_text())
    data["kubernetes"] = {"dumps": [{"file": str(dump), "context": "prod"}]}
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    plan = plan_of(cfg)
    # The user refreshes the dump before sweeping: the image went into use meanwhile.
    dump.write_text(json.dumps(kubectl_list([workload("Deployment", "shop", "web", [f"{registry.host}/{repo}:v1"])])))

    report = sweep(cfg, plan, approve=True)

    assert status(c, repo, deployed_since) == 200 and status(c, repo, unused) == 404
    why = {o["digest"]: o["detail"] for o in report["outcomes"] if o["status"] == "skipped"}
    assert "in use by Deployment shop/web in context prod (fresh cluster scan)" in why[deployed_since]


def test_a_dump_broken_before_the_sweep_deletes_nothing(sweep, registry, registry_client, unique_repo, tmp_path):
    from tasks.common.errors import SweepFailed

    c, repo = registry_client, unique_repo
    d = old(c, repo, "v1")
    dump = tmp_path / "prod.json"
    dump.write_text(json.dumps(kubectl_list([])))
    path = config(SWEEP, url=registry.url, repositories=[repo], kubeconfig=tmp_path / "unused", write=tmp_path)
    data = yaml.safe_load(path.read_text())
    data["kubernetes"] = {"dumps": [str(dump)]}
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    plan = plan_of(cfg)
    dump.write_text('{"kind": "List", "items": [')

    with pytest.raises(SweepFailed, match="fresh cluster scan before deleting failed, so nothing was deleted"):
        sweep(cfg, plan, approve=True)
    assert status(c, repo, d) == 200
