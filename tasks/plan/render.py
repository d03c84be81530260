"""A plan shown: its summary figures, its Prefect artifacts and its rows as JSON.

plan.json's counts and image bytes (`plan_summary`, per batch as make_plan writes them), the
markdown artifact (`summary_markdown`) with the three byte figures each saying what it counts
(`bytes_lines`), the largest deletions as table-artifact rows (`deletion_rows`), and
`regsweep plan --json` (`write_plan_json`).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.units import human_bytes
from tasks.registry.capabilities import markdown_lines
from tasks.snapshot.footprint import image_sizes
from tasks.store.store import Store

#: The largest deletions a plan's table artifact lists.
DELETIONS_SHOWN = 1000


def plan_summary(table: pa.Table, children: pd.DataFrame | None = None) -> dict[str, Any]:
    """Counts and the image bytes of deleted digests of a plan (PLAN schema, Arrow), overall and
    per repository: plan.json's `rows`, `tags`, `keep`, `delete`, `digests_deleted`,
    `image_bytes_deleted` and `repositories`. Each deleted image counts once, an index with its
    platforms (`children`: the CHILDREN rows of its repositories); shared layers count in every
    image (plan_bytes has the true bytes)."""
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
    """The plan's three byte figures, each saying what it counts (docs/store-format.md)."""
    return [f"- reclaimable: {_maybe_bytes(meta.get('bytes_reclaimable'))} — blobs that only deleted images use, "
            f"freed by the registry's garbage collection" + ("" if meta.get("bytes_reclaimable") is not None
                                                             else " (snapshot taken before regsweep recorded blobs)"),
            f"- image bytes deleted: {human_bytes(meta['image_bytes_deleted'])} — the deleted images' sizes added up, "
            f"shared layers counted in each",
            f"- registry unique bytes: {_maybe_bytes(meta.get('unique_bytes'))} — every blob of the snapshot once"]


def write_plan_json(store: Store, plan_id: str, path: str) -> int:
    """Write the plan's rows as a JSON array of objects; returns the row count."""
    table = store.plans.table(plan_id)
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
