"""`make demo` keeps working: the module it runs, in a fresh directory, against the test server."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_snapshots_and_plans_a_seeded_registry(tmp_path, prefect_api_url):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-m", "flows.demo"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    snapshots = list((tmp_path / "var" / "demo" / "store" / "snapshots").iterdir())
    assert len(snapshots) == 1
    assert {"tags.parquet", "manifests.parquet", "git_refs.parquet", "snapshot.json"} <= {p.name for p in snapshots[0].iterdir()}
    assert str(snapshots[0]) in r.stdout  # says where the Parquet files are
    # The sample is built so that every kind of decision shows up in the plan it prints.
    assert "keep   demo/api:v1.2.0  (git: tag v1.2.0)" in r.stdout
    assert "delete demo/api:sha-" in r.stdout and "platform of deleted index" in r.stdout
