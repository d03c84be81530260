"""deployments/prefect.yaml declares real flows with parameters those flows accept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


def _deployments():
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def test_every_deployment_names_a_flow_whose_parameters_validate():
    from prefect.flows import load_flow_from_entrypoint

    names = set()
    for d in _deployments():
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        params = flow.validate_parameters(d.get("parameters", {}))
        assert params["config"].registry.url == "https://registry.example.com"
        names.add(d["name"])
    assert {"snapshot-hourly", "plan-daily", "sweep-approved", "history"} <= names


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
    assert [s.schedule.cron for s in snap.schedules] == ["5 * * * *"]
    assert snap.parameters["config"]["registry"]["auth"] == {"username": "ci", "password_env": "REGISTRY_PASSWORD"}
    assert sweep.parameters["plan"] == "latest"
    assert sweep.global_concurrency_limit.limit == 1
    assert sweep.concurrency_options.collision_strategy == "CANCEL_NEW"
