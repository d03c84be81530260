"""Acceptance: regsweep used as a user uses it, through the `regsweep` command and a YAML file.

Each journey builds a real world — a Distribution 2.8 registry filled through its HTTP API, a
git clone with controlled dates, two clusters served to the real `kubernetes` client with Helm
release Secrets encoded as Helm encodes them — writes the configuration a user would write
(docs/configuration.md's keys exactly), and drives only the command line. What it checks
is what a user sees: exit codes, the last line on stdout, no traceback on stderr, the plan's
JSON rows, and what the registry itself still serves afterwards (GET manifest: 200 kept, 404
deleted).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tasks.oci.manifest import fallback_tag
from testbed import MANIFEST_ACCEPT, push_artifact, push_image, push_index, tag_manifest
from testbed.kube import helm_release, helm_secret, manifest, pod, workload
from tests.support.configs import config
from tests.support.gitrepo import RepoBuilder
from tests.support.kube import kube_env  # noqa: F401 (fixtures)
from tests.support.registry import fresh_registry  # noqa: F401 (fixtures)

SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"
REVISION = "org.opencontainers.image.revision"
ALIAS = "registry.team.example:5000"      # how some manifests spell the registry's host
LONG_AGO = datetime(2025, 1, 1, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- helpers


def last_line(res) -> str:
    lines = res.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def ok(res, code: int = 0) -> str:
    """Assert the run's exit code and that no traceback reached the user; return stdout's last line."""
    assert res.returncode == code, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr
    return last_line(res)


def served(client: httpx.Client, repo: str, ref: str) -> int:
    """What the registry answers for a manifest GET: 200 while it exists, 404 once deleted."""
    return client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}).status_code


def image(client, repo, tag, seed, *, created=LONG_AGO, revision=None):
    return push_image(client, repo, tag, layers=[f"{repo} {seed}".encode()], config={"created": created},
                      annotations={REVISION: revision} if revision else None)


# --------------------------------------------------------------------------- the team's world


@pytest.fixture
def team(fresh_registry, kube_env, tmp_path):
    """A team registry, its git clone and two clusters, as described in each section below."""
    reg = fresh_registry()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    days = lambda n: now - timedelta(days=n)  # noqa: E731

    # git: main c1..c6; feature/login off c3 (fresh), feature/old off c2 (stale); releases v1.0, v1.1
    git = RepoBuilder(tmp_path / "checkout")
    c = {}
    for name, age in (("c1", 90), ("c2", 80)):
        c[name] = git.commit("main", days(age))
    c["o1"] = git.commit("feature/old", days(70), parents=[c["c2"]])
    for name, age in (("c3", 20), ("c4", 10), ("c5", 5), ("c6", 1)):
        c[name] = git.commit("main", days(age))
    c["f1"] = git.commit("feature/login", days(3), parents=[c["c3"]])
    c["f2"] = git.commit("feature/login", days(2))
    git.tag("v1.0", c["c2"], when=days(79), annotated=True)
    git.tag("v1.1", c["c4"], when=days(9), annotated=True)
    short = {k: v[:7] for k, v in c.items()}

    with reg.client() as cl:
        d = {}
        # team/api: CI pushes sha-<commit> (linked by link.tagPatterns) and re-tags releases
        for k in ("c1", "c2", "c3", "c4", "c5", "c6", "f1", "f2", "o1"):
            d[f"api:{k}"] = image(cl, "team/api", f"sha-{short[k]}", k)
        tag_manifest(cl, "team/api", d["api:c2"], "v1.0")
        tag_manifest(cl, "team/api", d["api:c4"], "v1.1")
        d["sig:c1"] = push_artifact(cl, "team/api", subject=d["api:c1"], artifact_type=SIG)
        d["sig:c6"] = push_artifact(cl, "team/api", subject=d["api:c6"], artifact_type=SIG)
        d["fallback:c1"] = cl.head(f"/v2/team/api/manifests/{fallback_tag(d['api:c1'])}",
                                   headers={"Accept": MANIFEST_ACCEPT}).headers["docker-content-digest"]
        # team/web: linked by revision annotation only
        d["web:1.5"] = image(cl, "team/web", "web-1.5", "1.5", revision=c["c6"])
        tag_manifest(cl, "team/web", d["web:1.5"], "latest")
        d["web:1.4"] = image(cl, "team/web", "web-1.4", "1.4", revision=c["c1"])
        d["web:1.3"] = image(cl, "team/web", "web-1.3", "1.3", revision=c["c2"])
        d["web:1.2"] = image(cl, "team/web", "web-1.2", "1.2", revision=c["c1"])
        never_pushed = "0123456789abcdef0123456789abcdef01234567"
        d["web:pr-77"] = image(cl, "team/web", "pr-77", "pr77", revision=never_pushed,
                               created=now - timedelta(minutes=20))
        d["web:pr-12"] = image(cl, "team/web", "pr-12", "pr12", revision=never_pushed)
        # team/worker: multi-platform indexes (the index carries the revision), plain images
        for k in ("c6", "c1"):
            amd = image(cl, "team/worker", None, f"{k}-amd64")
            arm = image(cl, "team/worker", None, f"{k}-arm64")
            d[f"worker:{k}:amd64"], d[f"worker:{k}:arm64"] = amd, arm
            d[f"worker:{k}"] = push_index(cl, "team/worker", f"sha-{short[k]}",
                                          [(amd, {"os": "linux", "architecture": "amd64"}),
                                           (arm, {"os": "linux", "architecture": "arm64"})],
                                          annotations={REVISION: c[k]})
        tag_manifest(cl, "team/worker", d["worker:c6"], "stable")
        d["worker:c5"] = image(cl, "team/worker", f"sha-{short['c5']}", "c5")
        d["worker:c2"] = image(cl, "team/worker", f"sha-{short['c2']}", "c2")
        # team/tools: a hand-pushed debugging image nobody links to a commit
        d["tools:debug"] = image(cl, "team/tools", "debug", "debug")

    host = reg.host
    prod, staging = kube_env.server(), kube_env.server()
    # prod: the api Deployment (by tag), its previous ReplicaSet scaled to 0, and Helm history
    prod.add(workload("Deployment", "apps", "api", [f"{host}/team/api:sha-{short['c6']}"]),
             workload("ReplicaSet", "apps", "api-5d8f7", [f"{host}/team/api:sha-{short['c3']}"], replicas=0))
    for rev, tag, status in ((1, "v1.0", "superseded"), (2, f"sha-{short['c4']}", "superseded"),
                             (3, f"sha-{short['c6']}", "deployed")):
        doc = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
               "spec": {"template": {"spec": {"containers": [{"name": "api", "image": f"{host}/team/api:{tag}"}]}}}}
        prod.add(helm_secret(helm_release("api", "apps", rev, manifest(doc), status=status)))
    # staging: web through another spelling of the host and by digest, the worker's pod still
    # running an older digest than its `stable` tag, and a migration Job that has completed
    staging.add(pod("web", "web-0", [f"{ALIAS}/team/web:web-1.4"]),
                workload("Deployment", "web", "web-canary", [f"{host}/team/web@{d['web:1.3']}"]),
                pod("workers", "worker-0", [f"{host}/team/worker:stable"],
                    image_ids={"c0": f"docker-pullable://{host}/team/worker@{d['worker:c2']}"}),
                workload("Job", "jobs", "migrate", [f"{host}/team/api:sha-{short['o1']}"],
                         job_conditions=[("Complete", "True")]))
    kubeconfig = kube_env.kubeconfig({"prod": (prod, None), "staging": (staging, None)}, current="staging")

    data = {
        "store": "./var/regsweep",              # relative: anchored at the config file
        "registry": {"url": reg.url, "aliases": [ALIAS], "concurrency": 4},
        "link": {"tagPatterns": ["^sha-(?P<commit>[0-9a-f]{7,40})$"]},
        "git": {"path": str(git.path), "remote": "origin"},
        "kubernetes": {"kubeconfig": str(kubeconfig), "contexts": ["prod", "staging"]},
        "helm": {"enabled": True},
        "cleanup": {
            "keepPolicies": [
                {"references": {"tag": "/^v\\d+\\.\\d+$/", "limit": {"last": 1}}},
                {"references": {"branch": "main"}, "imagesPerReference": {"last": 2}},
                {"references": {"branch": "/^feature\\/.*/", "limit": {"in": "168h"}},
                 "imagesPerReference": {"last": 1}},
            ],
            "keepImagesBuiltWithinLastNHours": 2,
        },
        "sweep": {"maxPlanAge": "1h"},
    }
    cfg_path = config(data, write=tmp_path / "regsweep.yaml")
    return dict(reg=reg, d=d, c=c, short=short, prod=prod, staging=staging, cfg=cfg_path, data=data,
                host=host, tmp=tmp_path)


def snapshot_plan(run_cli, cfg, tmp, name="plan.json"):
    snap = run_cli("snapshot", "--config", cfg)
    sid = ok(snap)
    out = tmp / name
    res = run_cli("plan", "--config", cfg, "--snapshot", sid, "--json", out)
    pid = ok(res)
    return sid, pid, json.loads(out.read_text()), res


# --------------------------------------------------------------------------- journeys


def test_team_registry_snapshot_plan_explain_sweep_history(team, run_cli, tmp_path):
    d, s, host, cfg = team["d"], team["short"], team["host"], team["cfg"]
    sid, pid, rows, plan_res = snapshot_plan(run_cli, cfg, tmp_path)
    assert (tmp_path / "var" / "regsweep" / "snapshots" / sid / "snapshot.json").exists()
    assert all(r["action"] in ("keep", "delete") and r["reasons"] for r in rows)
    assert all({"repository", "tag", "digest", "action", "reasons"} <= set(r) for r in rows)
    by = {(r["repository"], r["tag"]): r for r in rows if r["tag"] is not None}

    def reasons(repo, tag):
        return by[(repo, tag)]["reasons"]

    def has(repo, tag, prefix):
        return any(x.startswith(prefix) for x in reasons(repo, tag))

    # every keep category appears where it should; where one rule alone keeps a tag, only it is listed
    assert has("team/api", f"sha-{s['c6']}", "in use: prod/apps/Deployment/api container")
    assert reasons("team/api", f"sha-{s['c3']}") == ["in use: prod/apps/ReplicaSet/api-5d8f7 container c0"]  # old RS
    assert reasons("team/web", "web-1.4") == ["in use: staging/web/Pod/web-0 container c0"]     # alias host
    assert has("team/web", "web-1.3", "in use: staging/web/Deployment/web-canary")              # @sha256
    assert has("team/worker", f"sha-{s['c2']}", "in use: staging/workers/Pod/worker-0")         # imageID
    assert reasons("team/api", "v1.0") == ["helm: prod/apps/api revision 1 (superseded)"]       # rollback
    assert reasons("team/api", f"sha-{s['c2']}") == reasons("team/api", "v1.0")                 # same digest
    assert has("team/api", "v1.1", "helm: prod/apps/api revision 2")
    assert has("team/api", "v1.1", "git: tag v1.1")
    assert reasons("team/api", f"sha-{s['c5']}") == ["git: branch main, image 2 of 2"]
    assert reasons("team/api", f"sha-{s['f2']}") == ["git: branch feature/login, image 1 of 1"]
    fresh = reasons("team/web", "pr-77")        # linked to a commit never pushed: only its age keeps it
    assert len(fresh) == 1 and fresh[0].startswith("built ") and fresh[0].endswith(" ago (< 2h)")
    assert reasons("team/tools", "debug") == [
        "unlinked: no revision annotation, label or tag pattern links it to a commit"]
    assert has("team/worker", "stable", "git: branch main")
    assert reasons("team/api", fallback_tag(d["api:c6"])) == [f"referrer of kept {d['api:c6']}"]
    for r in ("team/web", "latest"), ("team/web", "web-1.5"):
        assert by[r]["action"] == "keep"
    # the finished Job protects nothing: its image is on a stale branch and goes
    assert by[("team/api", f"sha-{s['o1']}")]["action"] == "delete"
    assert not has("team/api", f"sha-{s['o1']}", "in use")

    planned = {(r["repository"], r["tag"], r["digest"]) for r in rows if r["action"] == "delete"}
    assert planned == {
        ("team/api", f"sha-{s['c1']}", d["api:c1"]),
        ("team/api", fallback_tag(d["api:c1"]), d["fallback:c1"]),
        ("team/api", None, d["sig:c1"]),
        ("team/api", f"sha-{s['f1']}", d["api:f1"]),
        ("team/api", f"sha-{s['o1']}", d["api:o1"]),
        ("team/web", "web-1.2", d["web:1.2"]),
        ("team/web", "pr-12", d["web:pr-12"]),
        ("team/worker", f"sha-{s['c1']}", d["worker:c1"]),
        ("team/worker", None, d["worker:c1:amd64"]),
        ("team/worker", None, d["worker:c1:arm64"]),
    }
    assert "10 delete" in plan_res.stderr

    # explain, with the reference spelled as in a manifest and as a bare repo:tag
    ex = run_cli("explain", "--config", cfg, f"{host}/team/api:sha-{s['c3']}", "--plan", pid)
    assert ok(ex) == f"keep team/api:sha-{s['c3']} ({d['api:c3']})"
    assert "  - in use: prod/apps/ReplicaSet/api-5d8f7 container c0" in ex.stdout
    ex = run_cli("explain", "--config", cfg, f"team/api:sha-{s['o1']}")    # latest plan
    assert ok(ex) == f"delete team/api:sha-{s['o1']} ({d['api:o1']})"
    assert "branch feature/old" in ex.stdout
    # kept relatives have no row of their own: explain answers with what they belong to
    ex = run_cli("explain", "--config", cfg, f"{host}/team/worker@{d['worker:c6:amd64']}", "--plan", pid)
    assert ok(ex) == f"keep team/worker@{d['worker:c6:amd64']} (untagged)"
    assert f"  - platform (linux/amd64) of kept index {d['worker:c6']} (tags: sha-{s['c6']}, stable)" in ex.stdout
    ex = run_cli("explain", "--config", cfg, f"team/api@{d['sig:c6']}", "--plan", pid)
    assert ok(ex) == f"keep team/api@{d['sig:c6']} (untagged)"
    assert f"  - referrer of kept {d['api:c6']} (tags: sha-{s['c6']})" in ex.stdout

    # a dry run re-checks everything and deletes nothing
    dry = run_cli("sweep", "--config", cfg, "--plan", pid, "--dry-run")
    assert ok(dry).startswith("dry run: would delete 10 manifests")
    with team["reg"].client() as cl:
        assert all(served(cl, "team/api", x) == 200 for x in (d["api:c1"], d["sig:c1"], d["api:o1"]))

    res = run_cli("sweep", "--config", cfg, "--plan", pid, "--yes", "--max-deletions", "10")
    assert ok(res).startswith("deleted 10 manifests (") and res.stdout.strip().endswith("skipped 0, failed 0")
    gone = {r["digest"]: r["repository"] for r in rows if r["action"] == "delete"}
    kept = {r["digest"]: r["repository"] for r in rows if r["action"] == "keep"}
    kept.update({d["worker:c6:amd64"]: "team/worker", d["worker:c6:arm64"]: "team/worker",
                 d["sig:c6"]: "team/api"})
    with team["reg"].client() as cl:
        assert {dg: served(cl, repo, dg) for dg, repo in gone.items()} == {dg: 404 for dg in gone}
        assert {dg: served(cl, repo, dg) for dg, repo in kept.items()} == {dg: 200 for dg in kept}
        assert served(cl, "team/api", "v1.0") == 200 and served(cl, "team/worker", "stable") == 200

    # history lists the snapshot: complete, 4 repositories, 26 tags, 28 manifests
    hist = run_cli("history", "--config", cfg)
    ok(hist)
    row = next(line.split() for line in hist.stdout.splitlines() if line.startswith(sid))
    assert row[3:7] == ["yes", "4", "26", "28"]


def test_a_failing_cluster_and_a_corrupt_helm_release_fail_closed(team, run_cli, tmp_path):
    """staging answers 500 on pods, prod holds a truncated Helm release: nothing may be deleted."""
    cfg, d = team["cfg"], team["d"]
    team["staging"].fail("pods", 500)
    broken = helm_secret(helm_release("api", "apps", 4, ""), payload="H4sIAAAAAAAC/+xYW2/bNhR+")
    team["prod"].add(broken)

    snap = run_cli("snapshot", "--config", cfg)
    sid = ok(snap, 1)    # published, its id printed last, and the run failed so schedules alert
    assert "context staging, kind Pod" in snap.stderr and "HTTP 500" in snap.stderr
    assert "helm release prod/apps/api: secret sh.helm.release.v1.api.v4" in snap.stderr
    assert f"snapshot {sid} is incomplete" in snap.stderr
    meta = json.loads((tmp_path / "var" / "regsweep" / "snapshots" / sid / "snapshot.json").read_text())
    assert meta["complete"] is False
    assert {k: v["status"] for k, v in meta["sources"].items()} == {
        "registry": "ok", "kubernetes": "failed", "helm": "failed", "git": "ok"}

    res = run_cli("plan", "--config", cfg, "--json", tmp_path / "plan.json")   # latest = that snapshot
    pid = ok(res)
    rows = json.loads((tmp_path / "plan.json").read_text())
    assert len(rows) == 26 and {r["action"] for r in rows} == {"keep"}
    assert all(r["reasons"][0].startswith("snapshot incomplete: kubernetes failed: ") for r in rows)
    assert "0 delete" in res.stderr and "this plan deletes nothing" in res.stderr

    sweep = run_cli("sweep", "--config", cfg, "--plan", pid, "--yes", "--max-deletions", "100")
    assert ok(sweep, 1) == "refused: deleted nothing"
    assert f"comes from incomplete snapshot {sid}" in sweep.stderr
    with team["reg"].client() as cl:
        assert all(served(cl, repo, d[k]) == 200 for repo, k in (
            ("team/api", "api:c1"), ("team/api", "sig:c1"), ("team/api", "api:o1"),
            ("team/web", "web:pr-12"), ("team/worker", "worker:c1"), ("team/worker", "worker:c1:arm64")))


def test_namespaced_access_unlinked_delete_and_a_tag_repushed_before_the_sweep(team, run_cli, tmp_path):
    """A team whose service account may only list its own namespaces, deleting unlinked images;
    CI re-pushes a tag and someone tags a doomed image between the plan and the sweep."""
    d, s = team["d"], team["short"]
    for plural in ("pods", "deployments", "replicasets", "statefulsets", "daemonsets", "jobs", "cronjobs",
                   "replicationcontrollers", "secrets", "configmaps"):
        team["prod"].forbid(plural)          # cluster-wide lists are refused in prod
    data = json.loads(json.dumps(team["data"]))
    data["kubernetes"]["namespaces"] = ["apps", "web", "workers"]
    data["cleanup"]["unlinkedImages"] = "delete"
    cfg = config(data, write=tmp_path / "team.yaml")

    ok(run_cli("snapshot", "--config", cfg))
    res = run_cli("plan", "--config", cfg, "--snapshot", "latest", "--json", tmp_path / "plan.json")
    pid = ok(res)
    rows = json.loads((tmp_path / "plan.json").read_text())
    delete = {(r["repository"], r["tag"], r["digest"]) for r in rows if r["action"] == "delete"}
    assert ("team/tools", "debug", d["tools:debug"]) in delete and len(delete) == 11   # unlinked goes too
    debug = next(r for r in rows if r["tag"] == "debug")
    assert "unlinked (unlinkedImages: delete)" in debug["reasons"]
    kept = {(r["repository"], r["tag"]) for r in rows if r["action"] == "keep"}
    assert {("team/web", "web-1.4"), ("team/api", f"sha-{s['c3']}"), ("team/api", "v1.0")} <= kept

    with team["reg"].client() as cl:
        rebuilt = image(cl, "team/web", "pr-12", "pr12 rebuilt", revision="0123456789abcdef0123456789abcdef01234567")
        tag_manifest(cl, "team/web", d["web:1.2"], "hotfix")

    sweep = run_cli("sweep", "--config", cfg, "--plan", pid, "--yes", "--max-deletions", "11")
    assert re.fullmatch(r"deleted 9 manifests \(5\.2 kB of image sizes, [\d.]+ k?B freed by garbage collection\), "
                        r"skipped 2, failed 0", ok(sweep))
    with team["reg"].client() as cl:
        assert cl.head("/v2/team/web/manifests/pr-12", headers={"Accept": MANIFEST_ACCEPT}
                       ).headers["docker-content-digest"] == rebuilt
        assert served(cl, "team/web", d["web:pr-12"]) == 200     # its tag moved: not the planned image any more
        assert served(cl, "team/web", "hotfix") == 200 and served(cl, "team/web", d["web:1.2"]) == 200
        assert served(cl, "team/tools", d["tools:debug"]) == 404
        assert served(cl, "team/api", d["api:o1"]) == 404 and served(cl, "team/worker", d["worker:c1:amd64"]) == 404
        assert served(cl, "team/api", d["api:c3"]) == 200 and served(cl, "team/web", d["web:1.4"]) == 200


def test_usage_mistakes_exit_2_naming_the_argument_and_start_nothing(team, run_cli, tmp_path):
    cfg = team["cfg"]
    data = json.loads(json.dumps(team["data"]))
    data["kubernetes"]["contexts"] = ["prod", "stagign"]
    typo = config(data, write=tmp_path / "typo.yaml")
    res = run_cli("snapshot", "--config", typo)
    ok(res, 2)
    assert res.stdout == "" and res.stderr.strip().splitlines() == [
        f"regsweep: error: kubernetes.contexts: no context 'stagign' in kubeconfig "
        f"{tmp_path / 'kubeconfig'} (has: prod, staging)"]
    assert not (tmp_path / "var" / "regsweep" / "snapshots").exists()     # no run, no snapshot

    res = run_cli("sweep", "--config", cfg, "--plan", "20260101T000000.000Z-dead", "--yes")
    ok(res, 2)
    assert res.stdout == "" and res.stderr.startswith("regsweep: error: --plan: store ")

    # mistakes the command line parser catches are one line too, not a box of help
    res = run_cli("sweep", "--config", cfg, "--max-deletions", "-1")
    ok(res, 2)
    assert res.stderr.strip().splitlines() == [
        "regsweep: error: Invalid value for '--max-deletions': Input should be greater than or equal to 0 "
        "(see 'regsweep sweep --help')"]
    res = run_cli("sweep", "--config", cfg)
    assert ok(res, 2) == "" and res.stderr.strip().splitlines() == [
        "regsweep: error: Missing option '--plan'. (see 'regsweep sweep --help')"]

    # PREFECT_API_URL naming a server that is down: one line saying so, not Prefect's traceback
    res = run_cli("history", "--config", cfg, env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    ok(res, 1)
    assert res.stderr.strip().splitlines() == [
        "regsweep: error: cannot reach the Prefect API: Failed to reach API at http://127.0.0.1:9/api/; "
        "start that server, or unset PREFECT_API_URL to run on a temporary local one"]
