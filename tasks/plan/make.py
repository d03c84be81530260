"""Making, storing and explaining plans: the plain functions behind the plan flow and `explain`.

plan.json records what a sweep must check before acting: `snapshot_id`, `registry`, `policy`
(the hash of the cleanup section), `created_at`, `complete` (false = nothing may be deleted,
`problems` says why), counts and bytes reclaimable per repository, and `registry_capabilities`,
the snapshot's probe of what the registry lets a sweep do (tasks/registry/capabilities.py), when it ran.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tasks.config.models import RegistryConfig, RegsweepConfig
from tasks.common.errors import ConfigError, StoreError
from tasks.store.schemas import NEEDED, PLAN
from tasks.store.store import Store, new_id
from tasks.common.units import human_bytes, utcnow

DELETIONS_SHOWN = 1000


@dataclass
class PlanResult:
    """A plan just published, with what its flow shows and caches."""

    plan_id: str
    meta: dict[str, Any]                # plan.json, with the plan's `id`
    markdown: str                       # the plan's artifact (`summary_markdown`)
    deletions: list[dict[str, Any]]     # the largest deletions, as table-artifact rows
    needed: "pa.Table"                  # NEEDED: what its in-use and Helm rules kept (tasks/plan/decision_cache.py)


def make_plan(config: RegsweepConfig, snapshot: str = "latest", batch_rows: int | None = None) -> PlanResult:
    """Evaluate a stored snapshot under the configured policy and publish the plan.

    The plan is evaluated and written one batch of whole repositories at a time
    (tasks/plan/batches.py); its summary and largest deletions are gathered across batches.
    batch_rows: rows per batch (planbatches.BATCH_ROWS by default).
    """
    import pyarrow as pa

    from tasks.plan.batches import BATCH_ROWS, plan_batches
    from tasks.plan.inputs import read_tables, shared_of

    store = Store(config.store)
    snapshot_id = store.resolve_snapshot(snapshot)
    smeta = store.snapshot_meta(snapshot_id)
    tables = read_tables(store, snapshot_id)
    if config.cleanup.uses_history:   # rules over earlier snapshots; none read otherwise
        from tasks.plan.history_rules import HistoryInputs

        tables.update(HistoryInputs(store).for_snapshot(snapshot_id, config.cleanup))
    shared = shared_of(tables, smeta, config)
    now = utcnow()
    plan_id = new_id(now)
    totals = _Totals()
    needed: list[pa.Table] = []
    # digests and tags are mostly distinct: dictionary pages would only be thrown away
    with store.plan_writer(plan_id, PLAN, ["repository", "kind", "action", "reasons.list.element"]) as writer, \
            ThreadPoolExecutor(1) as background:
        written = None
        for batch, rows in plan_batches(tables, smeta, config, batch_rows or BATCH_ROWS, shared):
            plan = rows.frame
            needed.append(rows.needed)
            # no pandas metadata: readers get plain Arrow types whatever pandas they run
            table = pa.Table.from_pandas(plan, schema=PLAN, preserve_index=False).replace_schema_metadata(None)
            totals.add_deleted(plan)
            if written is not None:
                written.result()   # one batch in flight: batches go to the file in order
            # Parquet encoding and Arrow's counting release the GIL: on a second core they
            # overlap the next batch's evaluation
            written = background.submit(_write_and_count, writer, totals, table, batch.get("children"))
            del batch, rows, plan, table
        if written is not None:
            written.result()
        meta = {
            "snapshot_id": snapshot_id,
            "snapshot_created_at": smeta.get("created_at"),
            "registry": config.registry.url,
            "policy": config.cleanup.digest(),
            "cleanup": config.cleanup.recorded(),
            "created_at": now.isoformat(),
            "complete": not shared.problems,
            "problems": shared.problems,
            **totals.summary(),
        }
        meta.update(plan_bytes(store, snapshot_id, totals.deleted_digests(), meta["repositories"]))
        if smeta.get("registry_capabilities"):
            meta["registry_capabilities"] = smeta["registry_capabilities"]
        writer.publish(meta)
    return PlanResult(plan_id, {"id": plan_id, **meta}, summary_markdown(plan_id, meta), totals.deletions(),
                      pa.concat_tables([t.cast(NEEDED) for t in needed]) if needed else NEEDED.empty_table())


def _write_and_count(writer, totals: "_Totals", table, children) -> None:
    writer.write(table)
    totals.parts.append(summary_of(table, children))


class _Totals:
    """plan_summary, the deleted digests and the largest deletions of a plan seen batch by batch
    (batches hold disjoint repositories: counts add up, per-repository figures are one batch's)."""

    COUNTS = ("rows", "tags", "keep", "delete", "digests_deleted", "image_bytes_deleted")

    def __init__(self):
        self.parts: list[dict[str, Any]] = []
        self.largest = []
        self.deleted = []

    def add_deleted(self, plan) -> None:
        """Keep a batch's deleted digests (true bytes need them all: layers are shared across
        repositories) and its candidates for the largest deletions (its counts go to `parts`)."""
        import numpy as np

        dele = np.flatnonzero(plan["action"].to_numpy(dtype=object) == "delete")
        self.deleted.append(plan[["repository", "digest"]].iloc[dele].drop_duplicates())
        # only a batch's own largest can be among the plan's largest: those at least as large as
        # its DELETIONS_SHOWN-th largest (ties included), in plan order
        size = plan["size"].to_numpy()
        if len(dele) > DELETIONS_SHOWN:
            floor = np.partition(size[dele], len(dele) - DELETIONS_SHOWN)[len(dele) - DELETIONS_SHOWN]
            dele = dele[size[dele] >= floor]
        self.largest.append(plan.iloc[dele])

    def deleted_digests(self):
        """Every deleted (repository, digest) as plan rows `plan_bytes` reads."""
        import pandas as pd

        if not self.deleted:
            return pd.DataFrame({"repository": [], "digest": [], "action": []})
        return pd.concat(self.deleted, ignore_index=True).assign(action="delete")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: 0 for k in self.COUNTS}
        out["repositories"] = {}
        for part in self.parts:
            for k in self.COUNTS:
                out[k] += part[k]
            out["repositories"].update(part["repositories"])
        return out

    def deletions(self) -> list[dict[str, Any]]:
        import pandas as pd

        if not self.largest:
            return []
        return deletion_rows(pd.concat(self.largest, ignore_index=True))


