"""deployments/prefect.yaml declares real flows with parameters those flows accept."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


def _deployments():
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def _validated(d: dict) -> dict:
    """A deployment's parameters as its flow validates them, with the configuration it names loaded
    from deployments/configs as a worker holding that directory would; the what-if's candidate
    policy is filled in from the UI form at run time, so a test fills one in."""
    from prefect.flows import load_flow_from_entrypoint

    from tasks.config.models import load_config
    from tasks.config.pinned import NAME

    flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
    given = d.get("parameters", {})
    if "candidate" in flow.parameters.required:
        given = {**given, "candidate": {"keepImagesBuiltWithinLastNHours": 1}}
    params = flow.validate_parameters(given)
    assert isinstance(params["config"], str) and NAME.match(params["config"]), d["name"]   # a name, never a config
    params["config"] = load_config(ROOT / "deployments" / "configs" / f"{params['config']}.yaml")
    return params


def test_every_deployment_names_a_flow_whose_parameters_validate():
    names = set()
    for d in _deployments():
        params = _validated(d)
        assert params["config"].registry.url == "https://registry.example.com"
        names.add(d["name"])
    assert {"snapshot-hourly", "plan-daily", "sweep-approved", "history", "whatif"} <= names


def test_deploy_registers_the_deployments_on_a_prefect_server(prefect_api_url, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url}
    prefect = [str(Path(sys.executable).parent / "prefect")]
    r = subprocess.run(prefect + ["work-pool", "create", "regsweep", "--type", "process", "--overwrite"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(prefect + ["--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML), "--all"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        snap = client.read_deployment_by_name("regsweep-snapshot/snapshot-hourly")
        sweep = client.read_deployment_by_name("regsweep-sweep/sweep-approved")
        client.read_deployment_by_name("regsweep-plan/plan-daily")
        client.read_deployment_by_name("regsweep-history/history")
        client.read_deployment_by_name("regsweep-whatif/whatif")
    assert [s.schedule.cron for s in snap.schedules] == ["5 * * * *"]
    assert snap.parameters["config"] == "team"   # the worker holds the configuration; the deployment names it
    assert sweep.parameters["plan"] == "latest"
    assert sweep.global_concurrency_limit.limit == 1
    assert sweep.concurrency_options.collision_strategy == "CANCEL_NEW"


K8S_YAML = ROOT / "deployments" / "prefect-kubernetes.yaml"
RBAC_YAML = ROOT / "deployments" / "rbac.yaml"


def _secretish(value, path=""):
    """Keys of a parameter tree that could hold a secret value (not the name of where it lives)."""
    if isinstance(value, dict):
        for k, v in value.items():
            key = f"{path}.{k}" if path else k
            if re.search(r"password|token|secret", k, re.I) and not k.endswith(("_env", "_file", "_block")):
                yield key
            yield from _secretish(v, key)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _secretish(v, f"{path}[{i}]")


@pytest.mark.unit
def test_no_deployment_parameter_or_job_variable_holds_a_secret():
    for path in (PREFECT_YAML, K8S_YAML):
        for d in yaml.safe_load(path.read_text())["deployments"]:
            assert list(_secretish(d.get("parameters", {}))) == [], (path.name, d["name"])
            assert list(_secretish((d.get("work_pool") or {}).get("job_variables") or {})) == [], (path.name, d["name"])
    held = yaml.safe_load((ROOT / "deployments" / "configs" / "team-in-cluster.yaml").read_text())
    assert held["registry"]["auth"] == {"username": "ci", "password_block": "regsweep-registry"}
    assert list(_secretish(held)) == []


def test_the_kubernetes_variant_runs_the_same_flows_in_cluster_with_the_rbac_service_account():
    plain = {d["name"]: d for d in _deployments()}
    sa = next(d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d["kind"] == "ServiceAccount")
    for d in yaml.safe_load(K8S_YAML.read_text())["deployments"]:
        assert d["entrypoint"] == plain[d["name"]]["entrypoint"] and d.get("schedules") == plain[d["name"]].get("schedules")
        params = _validated(d)
        assert params["config"].kubernetes.kubeconfig is None   # in-cluster
        jv = d["work_pool"]["job_variables"]
        assert (jv["service_account_name"], jv["namespace"]) == (sa["metadata"]["name"], sa["metadata"]["namespace"])


@pytest.mark.unit
def test_the_cluster_role_grants_exactly_the_reads_the_sources_make():
    from tasks.sources.kubernetes.workloads import CUSTOM_RESOURCES, WORKLOAD_KINDS
    from tasks.sources.kubernetes.client import CONFIGMAPS, SECRETS

    docs = {d["kind"]: d for d in yaml.safe_load_all(RBAC_YAML.read_text())}
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in docs["ClusterRole"]["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    group_of = {"CoreV1Api": "", "AppsV1Api": "apps", "BatchV1Api": "batch"}
    needed = {(group_of[k.api], k.plural): {"list"} for k in WORKLOAD_KINDS}
    needed.update({(group_of[k.api], k.plural): {"get", "list"} for k in (SECRETS, CONFIGMAPS)})
    needed.update({(group, plural): {"list"} for group, plural, _ in CUSTOM_RESOURCES})
    assert len(WORKLOAD_KINDS) == 8 and granted == needed   # read-only, nothing more
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == docs["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": docs["ServiceAccount"]["metadata"]["name"],
                                    "namespace": docs["ServiceAccount"]["metadata"]["namespace"]}]
