"""Making, storing and explaining plans: the plain functions behind the plan flow and `explain`.

plan.json records what a sweep must check before acting: `snapshot_id`, `registry`, `policy`
(the hash of the cleanup section), `created_at`, `complete` (false = nothing may be deleted,
`problems` says why), counts and bytes reclaimable per repository, and `registry_capabilities`,
the snapshot's probe of what the registry lets a sweep do (tasks/capabilities.py), when it ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tasks.config import RegistryConfig, RegsweepConfig
from tasks.errors import ConfigError, StoreError
from tasks.schemas import INFORMATIONAL, PLAN, SOURCE_TABLES
from tasks.store import Store, new_id
from tasks.units import human_bytes, utcnow

DELETIONS_SHOWN = 1000


@dataclass
class PlanResult:
    plan_id: str
    meta: dict[str, Any]
    markdown: str
    deletions: list[dict[str, Any]]


#: Columns no keep rule reads, left on disk by `load_snapshot`: at 10^6 tags they are a fifth of
#: the plan's memory. (explain reads the registry's times itself, from the store.)
UNEVALUATED = {"manifests": ("artifact_type", "revision", "last_pulled"), "links": ("source",)}


def load_snapshot(store: Store, snapshot_id: str):
    """A snapshot's tables as pandas frames (None for a source that wrote none) and its meta; the
    INFORMATIONAL ones (BLOBS) stay on disk: `plan_bytes` reads them as Arrow, not as frames."""
    import pandas as pd
    import pyarrow as pa

    tables = {}
    for schemas in SOURCE_TABLES.values():
        for name, schema in schemas.items():
            if name in INFORMATIONAL:
                continue
            skip = UNEVALUATED.get(name, ())
            columns = [c for c in schema.names if c not in skip] if skip else None
            t = store.snapshot_table(snapshot_id, name, schema, columns)
            # list columns stay Arrow-backed: no Python object per element
            tables[name] = None if t is None else t.to_pandas(
                types_mapper=lambda typ: pd.ArrowDtype(typ) if pa.types.is_list(typ) else None)
    return tables, store.snapshot_meta(snapshot_id)


def make_plan(config: RegsweepConfig, snapshot: str = "latest") -> PlanResult:
    """Evaluate a stored snapshot under the configured policy and publish the plan."""
    import pyarrow as pa

    from tasks.completeness import snapshot_problems
    from tasks.evaluate import evaluate, plan_summary

    store = Store(config.store)
    snapshot_id = store.resolve_snapshot(snapshot)
    tables, smeta = load_snapshot(store, snapshot_id)
    if config.cleanup.uses_history:   # rules over earlier snapshots; none read otherwise
        from tasks.seen import HistoryInputs

        tables.update(HistoryInputs(store).for_snapshot(snapshot_id, config.cleanup))
    plan = evaluate(tables, smeta, config)
    problems = snapshot_problems(smeta, tables, config)
    now = utcnow()
    plan_id = new_id(now)
    meta = {
        "snapshot_id": snapshot_id,
        "snapshot_created_at": smeta.get("created_at"),
        "registry": config.registry.url,
        "policy": config.cleanup.digest(),
        "cleanup": config.cleanup.recorded(),
        "created_at": now.isoformat(),
        "complete": not problems,
        "problems": problems,
        **plan_summary(plan, tables.get("children")),
    }
    meta.update(plan_bytes(store, snapshot_id, plan, meta["repositories"]))
    if smeta.get("registry_capabilities"):
        meta["registry_capabilities"] = smeta["registry_capabilities"]
    # no pandas metadata: readers get plain Arrow types whatever pandas they run
    table = pa.Table.from_pandas(plan, schema=PLAN, preserve_index=False).replace_schema_metadata(None)
    store.publish_plan(plan_id, table, meta)
    return PlanResult(plan_id, {"id": plan_id, **meta}, summary_markdown(plan_id, meta), deletion_rows(plan))


def plan_bytes(store: Store, snapshot_id: str, plan, repositories: dict[str, dict]) -> dict[str, Any]:
    """plan.json's true byte figures (tasks/footprint.py): the snapshot's unique bytes and what the
    plan's deletions free once the registry collects garbage, overall and per repository. None
    where the snapshot recorded no blobs (taken before regsweep did). Fills in `repositories`."""
    from tasks.footprint import Footprint

    fp = Footprint.load(store, snapshot_id)
    if fp is None:
        for v in repositories.values():
            v["bytes_reclaimable"] = None
        return {"unique_bytes": None, "bytes_reclaimable": None, "blobs_reclaimable": None}
    dele = plan.loc[plan["action"] == "delete", ["repository", "digest"]].drop_duplicates()
    rec = fp.reclaimable(dele["repository"].to_numpy(dtype=object), dele["digest"].to_numpy(dtype=object))
    for repo, v in repositories.items():
        v["bytes_reclaimable"] = rec.by_repository.get(repo, 0)
    return {"unique_bytes": fp.unique_bytes, "bytes_reclaimable": rec.total, "blobs_reclaimable": rec.blobs}


def deletion_rows(plan, cap: int = DELETIONS_SHOWN) -> list[dict[str, Any]]:
    """The largest planned deletions as table-artifact rows."""
    dele = plan[plan["action"] == "delete"]
    dele = dele.sort_values(["size", "repository", "tag"], ascending=[False, True, True]).head(cap)
    return [{"repository": r.repository, "tag": r.tag if isinstance(r.tag, str) else "(untagged)",
             "digest": r.digest, "kind": r.kind, "size": int(r.size), "reasons": "; ".join(r.reasons)}
            for r in dele.itertuples(index=False)]


def summary_markdown(plan_id: str, meta: dict[str, Any], top: int = 20) -> str:
    """The plan's Prefect artifact: totals, problems and the repositories with most to reclaim."""
    lines = [f"# Plan `{plan_id}`", "",
             f"Snapshot `{meta['snapshot_id']}` of {meta['registry']}, policy `{meta['policy'][:19]}…`.", ""]
    if not meta["complete"]:
        lines += ["**Snapshot incomplete: this plan deletes nothing.**", ""]
        lines += [f"- {p}" for p in meta["problems"]] + [""]
    from tasks.capabilities import markdown_lines

    lines += markdown_lines(meta.get("registry_capabilities"))
    lines += [f"- tags: {meta['tags']:,} (rows {meta['rows']:,})", f"- keep: {meta['keep']:,}",
              f"- delete: {meta['delete']:,} rows, {meta['digests_deleted']:,} digests",
              *bytes_lines(meta), ""]
    repos = sorted(meta["repositories"].items(),
                   key=lambda kv: (-(kv[1]["bytes_reclaimable"] or 0), -kv[1]["image_bytes_deleted"], kv[0]))[:top]
    if repos:
        lines += ["| repository | tags | keep | delete | image bytes deleted | reclaimable |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r} | {v['tags']} | {v['keep']} | {v['delete']} | {human_bytes(v['image_bytes_deleted'])} "
                  f"| {_maybe_bytes(v['bytes_reclaimable'])} |" for r, v in repos]
    return "\n".join(lines)


