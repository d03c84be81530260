"""Keep lists (`keep.lists`), and images in use that the registry does not have (the snapshot's MISSING table).

Real components throughout: Debian's Docker Distribution on loopback, images pushed through its
API, workloads and Helm history from kubectl dumps, moto's S3 server, the real snapshot, plan and
sweep flows, and the `regsweep` command as a user runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tasks.config.models import load_config, parse_config
from tasks.plan.make import make_plan as evaluate_and_publish
from tasks.sources import keeplists
from tasks.sources.keeplists import KeepListError
from tasks.store.store import Store
from testbed.kube import helm_release, helm_secret, kubectl_list, manifest, pod_spec, workload
from tests.support.configs import SWEEP, config
from tests.support.sweeps import make_plan, old, status, take_snapshot
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)
from tests.support.s3 import s3_store  # noqa: F401 (fixtures)
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)

ALIAS = "alias.example:5000"


def _configure(tmp_path: Path, registry, repo: str, *, keep: list[str] | None = None, workloads: list | None = None,
               helm: list | None = None, store: str | None = None) -> Path:
    """A config for one repository (old images are deleted by its policy) with keep lists and
    kubectl dumps as given; every relative path is relative to the config file."""
    path = config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path)
    data = yaml.safe_load(path.read_text())
    data["registry"]["aliases"] = [ALIAS]
    if store:
        data["store"] = store
    if keep is not None:
        data["keep"] = {"lists": keep}
    if workloads is not None:
        (tmp_path / "prod.json").write_text(json.dumps(kubectl_list(workloads)))
        data["kubernetes"] = {"dumps": [{"file": "prod.json", "context": "prod"}]}
        data["cleanup"]["disableKubernetesBasedPolicy"] = False
    if helm is not None:
        (tmp_path / "helm.json").write_text(json.dumps(kubectl_list(helm)))
        data["helm"] = {"enabled": True, "dumps": [{"file": "helm.json", "context": "prod"}]}
    path.write_text(yaml.safe_dump(data))
    return path


def _plan_rows(cfg, pid: str) -> dict[str, dict]:
    return {r["tag"]: r for r in Store(cfg.store).plans.table(pid).to_pylist()}


def _delete_manifest(client, repo: str, digest: str) -> None:
    r = client.delete(f"/v2/{repo}/manifests/{digest}")
    assert r.status_code == 202, r.text
    assert status(client, repo, digest) == 404


def _snapshot_artifact(sid: str) -> str:
    """The markdown of the snapshot flow run's artifact, as the Prefect server holds it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = [a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["regsweep-snapshot"]))) if a.description == f"Snapshot {sid}"]
    assert len(arts) == 1
    return arts[0].data


# ------------------------------------------------------------------ the keep rule


def test_a_keep_list_keeps_exactly_its_images_naming_file_and_line(registry, registry_client, unique_repo, tmp_path,
                                                                    sweep):
    c, repo = registry_client, unique_repo
    d = {tag: old(c, repo, tag) for tag in ("v1", "v2", "v3", "v4")}
    (tmp_path / "keep.txt").write_text(
        "# images the ECS services run\n"
        "\n"
        f"{registry.host}/{repo}:v1\n"
        f"  {ALIAS}/{repo}@{d['v3']}   # pinned by digest, spelled with the alias\n")
    cfg = load_config(_configure(tmp_path, registry, repo, keep=["keep.txt"]))
    keep = str(tmp_path / "keep.txt")        # relative to the config file
    assert cfg.keep.lists == [keep]

    sid = take_snapshot(cfg)
    recorded = Store(cfg.store).snapshots.table(sid, "keep_list").to_pylist()
    assert recorded == [{"file": keep, "line": 3, "image": f"{registry.host}/{repo}:v1"},
                        {"file": keep, "line": 4, "image": f"{ALIAS}/{repo}@{d['v3']}"}]
    pid = make_plan(cfg, sid)
    rows = _plan_rows(cfg, pid)
    assert {t: r["action"] for t, r in rows.items()} == {"v1": "keep", "v2": "delete", "v3": "keep", "v4": "delete"}
    assert rows["v1"]["reasons"] == [f"in use: keep list {keep}:3"]
    assert rows["v3"]["reasons"] == [f"in use: keep list {keep}:4"]
    assert "not in use on any keep list" in rows["v2"]["reasons"]
    # evaluated in batches of one repository, the plan is the same
    batched = _plan_rows(cfg, evaluate_and_publish(cfg, sid, batch_rows=1).plan_id)
    assert {t: (r["action"], r["reasons"]) for t, r in batched.items()} == \
        {t: (r["action"], r["reasons"]) for t, r in rows.items()}

    sweep(cfg, pid, approve=True)
    assert {t: status(c, repo, digest) for t, digest in d.items()} == {"v1": 200, "v2": 404, "v3": 200, "v4": 404}


