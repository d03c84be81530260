"""The what-if's cache of a policy's decision at a snapshot: written from a plan, read by the what-if.

A what-if replays the current policy next to a candidate over every complete snapshot
(tasks/history/whatif.py). The current policy's result at a snapshot — how many rows it deletes,
the bytes that frees, and the images its in-use and Helm rules kept (NEEDED) — is what a plan of
that snapshot under that policy has just computed, so the plan flow stores it as a step of its own
(`cache_current_decision`); a what-if reads it (`read_current`) and writes what is missing itself
(`write_current`). Entries are keyed by snapshot id and `policy_key`, versioned by name, and
derivable: one lost or unwritten only makes the next what-if slower.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import pyarrow as pa

from tasks.common.errors import StoreError
from tasks.config.models import RegsweepConfig
from tasks.plan.make import PlanResult
from tasks.store.caches import decision_name
from tasks.store.schemas import NEEDED
from tasks.store.store import Store

log = logging.getLogger("regsweep.plan")

@dataclass
class Outcome:
    """A policy's figures at one snapshot: the rows its plan deletes and the bytes that frees
    (None where the snapshot recorded no blobs)."""

    delete: int
    reclaimable_bytes: int | None


def policy_key(config: RegsweepConfig) -> str:
    """Everything besides the snapshot a decision depends on: the cleanup section, which registry
    (and aliases) images are matched against, whether Helm counts, which sources must be there."""
    blob = json.dumps({"cleanup": config.cleanup.model_dump(mode="json", by_alias=True),
                       "registry": config.registry.url, "aliases": list(config.registry.aliases or []),
                       "helm": config.helm.enabled, "sources": config.enabled_sources()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_name(sid: str, key: str) -> str:
    """The store cache holding the decision of the policy `key` at snapshot `sid`."""
    return decision_name(sid, key)


def read_current(store: Store, sid: str, key: str) -> tuple[Outcome, pa.Table] | None:
    """A policy's cached result at a snapshot (its Outcome and NEEDED rows), if cached."""
    cached = store.caches.read(cache_name(sid, key))
    if cached is None or not cached.schema.metadata or b"delete" not in cached.schema.metadata:
        return None
    md = cached.schema.metadata
    rec = md[b"reclaimable_bytes"].decode()
    return Outcome(int(md[b"delete"]), int(rec) if rec else None), cached.select(NEEDED.names).replace_schema_metadata(None)


def write_current(store: Store, sid: str, key: str, outcome: Outcome, needed: pa.Table) -> pa.Table:
    """Cache a policy's result at a snapshot; returns `needed` as cached (NEEDED)."""
    needed = needed.cast(NEEDED)
    store.caches.write(cache_name(sid, key), needed.replace_schema_metadata(
        {"delete": str(outcome.delete),
         "reclaimable_bytes": "" if outcome.reclaimable_bytes is None else str(outcome.reclaimable_bytes)}))
    return needed


def cache_current_decision(config: RegsweepConfig, plan: PlanResult) -> bool:
    """Cache the decision of a plan just made (tasks.plan.make.make_plan) as the what-if's entry
    for the configured policy at the planned snapshot, so a what-if evaluates only its candidate
    there. A cache is derivable: failing to write it is logged, and only makes the next what-if
    slower. Returns whether the entry was written."""
    snapshot_id = plan.meta["snapshot_id"]
    try:
        write_current(Store(config.store), snapshot_id, policy_key(config),
                      Outcome(plan.meta["delete"], plan.meta["bytes_reclaimable"]), plan.needed)
    except (StoreError, OSError) as e:
        log.warning("what-if cache of snapshot %s not written: %s", snapshot_id, e)
        return False
    return True
