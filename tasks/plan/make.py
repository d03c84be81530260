"""Making a plan: a stored snapshot evaluated under the configured policy and published.

plan.json records what a sweep must check before acting: `snapshot_id`, `registry`, `policy`
(the hash of the cleanup section), `created_at`, `complete` (false = nothing may be deleted,
`problems` says why), counts and bytes reclaimable per repository, and `registry_capabilities`,
the snapshot's probe of what the registry lets a sweep do (tasks/registry/capabilities.py), when it ran.

Making a plan writes no cache: the plan flow caches its decision for the what-if as a step of its
own (tasks/plan/decision_cache.py), from the `needed` rows the result carries.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.common.units import utcnow
from tasks.config.models import RegsweepConfig
from tasks.plan.batches import BATCH_ROWS, plan_batches
from tasks.plan.history_rules import HistoryInputs
from tasks.plan.inputs import read_tables, shared_of
from tasks.plan.render import DELETIONS_SHOWN, deletion_rows, plan_summary, summary_markdown
from tasks.snapshot.footprint import Footprint
from tasks.store.schemas import NEEDED, PLAN
from tasks.store.store import Store, new_id


@dataclass
class PlanResult:
    """A plan just published, with what its flow shows and caches."""

    plan_id: str
    meta: dict[str, Any]                # plan.json, with the plan's `id`
    markdown: str                       # the plan's artifact (`summary_markdown`)
    deletions: list[dict[str, Any]]     # the largest deletions, as table-artifact rows
    needed: pa.Table                    # NEEDED: what its in-use and Helm rules kept (tasks/plan/decision_cache.py)


def make_plan(config: RegsweepConfig, snapshot: str = "latest", batch_rows: int | None = None) -> PlanResult:
    """Evaluate a stored snapshot under the configured policy and publish the plan.

    The plan is evaluated and written one batch of whole repositories at a time
    (tasks/plan/batches.py); its summary and largest deletions are gathered across batches.
    batch_rows: rows per batch (tasks.plan.batches.BATCH_ROWS by default).
    """
    store = Store(config.store)
    snapshot_id = store.snapshots.resolve(snapshot)
    smeta = store.snapshots.meta(snapshot_id)
    tables = read_tables(store, snapshot_id)
    if config.cleanup.uses_history:   # rules over earlier snapshots; none read otherwise
        tables.update(HistoryInputs(store).for_snapshot(snapshot_id, config.cleanup))
    shared = shared_of(tables, smeta, config)
    now = utcnow()
    plan_id = new_id(now)
    totals = _Totals()
    needed: list[pa.Table] = []
    # digests and tags are mostly distinct: dictionary pages would only be thrown away
    with store.plans.writer(plan_id, PLAN, ["repository", "kind", "action", "reasons.list.element"]) as writer, \
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
    totals.parts.append(plan_summary(table, children))


class _Totals:
    """`plan_summary`, the deleted digests and the largest deletions of a plan seen batch by batch
    (batches hold disjoint repositories: counts add up, per-repository figures are one batch's)."""

    COUNTS = ("rows", "tags", "keep", "delete", "digests_deleted", "image_bytes_deleted")

    def __init__(self):
        self.parts: list[dict[str, Any]] = []
        self.largest = []
        self.deleted = []

    def add_deleted(self, plan) -> None:
        """Keep a batch's deleted digests (true bytes need them all: layers are shared across
        repositories) and its candidates for the largest deletions (its counts go to `parts`)."""
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
        if not self.largest:
            return []
        return deletion_rows(pd.concat(self.largest, ignore_index=True))


def plan_bytes(store: Store, snapshot_id: str, plan: pd.DataFrame, repositories: dict[str, dict]) -> dict[str, Any]:
    """plan.json's true byte figures (tasks/snapshot/footprint.py): the snapshot's unique bytes and what the
    plan's deletions free once the registry collects garbage, overall and per repository. None
    where the snapshot recorded no blobs (taken before regsweep did). Fills in `repositories`."""
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