def test_a_keep_list_in_the_s3_store_is_read(s3_store, registry, registry_client, unique_repo, tmp_path):
    import fsspec

    c, repo = registry_client, unique_repo
    old(c, repo, "v1")
    old(c, repo, "v2")
    url = f"{s3_store}/keep-lists/ecs.txt"
    with fsspec.open(url, "w") as f:
        f.write(f"{registry.host}/{repo}:v2\n")
    cfg = load_config(_configure(tmp_path, registry, repo, keep=[url], store=s3_store))
    assert cfg.keep.lists == [url]

    sid = take_snapshot(cfg)
    assert Store(cfg.store).snapshots.meta(sid)["complete"] is True
    rows = _plan_rows(cfg, make_plan(cfg, sid))
    assert rows["v2"]["action"] == "keep" and rows["v2"]["reasons"] == [f"in use: keep list {url}:1"]
    assert rows["v1"]["action"] == "delete"


# ------------------------------------------------------------------ a keep list that cannot be read


def test_an_unreadable_keep_list_makes_the_snapshot_incomplete_and_deletes_nothing(registry, registry_client,
                                                                                  unique_repo, tmp_path, run_cli):
    c, repo = registry_client, unique_repo
    d = old(c, repo, "v1")
    path = _configure(tmp_path, registry, repo, keep=["lists/absent.txt"])
    absent = tmp_path / "lists" / "absent.txt"

    res = run_cli("snapshot", "--config", path)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("regsweep: error:")]
    assert errors == [f"regsweep: error: keep list {absent}: does not exist"]
    sid = res.stdout.strip().splitlines()[-1]
    meta = Store(str(tmp_path / "store")).snapshots.meta(sid)
    assert meta["complete"] is False and meta["sources"]["keeplist"]["status"] == "failed"

    res = run_cli("plan", "--config", path, "--snapshot", sid, "--json", tmp_path / "plan.json")
    assert res.returncode == 0, res.stderr
    plan = res.stdout.strip().splitlines()[-1]
    rows = json.loads((tmp_path / "plan.json").read_text())
    assert [(r["tag"], r["action"]) for r in rows] == [("v1", "keep")]
    assert rows[0]["reasons"] == [f"snapshot incomplete: keeplist failed: keep list {absent}: does not exist"]
    res = run_cli("sweep", "--config", path, "--plan", plan, "--yes")
    assert res.returncode == 1 and "incomplete snapshot" in res.stderr
    assert status(c, repo, d) == 200


def _big(n_lines: int) -> bytes:
    return "".join(f"r.example.com/app:{i}\n" for i in range(n_lines)).encode()


@pytest.mark.parametrize("content, problem", [
    (None, "{file}: does not exist"),
    ("dir", "{file}: is a directory, not a file"),
    (b"r.example.com/app:1\nr.example.com/app:two words\n", "{file}:2: invalid image reference 'r.example.com/app:two words': invalid reference format"),
    (b"r.example.com/app:1\n\xff\xfe\n", "{file}: is not UTF-8 text (byte 20)"),
    (_big(100_001), "{file}: holds more than 100,000 references, the bound of one keep list"),
    (b"# " + b"x" * (10 * 1024 * 1024) + b"\n", "{file}: is larger than 10 MiB; a keep list is bounded to 10 MiB "
                                                 "and 100,000 references"),
], ids=["absent", "directory", "bad-reference", "not-utf8", "too-many-lines", "too-large"])
def test_a_keep_list_that_cannot_be_read_whole_fails_its_source_naming_it(tmp_path, content, problem):
    file = tmp_path / "keep.txt"
    if content == "dir":
        file.mkdir()
    elif content is not None:
        file.write_bytes(content)
    cfg = parse_config({"store": str(tmp_path / "store"), "registry": {"url": "https://r.example.com"},
                        "keep": {"lists": [str(file)]}})
    with pytest.raises(KeepListError) as e:
        keeplists.extract(cfg, Store(cfg.store), None)
    assert str(e.value) == "keep list " + problem.format(file=file)