def summary_of(table, children=None) -> dict[str, Any]:
    """tasks.plan.evaluate.plan_summary of a plan as an Arrow table (PLAN schema), counted in Arrow;
    `children`: the CHILDREN rows of its repositories (image bytes count an index's platforms once)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tasks.snapshot.footprint import image_sizes

    delete = pc.equal(table["action"], "delete")
    counts = pa.table({"repository": table["repository"], "tag": table["tag"], "delete": delete.cast(pa.int64())})
    per = counts.group_by("repository").aggregate([("tag", "count"), ("delete", "count"), ("delete", "sum")])
    # each deleted digest once (a digest's rows share its size)
    uniq = table.filter(delete).group_by(["repository", "digest"]).aggregate([("size", "max")])
    uniq = uniq.select(["repository", "digest", "size_max"]).rename_columns(["repository", "digest", "size"]).to_pandas()
    uniq["size"] = image_sizes(uniq, children)
    reclaim = uniq.groupby("repository")["size"].sum()
    per = per.sort_by("repository")
    repos = {r: {"tags": t, "delete": d, "keep": n - d, "image_bytes_deleted": int(reclaim.get(r, 0))}
             for r, t, n, d in zip(per["repository"].to_pylist(), per["tag_count"].to_pylist(),
                                   per["delete_count"].to_pylist(), per["delete_sum"].to_pylist())}
    n_delete = sum(v["delete"] for v in repos.values())
    return {"rows": table.num_rows, "tags": table.num_rows - table["tag"].null_count,
            "keep": table.num_rows - n_delete, "delete": n_delete, "digests_deleted": len(uniq),
            "image_bytes_deleted": int(uniq["size"].sum()), "repositories": repos}


def plan_bytes(store: Store, snapshot_id: str, plan, repositories: dict[str, dict]) -> dict[str, Any]:
    """plan.json's true byte figures (tasks/snapshot/footprint.py): the snapshot's unique bytes and what the
    plan's deletions free once the registry collects garbage, overall and per repository. None
    where the snapshot recorded no blobs (taken before regsweep did). Fills in `repositories`."""
    from tasks.snapshot.footprint import Footprint

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
    from tasks.registry.capabilities import markdown_lines

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
    from tasks.oci.reference import RegistryMatcher

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