def _maybe_bytes(n: int | None) -> str:
    return "unknown" if n is None else human_bytes(n)


def bytes_lines(meta: dict[str, Any]) -> list[str]:
    """The plan's three byte figures, each saying what it counts (README "Bytes")."""
    return [f"- reclaimable: {_maybe_bytes(meta.get('bytes_reclaimable'))} — blobs that only deleted images use, "
            f"freed by the registry's garbage collection" + ("" if meta.get("bytes_reclaimable") is not None
                                                             else " (snapshot taken before regsweep recorded blobs)"),
            f"- image bytes deleted: {human_bytes(meta['image_bytes_deleted'])} — the deleted images' sizes added up, "
            f"shared layers counted in each",
            f"- registry unique bytes: {_maybe_bytes(meta.get('unique_bytes'))} — every blob of the snapshot once"]


def write_plan_json(store: Store, plan_id: str, path: str) -> int:
    """Write the plan's rows as a JSON array of objects; returns the row count."""
    table = store.plan_table(plan_id)
    n = 0
    with open(path, "w") as f:
        f.write("[")
        for batch in table.to_batches(max_chunksize=50_000):
            for row in batch.to_pylist():
                if row["created"] is not None:
                    row["created"] = row["created"].isoformat()
                f.write(("," if n else "") + "\n" + json.dumps(row))
                n += 1
        f.write("\n]\n")
    return n


# ------------------------------------------------------------------ explain

def _split_ref(ref: str) -> tuple[str, str | None, str | None]:
    """repo[:tag][@digest] with an optional host first component."""
    digest = None
    if "@" in ref:
        ref, digest = ref.rsplit("@", 1)
    tag = None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        ref, tag = ref[:colon], ref[colon + 1:]
    return ref, tag, digest


def _candidates(registry: RegistryConfig, image_ref: str) -> list[tuple[str, str | None, str | None]]:
    """(repository, tag, digest) readings of IMAGE_REF, most specific first."""
    from tasks.reference import RegistryMatcher

    matched = RegistryMatcher(registry.url, registry.aliases).match(image_ref)
    out = []
    if matched is not None:
        out.append((matched.repository, matched.tag, matched.digest))
    repo, tag, digest = _split_ref(image_ref)
    out.append((repo, tag, digest))
    first, _, rest = repo.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        out.append((rest, tag, digest))   # a host we do not know as ours: try without it
    return out


def find_rows(plan, candidates, image_ref: str):
    """Plan rows an IMAGE_REF names; ConfigError when there are none."""
    for repo, tag, digest in candidates:
        rows = plan[plan["repository"] == repo]
        if digest:
            rows = rows[rows["digest"] == digest]
        if tag:
            rows = rows[rows["tag"] == tag]
        elif not digest:
            rows = rows[rows["tag"] == "latest"]
        if len(rows):
            return rows
    raise ConfigError("IMAGE_REF", f"{image_ref} is not in the plan (no such repository, tag or digest)")