def test_a_keep_list_at_its_bounds_is_read_whole(tmp_path):
    file = tmp_path / "keep.txt"
    file.write_bytes(b"# generated\n\n" + _big(100_000))
    cfg = parse_config({"registry": {"url": "https://r.example.com"}, "keep": {"lists": [str(file)]}})
    table = keeplists.extract(cfg, Store(str(tmp_path / "store")), None)["keep_list"]
    assert table.num_rows == 100_000
    assert table.slice(0, 1).to_pylist() == [{"file": str(file), "line": 3, "image": "r.example.com/app:0"}]
    assert table["line"].to_pylist()[-1] == 100_002


# ------------------------------------------------------------------ in use, but missing from the registry


def test_a_workload_naming_a_deleted_tag_is_listed_as_missing(registry, registry_client, unique_repo, tmp_path,
                                                              run_cli):
    c, repo = registry_client, unique_repo
    h = registry.host
    gone_tag, present, gone_digest = old(c, repo, "v1"), old(c, repo, "v2"), old(c, repo, "v3")
    _delete_manifest(c, repo, gone_tag)       # v1 goes with its manifest
    _delete_manifest(c, repo, gone_digest)
    (tmp_path / "keep.txt").write_text(f"{h}/{repo}:v2\n{ALIAS}/{repo}:never-pushed\n")
    workloads = [
        workload("Deployment", "shop", "web", [f"{h}/{repo}:v1", f"{h}/{repo}:v2"]),
        workload("StatefulSet", "db", "pg", [f"{h}/{repo}@{gone_digest}"]),
        workload("Job", "batch", "done", [f"{h}/{repo}:v1"], job_conditions=[("Complete", "True")]),   # runs no more
        workload("DaemonSet", "kube-system", "agent", ["nginx:1.27"]),    # another registry: not this one's to judge
    ]
    path = _configure(tmp_path, registry, repo, keep=["keep.txt"], workloads=workloads)

    res = run_cli("snapshot", "--config", path)
    assert res.returncode == 0, res.stderr
    sid = res.stdout.strip().splitlines()[-1]
    line = "3 images in use are missing from the registry: a restart will fail to pull"
    assert f"regsweep: warning: {line} (snapshot table missing.parquet lists each)" in res.stderr.splitlines()

    store = Store(str(tmp_path / "store"))
    assert store.snapshots.meta(sid)["missing"] == {"rows": 3, "images": 3, "helm_revisions": 0}
    missing = store.snapshots.table(sid, "missing").to_pylist()
    assert missing == [
        {"source": "kubernetes", "where": "prod/db/StatefulSet/pg container c0", "image": f"{h}/{repo}@{gone_digest}",
         "repository": repo, "tag": None, "digest": gone_digest,
         "why": f"digest {gone_digest} is not in the registry: a restart will fail to pull"},
        {"source": "kubernetes", "where": "prod/shop/Deployment/web container c0", "image": f"{h}/{repo}:v1",
         "repository": repo, "tag": "v1", "digest": None,
         "why": "tag v1 is not in the registry: a restart will fail to pull"},
        {"source": "keeplist", "where": f"{tmp_path / 'keep.txt'}:2", "image": f"{ALIAS}/{repo}:never-pushed",
         "repository": repo, "tag": "never-pushed", "digest": None, "why": "tag never-pushed is not in the registry"},
    ]
    assert status(c, repo, present) == 200

    art = _snapshot_artifact(sid)
    assert f"**{line}.**" in art
    assert f"| kubernetes | prod/shop/Deployment/web container c0 | `{h}/{repo}:v1` | tag v1 is not in the registry" in art
    assert f"| keeplist | {tmp_path / 'keep.txt'}:2 | `{ALIAS}/{repo}:never-pushed` |" in art

    # informational only: the plan keeps what is in use and on the list, and nothing else changes
    res = run_cli("plan", "--config", path, "--snapshot", sid, "--json", tmp_path / "plan.json")
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "plan.json").read_text())
    assert [(r["tag"], r["action"]) for r in rows] == [("v2", "keep")]
    assert rows[0]["reasons"] == [f"in use: keep list {tmp_path / 'keep.txt'}:1",
                                  "in use: prod/shop/Deployment/web container c1"]


