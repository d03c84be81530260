"""End to end: a real registry and a real git repository → `regsweep snapshot` → `regsweep plan
--json` → `regsweep explain`, each run as the installed command against the session's Prefect.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from tasks.oci.manifest import fallback_tag
from testbed import push_artifact, push_image, push_index
from tests.support.configs import config
from tests.support.gitrepo import git_repo  # noqa: F401 (fixtures)
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)

PATTERN = "^sha-(?P<commit>[0-9a-f]{7,40})$"
#: Images linked by tag pattern and annotation; main keeps its newest image only; no cluster.
MAIN_KEEPS_ONE = {"link": {"tagPatterns": [PATTERN]}, "helm": {"enabled": False},
                  "cleanup": {"disableKubernetesBasedPolicy": True, "keepPolicies": [
                      {"references": {"branch": "main"}, "imagesPerReference": {"last": 1}}]}}
LONG_AGO = datetime(2025, 1, 1, tzinfo=timezone.utc)


def image(client, repo, tag, seed, *, created=LONG_AGO, revision=None):
    annotations = {"org.opencontainers.image.revision": revision} if revision else None
    return push_image(client, repo, tag, layers=[f"layer {seed}".encode()],
                      config={"created": created}, annotations=annotations)


@pytest.fixture
def linked_repo(registry, registry_client, unique_repo, git_repo, tmp_path):
    """main: old → head; a stale feature branch; images linked by tag pattern and annotation."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    old = git_repo.commit("main", now - timedelta(days=3))
    head = git_repo.commit("main", now - timedelta(hours=5))
    feature = git_repo.commit("feature", now - timedelta(days=20), parents=[old])
    c, repo = registry_client, unique_repo
    d = {
        "head": image(c, repo, f"sha-{head[:7]}", "head"),
        "old": image(c, repo, f"sha-{old[:7]}", "old"),
        "feature": image(c, repo, "feature-x", "feature", revision=feature),
        "manual": image(c, repo, "manual", "manual"),
    }
    amd = image(c, repo, None, "amd", created=now - timedelta(minutes=10), revision=old)
    arm = image(c, repo, None, "arm", revision=old)
    d["multi"] = push_index(c, repo, "multi", [(amd, {"os": "linux", "architecture": "amd64"}),
                                              (arm, {"os": "linux", "architecture": "arm64"})])
    d["sig"] = push_artifact(c, repo, subject=d["old"], artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json")
    cfg = config(MAIN_KEEPS_ONE, store=tmp_path / "store", url=registry.url, repositories=[repo],
                 git={"path": str(git_repo.path)}, write=tmp_path)
    return dict(cfg=cfg, repo=repo, d=d, head=head, old=old, amd=amd, arm=arm)


def test_snapshot_plan_json_and_explain(linked_repo, registry, run_cli, tmp_path):
    cfg, repo, d = linked_repo["cfg"], linked_repo["repo"], linked_repo["d"]
    snap = run_cli("snapshot", "--config", cfg)
    assert snap.returncode == 0, snap.stderr
    sid = snap.stdout.strip().splitlines()[-1]

    out = tmp_path / "plan.json"
    res = run_cli("plan", "--config", cfg, "--snapshot", sid, "--json", out)
    assert res.returncode == 0, res.stderr
    pid = res.stdout.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr
    rows = json.loads(out.read_text())
    assert all(r["reasons"] and r["action"] in ("keep", "delete") for r in rows)
    by_tag = {r["tag"]: r for r in rows}
    head_tag, old_tag = f"sha-{linked_repo['head'][:7]}", f"sha-{linked_repo['old'][:7]}"
    fallback = fallback_tag(d["old"])
    assert {t: r["action"] for t, r in by_tag.items()} == {
        head_tag: "keep", "manual": "keep", "multi": "keep",       # git, unlinked, fresh platform
        old_tag: "delete", "feature-x": "delete", fallback: "delete", None: "delete"}
    assert by_tag[head_tag]["reasons"] == ["git: branch main, image 1 of 1"]
    assert by_tag[head_tag]["digest"] == d["head"]
    # the registry source dates an index by its newest platform: kept whole, platforms too
    assert by_tag["multi"]["reasons"][0].startswith("built ") and by_tag["multi"]["reasons"][0].endswith(" ago (< 2h)")
    assert f"referrer of deleted {d['old']}" in by_tag[fallback]["reasons"]
    untagged = [r for r in rows if r["tag"] is None]
    assert [r["digest"] for r in untagged] == [d["sig"]]   # the signature goes with its subject
    assert f"referrer of deleted {d['old']}" in untagged[0]["reasons"]
    assert "git: branch main selected, image beyond imagesPerReference.last 1" in by_tag[old_tag]["reasons"]
    assert any("branch feature: matches no keep policy" in x for x in by_tag["feature-x"]["reasons"])

    # explain reads the stored plan, by host/repo:tag, repo:tag and repo@digest
    ex = run_cli("explain", "--config", cfg, f"{registry.host}/{repo}:{old_tag}", "--plan", pid)
    assert ex.returncode == 0, ex.stderr
    lines = ex.stdout.strip().splitlines()
    assert lines[-1] == f"delete {repo}:{old_tag} ({d['old']})"
    assert "  - git: branch main selected, image beyond imagesPerReference.last 1" in lines
    ex = run_cli("explain", "--config", cfg, f"{repo}@{d['head']}")
    assert ex.stdout.strip().splitlines()[-1] == f"keep {repo}@{d['head']} (tags: {head_tag})"
    # no Prefect involved: an unreachable API changes nothing
    ex = run_cli("explain", "--config", cfg, f"{repo}:manual", env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert ex.stdout.strip().splitlines()[-2:] == [
        "  - unlinked: no revision annotation, label or tag pattern links it to a commit",
        f"keep {repo}:manual ({d['manual']})"]

    # the flow run left its summary and the table of deletions as versioned Prefect artifacts
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["regsweep-plan", "regsweep-plan-deletions"])))
            if pid in (a.description or "")}
    assert set(arts) == {"regsweep-plan", "regsweep-plan-deletions"}
    assert f"# Plan `{pid}`" in arts["regsweep-plan"].data
    table = arts["regsweep-plan-deletions"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {r["tag"] for r in table} == {old_tag, "feature-x", fallback, "(untagged)"}

    bad = run_cli("explain", "--config", cfg, f"{repo}:no-such-tag")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"regsweep: error: IMAGE_REF: {repo}:no-such-tag is not in the plan (no such repository, tag or digest)"]


def test_plan_of_an_incomplete_snapshot_deletes_nothing_and_says_why(linked_repo, run_cli, tmp_path):
    cfg = linked_repo["cfg"]
    data = yaml.safe_load(open(cfg))
    data["git"]["path"] = str(tmp_path / "no-such-clone")
    with open(cfg, "w") as f:
        yaml.safe_dump(data, f)
    snap = run_cli("snapshot", "--config", cfg)
    assert snap.returncode == 1
    res = run_cli("plan", "--config", cfg, "--json", tmp_path / "p.json")
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rows and {r["action"] for r in rows} == {"keep"}
    assert all(len(r["reasons"]) == 1 and r["reasons"][0].startswith("snapshot incomplete: git failed: git ")
               for r in rows)
    assert "this plan deletes nothing" in res.stderr


def test_plan_of_an_unknown_snapshot_is_a_usage_error(tmp_path, run_cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store: {tmp_path / 'store'}\nregistry: {{url: http://127.0.0.1:1}}\n")
    res = run_cli("plan", "--config", cfg, "--snapshot", "20260101T000000.000Z-dead")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("regsweep: error: --snapshot: store ") and "Traceback" not in res.stderr
