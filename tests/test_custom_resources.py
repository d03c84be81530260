"""Workloads in custom resources keep their images (SPEC rule 1): Argo Workflows, Tekton, KEDA,
Knative and the rest, found through discovery on a loopback API server and listed by the real
kubernetes client; absent ones skipped, a failed list failing the source closed; dumps read too."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tasks.common.errors import ClusterError
from tasks.config.models import load_config, parse_config
from tasks.snapshot.take import run_source
from tasks.sources.kubernetes import workloads as cluster
from tasks.store.store import Store
from testbed.kube import kubectl_list, workload
from tests.support.configs import SWEEP, config
from tests.support.kube import kube_env  # noqa: F401 (fixtures)
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)
from tests.support.sweeps import make_plan, old, plan_of, status, take_snapshot
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)

#: (group, version, plural, kind) as the projects' CRDs serve them
ARGO_CRON = ("argoproj.io", "v1alpha1", "cronworkflows", "CronWorkflow")
TEKTON_TASK = ("tekton.dev", "v1", "tasks", "Task")
KEDA_JOB = ("keda.sh", "v1alpha1", "scaledjobs", "ScaledJob")
KNATIVE_REV = ("serving.knative.dev", "v1", "revisions", "Revision")


def cr(crd: tuple[str, str, str, str], namespace: str, name: str, spec: dict) -> dict:
    group, version, _, kind = crd
    return {"apiVersion": f"{group}/{version}", "kind": kind,
            "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}"}, "spec": spec}


def cron_workflow(namespace: str, name: str, image: str) -> dict:
    return cr(ARGO_CRON, namespace, name, {"schedule": "0 2 * * *", "workflowSpec": {
        "entrypoint": "main", "templates": [{"name": "main", "container": {"image": image, "command": ["etl"]}}]}})


def tekton_task(namespace: str, name: str, image: str) -> dict:
    return cr(TEKTON_TASK, namespace, name, {"steps": [{"name": "build", "image": image, "script": "make"}]})


def scaled_job(namespace: str, name: str, image: str) -> dict:
    return cr(KEDA_JOB, namespace, name, {"jobTargetRef": {"template": {"spec": {
        "containers": [{"name": "worker", "image": image}], "restartPolicy": "Never"}}},
        "triggers": [{"type": "rabbitmq", "metadata": {"queueName": "jobs"}}]})


def knative_revision(namespace: str, name: str, image: str) -> dict:
    return cr(KNATIVE_REV, namespace, name, {"containerConcurrency": 0,
                                             "containers": [{"image": image, "ports": [{"containerPort": 8080}]}]})


def serve(server, *crds) -> None:
    for crd in crds:
        server.serve(*crd)


def rows_of(cfg) -> set[tuple]:
    t = cluster.extract(cfg, Store(cfg.store), datetime.now(timezone.utc))["workloads"]
    rows = [tuple(r.values()) for r in t.to_pylist()]
    assert len(rows) == len(set(rows)), "duplicate rows"
    return set(rows)


def kube_config(tmp_path, kubeconfig, **kube):
    return parse_config({"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
                         "kubernetes": {"kubeconfig": str(kubeconfig), **kube}})


def plan_rows(cfg) -> dict[str, tuple[str, list[str]]]:
    plan_id = make_plan(cfg, take_snapshot(cfg))
    return {r["tag"]: (r["action"], list(r["reasons"])) for r in Store(cfg.store).plans.table(plan_id).to_pylist()}


def test_images_named_only_by_custom_resources_are_kept_with_reasons_naming_them(
        registry, registry_client, unique_repo, tmp_path, kube_env):
    c, repo = registry_client, unique_repo
    for tag in ("cron", "step", "job", "rev", "unused"):
        old(c, repo, tag)
    server = kube_env.server()
    serve(server, ARGO_CRON, TEKTON_TASK, KEDA_JOB, KNATIVE_REV)
    ref = lambda tag: f"{registry.host}/{repo}:{tag}"  # noqa: E731
    server.add(cron_workflow("etl", "nightly", ref("cron")), tekton_task("ci", "build", ref("step")),
               scaled_job("queue", "drain", ref("job")), knative_revision("web", "hello-00001", ref("rev")))
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo],
                             kubeconfig=kube_env.kubeconfig({"prod": (server, None)}), write=tmp_path))

    rows = plan_rows(cfg)

    assert rows["cron"] == ("keep", ["in use: prod/etl/CronWorkflow/nightly container "
                                     "workflowSpec.templates[0].container.image"])
    assert rows["step"] == ("keep", ["in use: prod/ci/Task/build container steps[0].image"])
    assert rows["job"] == ("keep", ["in use: prod/queue/ScaledJob/drain container "
                                    "jobTargetRef.template.spec.containers[0].image"])
    assert rows["rev"] == ("keep", ["in use: prod/web/Revision/hello-00001 container containers[0].image"])
    assert rows["unused"][0] == "delete"


def test_the_sweeps_cluster_recheck_protects_an_image_a_custom_resource_took_up_after_planning(
        sweep, registry, registry_client, unique_repo, tmp_path, kube_env):
    c, repo = registry_client, unique_repo
    used, unused = old(c, repo, "v1"), old(c, repo, "v2")
    server = kube_env.server()
    serve(server, ARGO_CRON)
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo],
                             kubeconfig=kube_env.kubeconfig({"prod": (server, None)}), write=tmp_path))
    plan = plan_of(cfg)   # nothing uses either yet: both planned away
    server.add(cron_workflow("etl", "nightly", f"{registry.host}/{repo}:v1"))

    report = sweep(cfg, plan, approve=True)

    assert status(c, repo, used) == 200 and status(c, repo, unused) == 404
    why = {o["digest"]: o["detail"] for o in report["outcomes"] if o["status"] == "skipped"}
    assert "in use by CronWorkflow etl/nightly in context prod" in why[used]


def test_a_cluster_without_those_crds_snapshots_complete(registry, registry_client, unique_repo, tmp_path, kube_env):
    c, repo = registry_client, unique_repo
    old(c, repo, "deployed")
    old(c, repo, "unused")
    server = kube_env.server()
    server.add(workload("Deployment", "shop", "web", [f"{registry.host}/{repo}:deployed"]))
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo],
                             kubeconfig=kube_env.kubeconfig({"prod": (server, None)}), write=tmp_path))

    rows = plan_rows(cfg)

    assert rows["deployed"] == ("keep", ["in use: prod/shop/Deployment/web container c0"])
    assert rows["unused"][0] == "delete"   # the snapshot is complete: the plan deletes
    # discovery was asked once, and nothing of a group the cluster does not serve
    assert [p.rstrip("/") for p, _ in server.discovery_requests] == ["/apis"]
    assert not any("argoproj.io" in p or "tekton.dev" in p for p, _ in server.requests)


def test_a_forbidden_custom_resource_the_cluster_serves_makes_the_snapshot_incomplete(
        registry, registry_client, unique_repo, tmp_path, kube_env):
    c, repo = registry_client, unique_repo
    old(c, repo, "unused")
    server = kube_env.server()
    serve(server, ARGO_CRON, TEKTON_TASK)
    server.add(tekton_task("ci", "build", f"{registry.host}/{repo}:elsewhere"))
    server.forbid("cronworkflows")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo],
                             kubeconfig=kube_env.kubeconfig({"prod": (server, None)}), write=tmp_path))

    failed = run_source("kubernetes", cfg, Store(cfg.store).snapshots.staging_dir("s1"), datetime.now(timezone.utc))
    assert failed.status == "failed"
    assert failed.error.startswith("kubernetes (context prod, kind CronWorkflow): listing "
                                   "cronworkflows.argoproj.io cluster-wide is forbidden (HTTP 403)")

    rows = plan_rows(cfg)
    assert rows["unused"][0] == "keep"     # nothing is deleted on the strength of an incomplete snapshot
    assert any(r.startswith("snapshot incomplete") for r in rows["unused"][1])


def test_a_failed_discovery_of_a_served_group_fails_the_source(kube_env, tmp_path):
    server = kube_env.server()
    serve(server, KNATIVE_REV)
    server.add(knative_revision("web", "hello-00001", "r/web:1"))
    server.fail_discovery("serving.knative.dev", "v1", 503)
    with pytest.raises(ClusterError, match=r"\(context prod\): discovery of serving.knative.dev/v1 failed: HTTP 503"):
        rows_of(kube_config(tmp_path, kube_env.kubeconfig({"prod": (server, None)})))


def test_custom_resources_are_paginated_listed_per_namespace_and_every_image_key_counts(kube_env, tmp_path):
    server = kube_env.server()
    serve(server, ARGO_CRON, ("argoproj.io", "v1alpha1", "workflowtemplates", "WorkflowTemplate"))
    server.add(*(cron_workflow("etl", f"cw{i}", f"r/etl:{i}") for i in range(5)),
               cron_workflow("other", "skipped", "r/other:1"),
               cr(("argoproj.io", "v1alpha1", "workflowtemplates", "WorkflowTemplate"), "etl", "tpl", {
                   "templates": [{"name": "a", "script": {"image": "r/script:1", "source": "echo"}},
                                 {"name": "b", "containerSet": {"containers": [{"name": "x", "image": "r/set:1"}]}},
                                 {"name": "c", "inputs": {"parameters": [{"name": "image", "value": "r/param:1"}]}},
                                 {"name": "d", "plugin": {"image": {"repository": "r/nested", "tag": "2"}}}]}))
    server.expire_continue("cronworkflows", nth=1)
    rows = rows_of(kube_config(tmp_path, kube_env.kubeconfig({"prod": (server, None)}), namespaces=["etl"],
                               pageSize=2))
    assert {r[3]: r[6] for r in rows if r[2] == "CronWorkflow"} == {f"cw{i}": f"r/etl:{i}" for i in range(5)}
    assert {(r[4], r[6]) for r in rows if r[2] == "WorkflowTemplate"} == {
        ("templates[0].script.image", "r/script:1"), ("templates[1].containerSet.containers[0].image", "r/set:1"),
        ("templates[3].plugin.image.repository", "r/nested"), ("templates[3].plugin.image.tag", "2")}
    lists = server.list_requests("cronworkflows")
    assert all(q["limit"] == "2" for q in lists) and len(lists) > 3   # paged, restarted after the 410
    assert all("/namespaces/etl/" in p for p, _ in server.requests if p.endswith("/cronworkflows"))


def test_a_user_configured_resource_is_scanned(kube_env, tmp_path):
    server = kube_env.server()
    server.serve("batch.example.com", "v2", "batchruns", "BatchRun")
    server.serve("batch.example.com", "v1", "oldruns", "OldRun", preferred=False)
    server.add(cr(("batch.example.com", "v2", "batchruns", "BatchRun"), "jobs", "run-1",
                  {"runner": {"image": "r/runner:7"}}),
               cr(("batch.example.com", "v1", "oldruns", "OldRun"), "jobs", "legacy", {"image": "r/old:1"}))
    kubeconfig = kube_env.kubeconfig({"prod": (server, None)})

    assert rows_of(kube_config(tmp_path, kubeconfig)) == set()   # not well known: not scanned unless configured
    rows = rows_of(kube_config(tmp_path, kubeconfig, resources=[
        {"group": "batch.example.com", "version": "v2", "resource": "batchruns"},
        {"group": "batch.example.com", "version": "v1", "resource": "oldruns"},
        {"group": "absent.example.com", "version": "v1", "resource": "nothings"}]))   # not served: skipped
    assert rows == {("prod", "jobs", "BatchRun", "run-1", "runner.image", "container", "r/runner:7", None, False),
                    ("prod", "jobs", "OldRun", "legacy", "image", "container", "r/old:1", None, False)}


def test_a_cluster_scoped_resource_is_listed_once_cluster_wide(kube_env, tmp_path):
    server = kube_env.server()
    crd = ("argoproj.io", "v1alpha1", "clusterworkflowtemplates", "ClusterWorkflowTemplate")
    server.serve(*crd, namespaced=False)
    server.add({"apiVersion": "argoproj.io/v1alpha1", "kind": "ClusterWorkflowTemplate",
                "metadata": {"name": "shared"}, "spec": {"templates": [{"container": {"image": "r/shared:1"}}]}})
    rows = rows_of(kube_config(tmp_path, kube_env.kubeconfig({"prod": (server, None)})))
    assert rows == {("prod", "", "ClusterWorkflowTemplate", "shared", "templates[0].container.image", "container",
                     "r/shared:1", None, False)}


def test_a_dump_with_custom_resources_is_read(tmp_path):
    dump = tmp_path / "prod.json"
    dump.write_text(json.dumps(kubectl_list([
        workload("Deployment", "shop", "web", ["r/web:1"]),
        cron_workflow("etl", "nightly", "r/etl:1"),
        tekton_task("ci", "build", "r/build:1"),
        cr(("batch.example.com", "v2", "batchruns", "BatchRun"), "jobs", "run-1", {"image": "r/runner:7"}),
        cr(("other.example.com", "v1", "things", "Thing"), "jobs", "t", {"image": "r/ignored:1"}),
    ])))
    cfg = parse_config({"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
                        "kubernetes": {"dumps": [str(dump)], "resources": [
                            {"group": "batch.example.com", "version": "v2", "resource": "batchruns"}]}})
    assert rows_of(cfg) == {
        ("prod", "shop", "Deployment", "web", "c0", "containers", "r/web:1", None, False),
        ("prod", "etl", "CronWorkflow", "nightly", "workflowSpec.templates[0].container.image", "container",
         "r/etl:1", None, False),
        ("prod", "ci", "Task", "build", "steps[0].image", "container", "r/build:1", None, False),
        ("prod", "jobs", "BatchRun", "run-1", "image", "container", "r/runner:7", None, False),
    }


def test_a_typed_custom_resource_list_is_read(tmp_path):
    """The API server's own answer (CronWorkflowList) omits each item's kind and apiVersion."""
    item = cron_workflow("etl", "nightly", "r/etl:1")
    del item["kind"], item["apiVersion"]
    dump = tmp_path / "prod.json"
    dump.write_text(json.dumps({"kind": "CronWorkflowList", "apiVersion": "argoproj.io/v1alpha1",
                                "metadata": {}, "items": [item]}))
    cfg = parse_config({"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
                        "kubernetes": {"dumps": [str(dump)]}})
    assert rows_of(cfg) == {("prod", "etl", "CronWorkflow", "nightly", "workflowSpec.templates[0].container.image",
                             "container", "r/etl:1", None, False)}