def test_a_helm_revision_naming_a_gone_image_cannot_be_rolled_back(registry, registry_client, unique_repo, tmp_path,
                                                                    run_cli):
    c, repo = registry_client, unique_repo
    h = registry.host
    _delete_manifest(c, repo, old(c, repo, "v0"))
    old(c, repo, "v1")

    def app(tag: str) -> str:
        return manifest({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
                         "spec": {"template": {"spec": pod_spec([f"{h}/{repo}:{tag}"])}}})

    helm = [helm_secret(helm_release("app", "shop", 1, app("v0"), status="superseded")),
            helm_secret(helm_release("app", "shop", 2, app("v1")))]
    path = _configure(tmp_path, registry, repo, helm=helm)

    res = run_cli("snapshot", "--config", path)
    assert res.returncode == 0, res.stderr
    sid = res.stdout.strip().splitlines()[-1]
    line = "1 Helm revision names images the registry does not have: rollback impossible"
    assert f"regsweep: warning: {line} (snapshot table missing.parquet lists each)" in res.stderr.splitlines()
    store = Store(str(tmp_path / "store"))
    assert store.snapshots.table(sid, "missing").to_pylist() == [
        {"source": "helm", "where": "prod/shop/app revision 1 (superseded)", "image": f"{h}/{repo}:v0",
         "repository": repo, "tag": "v0", "digest": None, "why": "rollback impossible: tag v0 is not in the registry"}]
    assert f"| helm | prod/shop/app revision 1 (superseded) | `{h}/{repo}:v0` |" in _snapshot_artifact(sid)

    res = run_cli("history", "--config", path)
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    at = out.index(f"broken now (snapshot {sid}): {line}")
    assert out[at + 1] == f"  helm prod/shop/app revision 1 (superseded): {h}/{repo}:v0: " \
                          "rollback impossible: tag v0 is not in the registry"

    # Without a complete registry listing nothing can be called missing: no table, and history says so.
    res = run_cli("snapshot", "--config", path, "--sources", "helm")
    assert res.returncode == 0, res.stderr
    later = res.stdout.strip().splitlines()[-1]
    assert "missing from the registry" not in res.stderr and "rollback impossible" not in res.stderr
    assert store.snapshots.table(later, "missing") is None and "missing" not in store.snapshots.meta(later)
    res = run_cli("history", "--config", path)
    assert f"broken now: unknown (snapshot {later} has no complete registry listing to compare with)" in res.stdout


def test_when_nothing_is_missing_the_snapshot_and_history_say_so(registry, registry_client, unique_repo, tmp_path, prefect_harness):
    from flows.snapshot import snapshot_flow
    from tasks.history.growth import growth_report, render_text, to_json

    c, repo = registry_client, unique_repo
    old(c, repo, "v1")
    cfg = load_config(_configure(tmp_path, registry, repo,
                                 workloads=[workload("Deployment", "shop", "web", [f"{registry.host}/{repo}:v1"])]))
    sid = snapshot_flow(config=cfg)
    store = Store(cfg.store)
    assert store.snapshots.meta(sid)["missing"] == {"rows": 0, "images": 0, "helm_revisions": 0}
    assert store.snapshots.table(sid, "missing").num_rows == 0
    assert store.snapshots.table(sid, "missing").schema.names == ["source", "where", "image", "repository", "tag",
                                                                 "digest", "why"]
    report = growth_report(store)
    assert render_text(report).splitlines()[-1] == \
        f"broken now: nothing (snapshot {sid}: every image in use is in the registry)"
    assert to_json(report)["broken_now"] == {"snapshot": sid, "missing": {"rows": 0, "images": 0, "helm_revisions": 0},
                                             "rows": []}