def explain(config: RegsweepConfig, image_ref: str, plan_ref: str = "latest") -> list[str]:
    """Lines explaining the decision on IMAGE_REF; the last line is the decision."""
    store = Store(config.store)
    try:
        plan_id = store.resolve_plan(plan_ref)
    except Exception as e:  # StoreError: unknown id or no plan yet
        raise ConfigError("--plan", str(e)) from None
    meta = store.plan_meta(plan_id)
    candidates = _candidates(config.registry, image_ref)
    # plans are sorted by repository: decoding only its row groups keeps explain fast on big plans
    table = store.read_table(store.path("plans", plan_id, "plan.parquet"),
                             filters=[("repository", "in", sorted({c[0] for c in candidates}))])
    plan = table.to_pandas()
    out = [f"plan {plan_id} from snapshot {meta.get('snapshot_id')} ({'complete' if meta.get('complete') else 'INCOMPLETE: deletes nothing'})"]
    try:
        rows = find_rows(plan, candidates, image_ref)
    except ConfigError:
        kept = _kept_relative(store, meta.get("snapshot_id"), plan, candidates)
        if kept is None:
            raise
        return out + kept
    times = _registry_times(store, meta.get("snapshot_id"), sorted(set(rows["repository"])))
    for r in rows.itertuples(index=False):
        name = f"{r.repository}:{r.tag}" if isinstance(r.tag, str) else f"{r.repository}@{r.digest} (untagged)"
        out.append(f"{name} -> {r.digest} ({r.kind}, {human_bytes(int(r.size))}): {r.action}")
        out += [f"  - {reason}" for reason in r.reasons]
        seen = times.get((r.repository, r.digest))
        if seen:
            out.append(f"  ({seen}; as the registry reports it: information only, never a keep or delete rule)")
    action = "/".join(sorted(set(rows["action"])))   # one digest, one action (digest-level decisions)
    first = rows.iloc[0]
    if len(rows) == 1 and isinstance(first["tag"], str) and "@" not in image_ref:
        out.append(f"{action} {first['repository']}:{first['tag']} ({first['digest']})")
    else:
        tags = [t for t in rows["tag"] if isinstance(t, str)]
        which = f"tags: {', '.join(tags)}" if tags else "untagged"
        out.append(f"{action} {first['repository']}@{first['digest']} ({which})")
    return out


def _registry_times(store: Store, snapshot_id: str | None, repos: list[str]) -> dict[tuple[str, str], str]:
    """`pushed …, last pulled …` per (repository, digest), where the registry's API reported them."""
    import pyarrow as pa

    if not snapshot_id:
        return {}
    try:
        # Through the store: it hands Arrow memory Arrow owns (see Store.read_table).
        t = store.read_table(store.path("snapshots", snapshot_id, "manifests.parquet"),
                             columns=["repository", "digest", "pushed", "last_pulled"],
                             filters=[("repository", "in", repos)])
    except (OSError, StoreError, pa.ArrowInvalid, KeyError, ValueError):
        return {}   # no manifests table, or one from before the registry's times were recorded
    out = {}
    for r in t.to_pylist():
        parts = [f"{what} {when.strftime('%Y-%m-%d %H:%M UTC')}"
                 for what, when in (("pushed", r["pushed"]), ("last pulled", r["last_pulled"])) if when]
        if parts:
            out[(r["repository"], r["digest"])] = ", ".join(parts)
    return out


def _kept_relative(store: Store, snapshot_id: str | None, plan, candidates) -> list[str] | None:
    """Explain lines for an untagged platform manifest or referrer the plan keeps.

    Kept relatives get no plan row of their own (deleted ones do), yet a user may well ask about
    one — a pod's platform digest, a signature: answer with the manifest they belong to.
    """
    import pyarrow.compute as pc

    def matching(table: str, column: str, repo: str, digest: str) -> list[dict]:
        t = store.snapshot_table(snapshot_id, table)
        if t is None:
            return []
        return t.filter(pc.and_(pc.equal(t["repository"], repo), pc.equal(t[column], digest))).to_pylist()

    if not snapshot_id:
        return None
    for repo, _, digest in candidates:
        if not digest:
            continue
        owners = [(r["index_digest"], "platform" + (f" ({r['platform']})" if r["platform"] else "") + " of kept index")
                  for r in matching("children", "child_digest", repo, digest)]
        owners += [(r["subject"], "referrer of kept") for r in matching("manifests", "digest", repo, digest) if r["subject"]]
        lines = []
        for owner, relation in owners:
            rows = plan[(plan["repository"] == repo) & (plan["digest"] == owner) & (plan["action"] == "keep")]
            if len(rows):
                tags = [t for t in rows["tag"] if isinstance(t, str)]
                lines.append(f"  - {relation} {owner}" + (f" (tags: {', '.join(tags)})" if tags else ""))
        if lines:
            return [f"{repo}@{digest} (untagged): keep", *lines, f"keep {repo}@{digest} (untagged)"]
    return None
