"""What-if: a candidate cleanup policy replayed over every complete snapshot, next to the current one.

Each snapshot is evaluated at its own time (a plan is a pure function of snapshot and policy) by
the decide-only evaluation (tasks.plan.evaluate.decide: no reason texts, no plan files), its
tables read once for both policies. Snapshots never change once published, so per-snapshot work is
cached in the store where the data is first at hand: the current policy's result (keyed by
snapshot id and policy hash) by the plan flow (tasks/plan/decision_cache.py), the snapshot's BLOBS as an
integer CSR (tasks/snapshot/footprint.py FootprintIndex) by the snapshot flow; a what-if makes and caches
whichever is missing (snapshots taken before this release), so all caches stay derivable.

Regrets: a tag the candidate would delete at snapshot S whose image (repository, digest) a LATER
snapshot shows in use in a cluster or named by a Helm revision: a rollback or redeploy that would
have failed. Each (repository, tag, digest) is reported once: the first S that would delete it and
the first later snapshot that needed it, with that snapshot's in-use or Helm text. The later
snapshot's needs are what either policy's in-use and Helm rules saw there (a policy that disables
the Kubernetes rule still has its regrets judged by the clusters the snapshots recorded).
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from tasks.config.models import RegsweepConfig, config_error_from, read_yaml_documents
from tasks.common.errors import ConfigError, InputFileError
from tasks.config.policy import CleanupPolicy
from tasks.plan.decision_cache import Outcome, policy_key, read_current, write_current
from tasks.plan.evaluate import decide
from tasks.plan.inputs import read_frames
from tasks.store.schemas import NEEDED
from tasks.store.store import Store, iter_ids_since
from tasks.snapshot.footprint import load_index
from tasks.plan.history_rules import HistoryInputs
from tasks.oci.reference import RegistryMatcher
from tasks.common.units import human_bytes

WORKERS = 2


def load_policy(path: str | Path) -> CleanupPolicy:
    """The `cleanup:` section of a werf.yaml (any of its documents) or a regsweep config."""
    docs = [d for d in read_yaml_documents(path, "policy") if isinstance(d, dict)]
    section = next((d["cleanup"] for d in docs if "cleanup" in d), None)
    if section is None:
        raise InputFileError("policy", f"{path} has no `cleanup:` section")
    if not isinstance(section, dict):
        raise ConfigError("cleanup", f"in {path}: must be a mapping")
    try:
        return CleanupPolicy.model_validate(section)
    except ValidationError as e:
        raise config_error_from(e, prefix="cleanup") from None


@dataclass
class SnapshotResult:
    id: str
    created_at: str
    current: Outcome
    candidate: Outcome
    needed: pa.Table              # NEEDED


@dataclass
class WhatIf:
    snapshots: list[SnapshotResult]
    regrets: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REGRET_COLUMNS))

    def to_json(self) -> dict[str, Any]:
        return {"snapshots": [{"id": s.id, "created_at": s.created_at,
                               "current": vars(s.current), "candidate": vars(s.candidate)} for s in self.snapshots],
                "regrets": self.regrets[REGRET_COLUMNS].to_dict(orient="records")}

    def frame(self) -> pd.DataFrame:
        """One row per snapshot: deletions and reclaimable bytes under each policy."""
        return pd.DataFrame({"snapshot": [s.id for s in self.snapshots],
                             "created_at": pd.to_datetime([s.created_at for s in self.snapshots], utc=True, format="ISO8601"),
                             "current_delete": [s.current.delete for s in self.snapshots],
                             "candidate_delete": [s.candidate.delete for s in self.snapshots],
                             "current_reclaimable": pd.array([s.current.reclaimable_bytes for s in self.snapshots], "Int64"),
                             "candidate_reclaimable": pd.array([s.candidate.reclaimable_bytes for s in self.snapshots], "Int64")})


REGRET_COLUMNS = ["repository", "tag", "digest", "deleted_at", "needed_at", "why"]


# ------------------------------------------------------------------ one snapshot

def _decide(tables, meta, config: RegsweepConfig, sid: str, inputs, index, matcher=None):
    """One policy's decision at one snapshot; `inputs` (a tasks.plan.history_rules.HistoryInputs, or None when
    neither policy reads history) adds what the history-only keep rules read, as `make_plan` does;
    `index` (the snapshot's FootprintIndex, None without BLOBS) gives the reclaimable bytes;
    `matcher` a RegistryMatcher for config.registry shared across evaluations (parsed once)."""
    extra = inputs.for_snapshot(sid, config.cleanup) if inputs is not None else {}
    d = decide({**tables, **extra}, meta, config, matcher=matcher)
    reclaim = None
    if index is not None:
        reclaim = index.total(pa.concat_arrays([d.deleted_tags["repository"].combine_chunks(),
                                                d.deleted_untagged["repository"].combine_chunks()]),
                              pa.concat_arrays([d.deleted_tags["digest"].combine_chunks(),
                                                d.deleted_untagged["digest"].combine_chunks()]))
    return Outcome(d.delete, reclaim), d


def cache_current(config: RegsweepConfig, snapshot_id: str) -> Outcome:
    """The configured policy's decide-only result at a snapshot, cached as `whatif` reads it. The
    plan flow writes the same entry from its plan's own evaluation
    (tasks.plan.decision_cache.cache_current_decision); this makes it for a snapshot planned
    before, or never. Also caches the snapshot's FootprintIndex if missing."""

    store = Store(config.store)
    inputs = None
    if config.cleanup.uses_history:

        inputs = HistoryInputs(store)
    out, d = _decide(read_frames(store, snapshot_id), store.snapshots.meta(snapshot_id), config, snapshot_id, inputs,
                     load_index(store, snapshot_id))
    write_current(store, snapshot_id, policy_key(config), out, d.needed)
    return out


def _tag_keys(t: pa.Table) -> pa.Array:
    """One string per (repository, tag, digest) row, to tell deletions already made."""
    return pc.binary_join_element_wise(t["repository"], t["tag"], t["digest"], "\x00").combine_chunks()


def evaluate_chunk(store_url: str, sids: list[str], offset: int, current: RegsweepConfig,
                   candidate: RegsweepConfig) -> tuple[list[SnapshotResult], pa.Table]:
    """Both policies over consecutive snapshots (one worker's share; `offset` is the first one's
    index among all); caches the current policy's results. Returns each snapshot's figures and
    needs, and the candidate's deletions at each snapshot that the share's previous snapshot did
    not delete (column `s`: the snapshot's index), for the regrets."""

    store = Store(store_url)
    # both policies match images against the same registry: consecutive snapshots name mostly
    # the same images, so each reference is parsed once per share
    matcher = RegistryMatcher(current.registry.url, current.registry.aliases)
    # one per share: its snapshots are consecutive, so each window's tables are read once
    inputs = HistoryInputs(store) if current.cleanup.uses_history or candidate.cleanup.uses_history else None
    key = policy_key(current)
    out, first, before = [], [], None
    for i, sid in enumerate(sids):
        meta = store.snapshots.meta(sid)
        cached = read_current(store, sid, key)
        tables = read_frames(store, sid)
        index = load_index(store, sid)   # cached by the snapshot flow, else built and cached now
        cand, cd = _decide(tables, meta, candidate, sid, inputs, index, matcher)
        if cached is not None:
            cur, cur_needed = cached
        else:
            cur, d = _decide(tables, meta, current, sid, inputs, index, matcher)
            cur_needed = write_current(store, sid, key, cur, d.needed)
        needed = pa.concat_tables([cur_needed, cd.needed.cast(NEEDED)])
        out.append(SnapshotResult(sid, meta["created_at"], cur, cand, needed))
        dels = cd.deleted_tags
        if dels.num_rows:
            # what the previous snapshot deleted too is no first deletion (consecutive snapshots
            # delete mostly the same tags); a tag deleted again after a gap is, and `regrets` keeps
            # each tag's earliest
            keys = _tag_keys(dels)
            new = pc.invert(pc.is_in(keys, value_set=before)) if before is not None else None
            fresh = dels if new is None else dels.filter(new)
            if fresh.num_rows:
                first.append(fresh.append_column("s", pa.array(np.full(fresh.num_rows, offset + i, np.int32))))
            before = keys
        else:
            before = None
        del tables, index
    schema = pa.schema([("repository", pa.string()), ("tag", pa.string()), ("digest", pa.string()), ("s", pa.int32())])
    return out, pa.concat_tables([f.cast(schema) for f in first]) if first else schema.empty_table()


# ------------------------------------------------------------------ all snapshots

def complete_snapshots(store: Store, since: datetime | None) -> list[str]:
    return [s for s in iter_ids_since(store.snapshots.list(), since) if store.snapshots.meta(s).get("complete")]


def whatif(config: RegsweepConfig, candidate: CleanupPolicy, since: datetime | None = None,
           workers: int = WORKERS) -> WhatIf:
    """The candidate and the current policy over every complete snapshot (since), with regrets."""
    store = Store(config.store)
    sids = complete_snapshots(store, since)
    cand_cfg = config.model_copy(update={"cleanup": candidate})
    if sids and (config.cleanup.firstSeenAsBuildTime or candidate.firstSeenAsBuildTime):
        # bring the first-seen cache up to date once, before the workers read it

        HistoryInputs(store).first_seen(sids[-1])
    # contiguous chunks (a chunk's snapshots are read in order); several per worker to balance
    n_chunks = min(len(sids), workers * 4) if workers > 1 and len(sids) > 4 else 1
    bounds = [i * len(sids) // n_chunks for i in range(n_chunks + 1)] if sids else [0]
    chunks, offsets = [sids[a:b] for a, b in zip(bounds, bounds[1:])], bounds[:-1]
    if n_chunks > 1:
        # spawn: the caller may be a Prefect flow with threads, which fork does not carry safely
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(evaluate_chunk, [config.store] * n_chunks, chunks, offsets, [config] * n_chunks,
                                  [cand_cfg] * n_chunks))
    else:
        parts = [evaluate_chunk(config.store, c, o, config, cand_cfg) for c, o in zip(chunks, offsets)]
    results = [r for part, _ in parts for r in part]
    return WhatIf(results, regrets(results, pa.concat_tables([f for _, f in parts]) if parts else None))


def regrets(results: list[SnapshotResult], dels: pa.Table | None) -> pd.DataFrame:
    """Each (repository, tag, digest) the candidate deleted at S (`dels`: deletions not made at
    the previous snapshot too, column `s` the snapshot's index) and a later snapshot needed."""
    if not results or dels is None:
        return pd.DataFrame(columns=REGRET_COLUMNS)
    ids = [r.id for r in results]
    need = pa.concat_tables([r.needed.append_column("t", pa.array([i] * r.needed.num_rows, pa.int32()))
                             for i, r in enumerate(results)])
    if not dels.num_rows or not need.num_rows:
        return pd.DataFrame(columns=REGRET_COLUMNS)
    # the first snapshot that deletes each tag; only images some snapshot needed can be regrets
    first = dels.group_by(["repository", "tag", "digest"]).aggregate([("s", "min")]).rename_columns(
        ["repository", "tag", "digest", "s"])
    j = first.join(need.select(["repository", "digest", "t"]), ["repository", "digest"]).to_pandas()
    j = j[j["t"] > j["s"]]
    if j.empty:
        return pd.DataFrame(columns=REGRET_COLUMNS)
    j = j.groupby(["repository", "tag", "digest", "s"], as_index=False)["t"].min()
    # the later snapshot's own words: its first in-use/Helm text for that image
    why = need.to_pandas().drop_duplicates(["repository", "digest", "t"])
    j = j.merge(why, on=["repository", "digest", "t"], how="left")
    names = np.asarray(ids, dtype=object)
    j["deleted_at"] = names[j["s"].to_numpy(np.int64)]
    j["needed_at"] = names[j["t"].to_numpy(np.int64)]
    return j.sort_values(["s", "repository", "tag"]).reset_index(drop=True)[REGRET_COLUMNS]


# ------------------------------------------------------------------ output

def render_text(result: WhatIf) -> str:
    """The per-snapshot table, then the regrets (what stdout shows)."""

    if not result.snapshots:
        return "no complete snapshots"
    df = result.frame()
    fmt = lambda v: "-" if pd.isna(v) else human_bytes(int(v))  # noqa: E731
    shown = pd.DataFrame({"snapshot": df["snapshot"], "created_at": df["created_at"].dt.strftime("%Y-%m-%d %H:%M"),
                          "current_delete": df["current_delete"], "candidate_delete": df["candidate_delete"],
                          "current_reclaimable": df["current_reclaimable"].map(fmt),
                          "candidate_reclaimable": df["candidate_reclaimable"].map(fmt)})
    lines = [shown.to_string(index=False), ""]
    r = result.regrets
    lines.append(f"regrets: {len(r)}" + (" (the candidate would have deleted these, and a later snapshot needed them)"
                                         if len(r) else ""))
    lines += [f"{x.repository}:{x.tag} {x.digest} deleted at {x.deleted_at}, needed at {x.needed_at}: {x.why}"
              for x in r.itertuples(index=False)]
    return "\n".join(lines)


def render_markdown(result: WhatIf) -> str:
    lines = ["# What-if: candidate policy vs current", "", "```", render_text(result), "```"]
    return "\n".join(lines)


def write_json(result: WhatIf, path: str) -> None:
    try:
        with open(path, "w") as f:
            json.dump(result.to_json(), f, indent=1)
    except OSError as e:
        raise InputFileError("json", f"cannot write {path}: {e.strerror}") from None
