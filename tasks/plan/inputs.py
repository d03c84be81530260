"""A snapshot as the evaluation reads it: which tables and columns, in which form, and its "now".

Every reader of a snapshot for a plan — the plan in batches (tasks/plan/batches.py), the
whole-snapshot evaluation the what-if replays (tasks/history/whatif.py) — reads through here, so
they read the same columns the same way:

- BLOBS (INFORMATIONAL) stays on disk: no keep rule reads it; the byte figures read it as Arrow
  (tasks/snapshot/footprint.py);
- the columns in `UNEVALUATED` stay on disk: no keep rule reads them;
- a table its source did not write is None;
- pandas frames hold plain strings as Python objects and lists Arrow-backed (`to_frame`).

`Shared` is what only the whole snapshot tells an evaluation of part of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.units import parse_time
from tasks.config.models import RegsweepConfig
from tasks.plan.codes import US
from tasks.plan.git.policy import GitHistory
from tasks.snapshot.completeness import snapshot_problems
from tasks.store.schemas import INFORMATIONAL, SOURCE_TABLES
from tasks.store.store import Store

#: Columns no keep rule reads, left on disk: at 10^6 tags they are a fifth of the plan's memory.
#: (explain reads the registry's times itself, from the store.) `artifact_type` is read: a subject-less
#: artifact's reason names it; mostly null and dictionary-encoded, it costs little.
UNEVALUATED = {"manifests": ("revision", "last_pulled"), "links": ("source",)}

#: String columns with few distinct values, held dictionary-encoded between batches.
_COMPACT = ("repository", "media_type", "kind", "artifact_type", "platform")


@dataclass(frozen=True)
class Shared:
    """What a batch's evaluation needs from the whole snapshot, computed once (`shared_of`)."""

    problems: list[str]            # why the snapshot is incomplete (tasks/snapshot/completeness.py); [] when it is not
    git: GitHistory | None         # the commit graph and reference selection, built on first use


def snapshot_now(meta: dict[str, Any]) -> datetime:
    """The snapshot's own time: "now" for every rule."""
    now = parse_time(meta.get("created_at"))
    if now is None:
        raise ValueError(f"snapshot created_at {meta.get('created_at')!r} is not a time")
    return now


def to_frame(table: pa.Table) -> pd.DataFrame:
    """A table as the evaluation reads it: plain strings as Python objects, lists Arrow-backed."""
    return table.to_pandas(types_mapper=lambda typ: pd.ArrowDtype(typ) if pa.types.is_list(typ) else None)


def _evaluated_tables(store: Store, snapshot_id: str) -> Iterator[tuple[str, pa.Table | None]]:
    """Each table the evaluation reads, with the columns it reads; None for one not written."""
    for schemas in SOURCE_TABLES.values():
        for name, schema in schemas.items():
            if name in INFORMATIONAL:
                continue
            skip = UNEVALUATED.get(name, ())
            columns = [c for c in schema.names if c not in skip] if skip else None
            yield name, store.snapshots.table(snapshot_id, name, schema, columns)


def read_tables(store: Store, snapshot_id: str) -> dict[str, pa.Table | pd.DataFrame | None]:
    """A snapshot's tables for `plan_batches`: repository-keyed ones as compact Arrow tables
    (low-cardinality strings dictionary-encoded), the rest as pandas frames."""
    tables: dict[str, pa.Table | pd.DataFrame | None] = {}
    for name, t in _evaluated_tables(store, snapshot_id):
        if t is None or "repository" not in t.column_names:
            tables[name] = None if t is None else to_frame(t)
            continue
        for c in _COMPACT:
            if c in t.column_names:
                t = t.set_column(t.column_names.index(c), c, pc.dictionary_encode(t[c]))
        tables[name] = t
    return tables


def read_frames(store: Store, snapshot_id: str) -> dict[str, pd.DataFrame | None]:
    """A snapshot's tables as pandas frames: what an evaluation of the whole snapshot takes
    (`tasks.plan.evaluate.decide`, `plan_rows`)."""
    return {name: None if t is None else to_frame(t) for name, t in _evaluated_tables(store, snapshot_id)}


def shared_of(tables: dict[str, Any], meta: dict[str, Any], config: RegsweepConfig) -> Shared:
    """`Shared` of a whole snapshot's tables (Arrow or pandas, as `read_tables` gives them)."""
    now_us = int(snapshot_now(meta).timestamp() * US)
    git = None
    if tables.get("git_commits") is not None and tables.get("git_refs") is not None:
        git = GitHistory(tables["git_refs"], tables["git_commits"], config.cleanup.effective_keep_policies, now_us)
    # the row counts of whole tables (Arrow or pandas) against what snapshot.json recorded
    return Shared(snapshot_problems(meta, tables, config), git)
