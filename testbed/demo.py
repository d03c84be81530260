"""A small realistic registry for `make demo`: three repositories, a multi-platform image, a signature."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import httpx

from tasks.oci import ANN_CREATED, ANN_REVISION
from testbed.push import DEFAULT_LAYER, rfc3339, push_artifact, push_image, push_index, tag_manifest


def _fake_commit(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


def seed_demo(url: str, *, commits: Sequence[str] | None = None, now: datetime | None = None,
              client: httpx.Client | None = None, verify: Any = True) -> dict:
    """Fill the registry at `url` with a small realistic sample for `make demo`; returns a summary.

    Repositories `demo/api`, `demo/web` (multi-platform) and `demo/worker` get `sha-<commit>` tags
    with `org.opencontainers.image.revision` annotations, one per commit in `commits` (newest
    first; fake shas when omitted), built an hour apart; plus `v1.2.0`, `latest`, and a signature
    on the newest api image. Summary: {"registry", "repositories": {repo: {tag: digest}},
    "commits", "tags", "manifests"}.
    """
    now = now or datetime.now(timezone.utc)
    commits = list(commits) if commits else [_fake_commit(f"regsweep-demo-{i}") for i in range(8)]
    own_client = client is None
    client = client or httpx.Client(base_url=url, timeout=30, verify=verify)
    summary: dict[str, Any] = {"registry": url, "repositories": {}, "commits": commits}
    try:
        for repo in ("demo/api", "demo/worker"):
            tags = {}
            for i, commit in enumerate(commits):
                built = now - timedelta(hours=i + 1)
                annotations = {ANN_REVISION: commit, ANN_CREATED: rfc3339(built),
                               "org.opencontainers.image.source": "https://git.example.com/demo/app"}
                tags[f"sha-{commit[:12]}"] = push_image(
                    client, repo, f"sha-{commit[:12]}",
                    layers=[DEFAULT_LAYER, f"{repo} {commit}".encode()],
                    config={"created": built, "config": {"Labels": {ANN_REVISION: commit}}},
                    annotations=annotations)
            newest = tags[f"sha-{commits[0][:12]}"]
            tags["latest"] = tag_manifest(client, repo, newest, "latest")
            oldest = tags[f"sha-{commits[-1][:12]}"]
            tags["v1.2.0"] = tag_manifest(client, repo, oldest, "v1.2.0")
            summary["repositories"][repo] = tags
        sig = push_artifact(client, "demo/api", subject=summary["repositories"]["demo/api"]["latest"],
                            artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json",
                            annotations={ANN_CREATED: rfc3339(now)})
        summary["signature"] = sig

        web = {}
        for i, commit in enumerate(commits[:4]):
            built = now - timedelta(hours=i + 1)
            children = []
            for arch in ("amd64", "arm64"):
                child = push_image(client, "demo/web", None,
                                   layers=[DEFAULT_LAYER, f"web {arch} {commit}".encode()],
                                   config={"created": built, "architecture": arch})
                children.append((child, {"architecture": arch, "os": "linux"}))
            web[f"sha-{commit[:12]}"] = push_index(
                client, "demo/web", f"sha-{commit[:12]}", children,
                annotations={ANN_REVISION: commit, ANN_CREATED: rfc3339(built)})
        web["latest"] = tag_manifest(client, "demo/web", web[f"sha-{commits[0][:12]}"], "latest")
        summary["repositories"]["demo/web"] = web
        summary["tags"] = sum(len(t) for t in summary["repositories"].values())
        summary["manifests"] = sum(len(set(t.values())) for t in summary["repositories"].values())
    finally:
        if own_client:
            client.close()
    return summary
