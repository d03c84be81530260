"""The sample world of `make demo`: a git history, the registry images CI built from it, and the
cluster and Helm state (as kubectl dumps) that a team running those images would have.

    build_history   a repository with main, a release branch with tags, an active and a stale
                    feature branch, dated relative to now
    seed_demo       images for their commits: plain, multi-platform and signed ones
    write_dumps     `kubectl get ... -o json` dumps of two clusters and of Helm's release history

Every image reference in the dumps spells the registry by its public name (ALIAS), as clusters
do; the configuration lists it under `registry.aliases`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from tasks.oci.manifest import ANN_CREATED, ANN_REVISION
from testbed.kube import helm_release, helm_secret, kubectl_list, manifest, pod, pod_spec, workload
from testbed.push import push_artifact, push_image, push_index, rfc3339, tag_manifest

ALIAS = "registry.example.com"
COSIGN = "application/vnd.dev.cosign.artifact.sig.v1+json"
_BUILD_DELAY = timedelta(minutes=5)   # CI pushes an image a few minutes after the commit


@dataclass
class History:
    """Commits per branch, newest first, as (sha, committed) pairs, and tag -> sha."""

    path: Path
    branches: dict[str, list[tuple[str, datetime]]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def sha(self, branch: str, i: int) -> str:
        return self.branches[branch][i][0]


def build_history(path: Path, now: datetime) -> History:
    """A clone-like repository (branches under refs/remotes/origin) with dates relative to `now`."""
    import shutil

    import pygit2

    if path.exists():
        shutil.rmtree(path)
    repo = pygit2.init_repository(str(path))
    repo.remotes.create("origin", "https://git.example.com/demo/app.git")
    tree = repo.TreeBuilder().write()
    hist = History(path)

    def commit(msg: str, when: datetime, parent: str | None) -> str:
        sig = pygit2.Signature("Demo Developer", "dev@example.com", int(when.timestamp()), 0)
        return str(repo.create_commit(None, sig, sig, msg, tree, [pygit2.Oid(hex=parent)] if parent else []))

    def branch(name: str, start: str, times: list[datetime]) -> None:
        shas, parent = [], start
        for i, when in enumerate(times):
            parent = commit(f"{name}: change {i + 1}", when, parent)
            shas.append((parent, when))
        hist.branches[name] = list(reversed(shas))
        repo.references.create(f"refs/remotes/origin/{name}", pygit2.Oid(hex=parent))

    base = commit("initial import", now - timedelta(days=45), None)
    branch("release/1.2", base, [now - timedelta(days=d) for d in (30, 28, 26)])
    branch("feature/search-v1", base, [now - timedelta(days=d) for d in (40, 39, 38)])   # stale
    branch("main", base, [now - timedelta(minutes=30) - timedelta(hours=6 * i) for i in range(13, -1, -1)])
    fork = hist.sha("main", 7)
    branch("feature/login", fork, [now - timedelta(hours=h) for h in (26, 5, 1)])          # active
    repo.references.create("refs/heads/main", pygit2.Oid(hex=hist.sha("main", 0)))
    for tag, i in (("v1.2.0", 2), ("v1.2.1", 0)):
        sha, when = hist.branches["release/1.2"][i]
        sig = pygit2.Signature("Release Bot", "release@example.com", int(when.timestamp()), 0)
        repo.create_tag(tag, pygit2.Oid(hex=sha), pygit2.enums.ObjectType.COMMIT, sig, f"release {tag}")
        hist.tags[tag] = sha
    return hist


class _Images:
    """Pushes with realistic sizes: a shared base layer per repository and an app layer per build."""

    def __init__(self, client: httpx.Client):
        self.client = client
        self.rng = random.Random(20261201)   # the same sizes every run
        self.bases: dict[str, bytes] = {}

    def image(self, repo: str, tag: str | None, sha: str | None, built: datetime, arch: str = "amd64") -> str:
        base = self.bases.setdefault(repo, self.rng.randbytes(2_000_000 + self.rng.randrange(800_000)))
        app = self.rng.randbytes(150_000 + self.rng.randrange(1_200_000))
        labels = {ANN_REVISION: sha} if sha else {}
        annotations = {ANN_CREATED: rfc3339(built), **labels}
        return push_image(self.client, repo, tag, layers=[base, app],
                          config={"created": built, "architecture": arch, "config": {"Labels": labels}},
                          annotations=annotations)


def seed_demo(url: str, history: History, *, client: httpx.Client | None = None) -> dict[str, Any]:
    """Push the demo's images into the registry at `url`; returns {"repositories": {repo: {tag: digest}},
    "signatures": {repo: [subject digests]}, "tags", "manifests"}.

    demo/api and demo/worker get `sha-<12 hex>` per commit (api: every branch; worker: main and
    the releases), demo/web a two-platform index per recent main and feature commit, release
    images and main's head a cosign-style signature, and demo/tools an image linked to no commit.
    """
    own = client is None
    client = client or httpx.Client(base_url=url, timeout=60)
    push = _Images(client)
    repos: dict[str, dict[str, str]] = {"demo/api": {}, "demo/worker": {}, "demo/web": {}, "demo/tools": {}}
    signed: dict[str, list[str]] = {}
    try:
        def each(branch: str, limit: int | None = None):
            for sha, when in history.branches[branch][:limit]:
                yield f"sha-{sha[:12]}", sha, when + _BUILD_DELAY

        for branch in ("main", "release/1.2", "feature/login", "feature/search-v1"):
            for tag, sha, built in each(branch):
                repos["demo/api"][tag] = push.image("demo/api", tag, sha, built)
        for branch in ("main", "release/1.2"):
            for tag, sha, built in each(branch):
                repos["demo/worker"][tag] = push.image("demo/worker", tag, sha, built)
        for branch, limit in (("main", 10), ("feature/login", None)):
            for tag, sha, built in each(branch, limit):
                children = [(push.image("demo/web", None, sha, built, arch), {"architecture": arch, "os": "linux"})
                            for arch in ("amd64", "arm64")]
                repos["demo/web"][tag] = push_index(client, "demo/web", tag, children,
                                                    annotations={ANN_REVISION: sha, ANN_CREATED: rfc3339(built)})
        head = f"sha-{history.sha('main', 0)[:12]}"
        for repo in ("demo/api", "demo/worker", "demo/web"):
            repos[repo]["latest"] = tag_manifest(client, repo, repos[repo][head], "latest")
        for repo in ("demo/api", "demo/worker"):
            for tag, sha in history.tags.items():
                repos[repo][tag] = tag_manifest(client, repo, repos[repo][f"sha-{sha[:12]}"], tag)
        # Signed: the releases, main's head, and one stale image (its signature goes with it).
        stale = f"sha-{history.sha('feature/search-v1', 0)[:12]}"
        for repo, tags in (("demo/api", ["v1.2.0", "v1.2.1", "latest", stale]), ("demo/worker", ["v1.2.1"])):
            for tag in tags:
                push_artifact(client, repo, subject=repos[repo][tag], artifact_type=COSIGN,
                              annotations={ANN_CREATED: rfc3339(datetime.now(timezone.utc))})
                signed.setdefault(repo, []).append(repos[repo][tag])
        repos["demo/tools"]["debug"] = push.image("demo/tools", "debug", None,
                                                  datetime.now(timezone.utc) - timedelta(days=90))
    finally:
        if own:
            client.close()
    return {"registry": url, "repositories": repos, "signatures": signed,
            "tags": sum(len(t) for t in repos.values()),
            "manifests": sum(len(set(t.values())) for t in repos.values())}


def write_dumps(directory: Path, history: History, summary: dict[str, Any]) -> dict[str, list[Path]]:
    """Dumps as `kubectl get ... -A -o json` prints them: {"kubernetes": [prod, staging], "helm": [prod]}."""
    directory.mkdir(parents=True, exist_ok=True)
    repos = summary["repositories"]

    def ref(repo: str, tag: str) -> str:
        return f"{ALIAS}/{repo}:{tag}"

    def main(i: int) -> str:
        return f"sha-{history.sha('main', i)[:12]}"

    api_pod = pod("prod", "api-6d4f9-x2k7q", [ref("demo/api", "v1.2.1")],
                  image_ids={"c0": f"docker-pullable://{ALIAS}/demo/api@{repos['demo/api']['v1.2.1']}"})
    prod = [
        workload("Deployment", "prod", "api", [ref("demo/api", "v1.2.1")], replicas=3),
        workload("ReplicaSet", "prod", "api-6d4f9", [ref("demo/api", "v1.2.1")], replicas=3),
        workload("ReplicaSet", "prod", "api-5c8b7", [ref("demo/api", "v1.2.0")], replicas=0),   # rollback target
        api_pod,
        workload("Deployment", "prod", "web", [ref("demo/web", main(6))], replicas=2),
        workload("CronJob", "prod", "worker-nightly", [ref("demo/worker", main(9))]),
        workload("Job", "prod", "search-reindex", [ref("demo/api", f"sha-{history.sha('feature/search-v1', 0)[:12]}")],
                 job_conditions=[("Complete", "True")]),                                       # finished: keeps nothing
        workload("DaemonSet", "kube-system", "node-agent", ["docker.io/library/busybox:1.36"]),
    ]
    staging = [workload("Deployment", "staging", "api", [ref("demo/api", f"sha-{history.sha('feature/login', 1)[:12]}")])]

    def web_release(revision: int, tag: str, status: str) -> dict:
        rendered = manifest({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                             "spec": {"template": {"spec": pod_spec([ref("demo/web", tag)])}}})
        return helm_secret(helm_release("web", "prod", revision, rendered, status=status, chart="web",
                                        chart_version=f"0.{revision}.0", app_version=tag,
                                        last_deployed=rfc3339(datetime.now(timezone.utc) - timedelta(days=4 - revision))))

    helm_objs = [web_release(1, main(9), "superseded"), web_release(2, main(8), "superseded"),
                 web_release(3, main(6), "deployed")]
    out = {"kubernetes": [directory / "prod.json", directory / "staging.json"], "helm": [directory / "prod-helm.json"]}
    for path, objs in ((out["kubernetes"][0], prod), (out["kubernetes"][1], staging), (out["helm"][0], helm_objs)):
        path.write_text(json.dumps(kubectl_list(objs), indent=1))
    return out
