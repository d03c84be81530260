"""Snapshot tables written by hand, as the extractors write them, for tests of the plan's rules.

    Snap          tables built row by row (same columns, same meaning as the extractors'); git
                  tables always come from real repositories (`snap.git = ...`)
    EVALUATION    the configuration they are evaluated with by default: REGISTRY under two
                  aliases, the git rules off (build on it with tests/support/configs.config)
    plan_of       evaluate a Snap into the plan DataFrame
    decisions, reasons   what the plan says per (repository, tag), and why
    digest        a fresh (or seeded) sha256 digest
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import pandas as pd

from tasks.config.models import RegsweepConfig, parse_config
from tasks.plan.evaluate import plan_rows
from tasks.store.schemas import SOURCE_TABLES
from tests.support.configs import config

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
REGISTRY = "https://registry.example.com"
OCI_IMAGE = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_n = itertools.count()


def digest(seed: str | None = None) -> str:
    """sha256 of `seed`, or of a new counter value: a digest no other call returns."""
    return "sha256:" + hashlib.sha256((seed or f"d{next(_n)}").encode()).hexdigest()


class Snap:
    """Snapshot tables built row by row, as the extractors would write them."""

    def __init__(self, now: datetime = NOW):
        self.now = now
        self.rows = {name: [] for schemas in SOURCE_TABLES.values() for name in schemas}
        self.git = None
        self.failed: dict[str, str] = {}
        self.skipped: set[str] = set()

    def manifest(self, repo, *tags, kind="image", created=None, revision=None, subject=None,
                 size=1000, media_type=None, d=None, links=(), link_source="annotation") -> str:
        d = d or digest()
        mt = media_type or {"index": OCI_INDEX, "referrers-index": OCI_INDEX}.get(kind, OCI_IMAGE)
        self.rows["manifests"].append(dict(repository=repo, digest=d, media_type=mt, kind=kind, artifact_type=None,
                                           size=size, created=created, revision=revision, subject=subject))
        for t in tags:
            self.tag(repo, t, d)
        for c in ([revision] if revision else []) + list(links):
            self.rows["links"].append(dict(repository=repo, digest=d, commit=c, source=link_source))
        return d

    def image(self, repo, *tags, **kw) -> str:
        return self.manifest(repo, *tags, kind="image", **kw)

    def index(self, repo, *tags, platforms=(), **kw) -> str:
        d = self.manifest(repo, *tags, kind="index", **kw)
        for child, platform in platforms:
            self.rows["children"].append(dict(repository=repo, index_digest=d, child_digest=child, platform=platform))
        return d

    def tag(self, repo, tag, d, gone=False):
        self.rows["tags"].append(dict(repository=repo, tag=tag, digest=None if gone else d, gone=gone))

    def workload(self, image, *, image_id=None, kind="Deployment", name="api", container="app",
                 container_type="containers", context="prod", namespace="default", finished=False):
        self.rows["workloads"].append(dict(context=context, namespace=namespace, kind=kind, name=name,
                                           container=container, container_type=container_type, image=image,
                                           image_id=image_id, finished=finished))

    def helm(self, image, *, release="web", revision=1, status="deployed", context="prod", namespace="default"):
        self.rows["helm"].append(dict(context=context, namespace=namespace, release=release, revision=revision,
                                      status=status, chart="web-1.0.0", app_version="1.0", last_deployed=self.now,
                                      driver="secret", image=image))

    def tables(self) -> dict:
        out = {}
        for source, schemas in SOURCE_TABLES.items():
            for name, schema in schemas.items():
                if source in self.failed or source in self.skipped:
                    out[name] = None
                elif source == "git":
                    out[name] = self.git[name] if self.git else None
                else:
                    out[name] = schema.empty_table().to_pandas() if not self.rows[name] else \
                        pd.DataFrame(self.rows[name], columns=schema.names)
        return out

    def meta(self) -> dict:
        sources = {}
        for s in SOURCE_TABLES:
            if s in self.failed:
                sources[s] = {"status": "failed", "rows": 0, "seconds": 0.1, "error": self.failed[s]}
            elif s in self.skipped or (s == "git" and self.git is None):
                sources[s] = {"status": "skipped", "rows": 0, "seconds": 0}
            else:
                sources[s] = {"status": "ok", "rows": 1, "seconds": 0.1}
        return {"id": "snap", "created_at": self.now.isoformat(), "complete": not self.failed,
                "registry": REGISTRY, "sources": sources}


OLD = NOW - timedelta(days=30)
EVALUATION = config(url=REGISTRY, registry={"aliases": ["registry.example.com:443", "reg.internal:5000"]},
                    cleanup={"disableGitHistoryBasedPolicy": True})


def plan_of(snap: Snap, cfg: RegsweepConfig | Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The plan of `snap`'s tables under `cfg` (a parsed configuration or its dict; default EVALUATION)."""
    if cfg is None or isinstance(cfg, Mapping):
        cfg = parse_config(dict(cfg if cfg is not None else EVALUATION))
    return plan_rows(snap.tables(), snap.meta(), cfg).frame


def decisions(plan) -> dict:
    """{(repository, tag): action} of a plan."""
    return {(r.repository, r.tag): r.action for r in plan.itertuples()}


def reasons(plan, repo, tag) -> list[str]:
    """The reasons of the one row of `repo:tag` in a plan."""
    row = plan[(plan.repository == repo) & (plan.tag == tag)]
    assert len(row) == 1, f"{repo}:{tag} not planned once"
    return list(row.iloc[0]["reasons"])
