"""An exception a source did not expect fails that source, not the snapshot (security review,
finding 17): the snapshot is published incomplete with one line naming the source and the
exception type, and no plan made from it deletes anything.

The hostile input here is a workload dump (`kubernetes.dumps`) whose container is a string
instead of an object: nothing validated it, as an API server would have.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import yaml

from tasks.common.redact import MASK, remember
from tasks.config.models import parse_config
from tasks.snapshot.take import run_source, unexpected_failure
from testbed.kube import kubectl_list, workload
from tests.support.sweeps import old, status
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)


def hostile_dump(path) -> str:
    broken = workload("Deployment", "shop", "odd", ["r.io/odd:1"])
    broken["spec"]["template"]["spec"]["containers"] = ["r.io/not-an-object:1"]
    path.write_text(json.dumps(kubectl_list([workload("Deployment", "shop", "app", ["r.io/app:1"]), broken])))
    return str(path)


def test_an_unexpected_exception_fails_the_source_with_one_line(tmp_path):
    cfg = parse_config({"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
                        "kubernetes": {"dumps": [hostile_dump(tmp_path / "prod.json")]}})
    staging = tmp_path / "staging"
    staging.mkdir()

    st = run_source("kubernetes", cfg, str(staging), datetime.now(timezone.utc))

    assert st.status == "failed"
    assert st.error == ("kubernetes: unexpected AttributeError: 'str' object has no attribute 'get' (a bug or "
                        "input regsweep does not understand; the source is counted as failed)")
    assert list(staging.iterdir()) == []


def test_the_line_is_short_masked_and_never_a_traceback():
    remember("unexpected-secret-5e2a")
    e = ValueError("first line quoting unexpected-secret-5e2a " + "x" * 500 + "\nTraceback (most recent call last):")
    line = unexpected_failure("registry", e)
    assert line.startswith(f"registry: unexpected ValueError: first line quoting {MASK} xxx")
    assert "\n" not in line and "Traceback" not in line and len(line) < 320
    assert unexpected_failure("git", KeyError()).startswith("git: unexpected KeyError (a bug")


def test_the_snapshot_is_published_incomplete_and_its_plan_deletes_nothing(registry, registry_client, unique_repo,
                                                                           tmp_path, run_cli):
    repo = unique_repo
    digest = old(registry_client, repo, "v1")   # referenced by nothing: a complete snapshot's plan deletes it
    store = tmp_path / "store"
    cfg = tmp_path / "regsweep.yaml"
    cfg.write_text(yaml.safe_dump({
        "store": str(store), "registry": {"url": registry.url, "repositories": [repo]},
        "kubernetes": {"dumps": [hostile_dump(tmp_path / "prod.json")]}, "helm": {"enabled": False},
        "cleanup": {"disableGitHistoryBasedPolicy": True, "keepImagesBuiltWithinLastNHours": 2,
                    "unlinkedImages": "delete"}}))

    snap = run_cli("snapshot", "--config", cfg)

    assert snap.returncode == 1, snap.stderr
    assert "Traceback" not in snap.stderr
    errors = [line for line in snap.stderr.splitlines() if line.startswith("regsweep: error: kubernetes")]
    assert errors == ["regsweep: error: kubernetes: unexpected AttributeError: 'str' object has no attribute 'get' "
                      "(a bug or input regsweep does not understand; the source is counted as failed)"]
    sid = snap.stdout.strip().splitlines()[-1]
    meta = json.loads((store / "snapshots" / sid / "snapshot.json").read_text())
    assert meta["complete"] is False
    assert {k: v["status"] for k, v in meta["sources"].items()} == {
        "registry": "ok", "kubernetes": "failed", "helm": "skipped", "git": "skipped"}

    plan = run_cli("plan", "--config", cfg, "--snapshot", sid, "--json", tmp_path / "plan.json")
    assert plan.returncode == 0, plan.stderr
    rows = json.loads((tmp_path / "plan.json").read_text())
    assert [(r["digest"], r["action"]) for r in rows] == [(digest, "keep")]
    assert rows[0]["reasons"][0].startswith("snapshot incomplete: kubernetes failed: kubernetes: unexpected ")
    assert status(registry_client, repo, digest) == 200
