"""Images in use that the registry does not have: the snapshot's MISSING table, written after every source.

A workload naming a tag that was deleted (by hand, by another tool, by a sweep of another
configuration) runs until its pod is rescheduled, and then fails to pull; a Helm revision whose
images are gone cannot be rolled back to; a keep list naming an image the registry lacks keeps
nothing. Once every source of a snapshot finished, this step compares what the workloads (not
finished Jobs), the Helm revisions and the keep lists name *in this registry* — the host of
`registry.url` or an alias, parsed and normalised by the plan's own matcher
(tasks.oci.reference.RegistryMatcher) — with what the registry source listed: a digest reference
is missing when no tag or manifest of its repository has that digest, a tag reference when the
repository has no such tag.

Only sources that completed are read; without a complete registry listing nothing can be called
missing, so no table is written at all (readers see "unknown", not "none"). A repository the
scan did not cover (outside `registry.repositories`, or another project on a registry host that
a native API lists by project, group or owner) is not judged. The table is informational: no
keep rule reads it, and it never changes a keep or delete decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.config.models import RegsweepConfig
from tasks.oci.reference import RegistryMatcher, match_images, repository_globs
from tasks.snapshot.places import helm_revision_names, keep_list_names, workload_names
from tasks.store.schemas import HELM, KEEP_LIST, MISSING, WORKLOADS
from tasks.store.store import Store

#: Registry APIs whose listing is the whole registry (else only what a project, group or owner holds).
WHOLE_REGISTRY_APIS = ("distribution", "ecr")
#: Rows of the table the snapshot's artifact lists (all are in missing.parquet).
SHOWN = 20
#: The order of sources in the table.
ORDER = ("kubernetes", "keeplist", "helm")


@dataclass
class MissingImages:
    """What the step found: counts for snapshot.json, and the first rows for the artifact."""

    rows: int = 0
    images: int = 0                  # distinct images workloads and keep lists name
    helm_revisions: int = 0          # Helm revisions that name an image the registry does not have
    shown: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "images": self.images, "helm_revisions": self.helm_revisions}


def _read(store: Store, staging: str, name: str, schema: pa.Schema | None = None,
          columns: list[str] | None = None) -> pa.Table | None:
    try:
        return store.read_table(f"{staging}/{name}.parquet", schema, columns)
    except FileNotFoundError:
        return None


def _placed(store: Store, staging: str, completed: set[str]) -> pd.DataFrame:
    """(source, where, image) of every place a completed source names an image."""
    parts = []
    wl = _read(store, staging, "workloads", WORKLOADS) if "kubernetes" in completed else None
    if wl is not None:
        wl = wl.filter(pc.invert(wl["finished"]))   # a finished Job runs no more: its images are not in use
        parts.append(("kubernetes", workload_names(wl), wl["image"]))
    hl = _read(store, staging, "helm", HELM) if "helm" in completed else None
    if hl is not None:
        parts.append(("helm", helm_revision_names(hl, status=True), hl["image"]))
    kl = _read(store, staging, "keep_list", KEEP_LIST) if "keeplist" in completed else None
    if kl is not None:
        parts.append(("keeplist", keep_list_names(kl), kl["image"]))
    frames = [pd.DataFrame({"source": source, "where": where.to_pylist(), "image": image.to_pylist()}, dtype=object)
              for source, where, image in parts]
    return (pd.concat(frames, ignore_index=True) if frames
            else pd.DataFrame({"source": [], "where": [], "image": []}, dtype=object))


def _in_scope(config: RegsweepConfig, listed: set[str]):
    """Whether the registry scan covered a repository: a listed one, a configured literal name,
    or on a whole-registry API one that `registry.repositories` (if set) selects."""
    globs = config.registry.repositories
    if globs and not any(ch in g for g in globs for ch in "*?["):
        named = set(globs)
        return lambda repo: repo in listed or repo in named
    whole = config.registry.api in WHOLE_REGISTRY_APIS
    rx = repository_globs(globs) if globs else None
    return lambda repo: repo in listed or (whole and (rx is None or rx.fullmatch(repo) is not None))


def _why(source: str, repo: str, tag, digest, listed: set[str]) -> str:
    if repo not in listed:
        what = f"no tag or manifest of repository {repo} is in the registry"
    elif isinstance(digest, str):
        what = f"digest {digest} is not in the registry"
    else:
        what = f"tag {tag} is not in the registry"
    return {"kubernetes": f"{what}: a restart will fail to pull", "helm": f"rollback impossible: {what}"}.get(source, what)


def missing_images(config: RegsweepConfig, store: Store, staging: str, completed: set[str]) -> tuple[pa.Table, MissingImages]:
    """The MISSING rows (schema MISSING, ordered by source, place and image) and their counts,
    from the staged tables of the sources in `completed`, which must hold the registry."""
    placed = _placed(store, staging, completed)
    matcher = RegistryMatcher(config.registry.url, config.registry.aliases)
    named = placed.merge(match_images(placed["image"], matcher), on="image", how="inner") if len(placed) else \
        placed.assign(repository=[], tag=[], digest=[])
    if not len(named):
        return MISSING.empty_table(), MissingImages()
    repos = pa.array(sorted(set(named["repository"])), pa.string())
    tags = _read(store, staging, "tags", columns=["repository", "tag", "digest", "gone"])
    manifests = _read(store, staging, "manifests", columns=["repository", "digest"])
    # what the registry has, in the repositories named only
    have_tags, have_digests, listed = set(), set(), set()
    if tags is not None:
        t = tags.filter(pc.is_in(tags["repository"], value_set=repos))
        listed |= set(pc.unique(t["repository"]).to_pylist())
        live = t.filter(pc.and_(pc.invert(t["gone"]), pc.is_valid(t["digest"])))
        have_tags = set(zip(live["repository"].to_pylist(), live["tag"].to_pylist()))
        have_digests |= set(zip(live["repository"].to_pylist(), live["digest"].to_pylist()))
    if manifests is not None:
        m = manifests.filter(pc.is_in(manifests["repository"], value_set=repos))
        listed |= set(pc.unique(m["repository"]).to_pylist())
        have_digests |= set(zip(m["repository"].to_pylist(), m["digest"].to_pylist()))
    scope = _in_scope(config, listed)
    rows = []
    for source, where, image, repo, tag, digest in named[["source", "where", "image", "repository", "tag",
                                                           "digest"]].itertuples(index=False):
        if not scope(repo):
            continue
        by_digest = isinstance(digest, str)
        if (repo, digest) in have_digests if by_digest else (repo, tag) in have_tags:
            continue
        rows.append((source, where, image, repo, tag if isinstance(tag, str) else None,
                     digest if by_digest else None, _why(source, repo, tag, digest, listed)))
    rows.sort(key=lambda r: (ORDER.index(r[0]), r[1], r[2]))
    table = pa.Table.from_pylist([dict(zip(MISSING.names, r)) for r in rows], schema=MISSING)
    images = {(r[3], r[4], r[5]) for r in rows if r[0] != "helm"}
    revisions = {r[1] for r in rows if r[0] == "helm"}
    return table, MissingImages(len(rows), len(images), len(revisions), table.slice(0, SHOWN).to_pylist())


def record_missing(config: RegsweepConfig, store: Store, staging: str, statuses: dict[str, str]) -> MissingImages | None:
    """Write `missing.parquet` into a snapshot's staging area from the sources whose status is
    ok; None (and no table) when the registry source did not complete."""
    if statuses.get("registry") != "ok":
        return None
    completed = {name for name, status in statuses.items() if status == "ok"}
    table, found = missing_images(config, store, staging, completed)
    store.write_table(f"{staging}/missing.parquet", table)
    return found


def summary_line(found: dict[str, Any] | None) -> str | None:
    """The one line the CLI and history print about a snapshot's missing images; None when none
    are missing (or it is not known: no table)."""
    if not found or not (found.get("images") or found.get("helm_revisions")):
        return None
    parts = []
    n = found.get("images") or 0
    if n:
        parts.append(f"{n} image{'s' if n != 1 else ''} in use {'are' if n != 1 else 'is'} missing from the registry: "
                     "a restart will fail to pull")
    k = found.get("helm_revisions") or 0
    if k:
        parts.append(f"{k} Helm revision{'s' if k != 1 else ''} name{'' if k != 1 else 's'} images the registry "
                     "does not have: rollback impossible")
    return "; ".join(parts)
