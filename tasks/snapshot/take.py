"""Running one source into a snapshot's staging area, and the snapshot's own record (snapshot.json).

Every source module exposes `extract(config, store, now) -> {table name: pyarrow.Table}` and
raises a `SourceError` when it could not read everything. A failed source writes no table at
all, so nobody can mistake "could not list" for "nothing there" (docs/safety.md: fail closed).
Any other exception a source lets out (hostile input meeting a bug, a MemoryError) fails that
source the same way, so the snapshot is still published, incomplete, instead of the flow crashing.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
import time
from datetime import datetime
from typing import Any

from tasks.config.models import ALL_SOURCES, RegsweepConfig, git_section_problem
from tasks.common.errors import ConfigError, NotFound, RegsweepError, SourceError
from tasks.common.notes import collecting
from tasks.common.redact import redact
from tasks.store.schemas import SOURCE_TABLES
from tasks.store.store import Store

@dataclass
class SourceStatus:
    """What snapshot.json records per source."""

    status: str                       # ok | failed | skipped
    rows: int = 0
    seconds: float = 0.0
    error: str | None = None
    tables: dict[str, int] = field(default_factory=dict)
    # what the source noticed (tasks/common/notes.py): {"warnings": {count, messages}, "retries": {count, messages}}
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status, "rows": self.rows, "seconds": round(self.seconds, 3)}
        if self.error:
            d["error"] = self.error
        if self.tables:
            d["tables"] = self.tables
        d.update(self.notes)
        return d


log = logging.getLogger("regsweep.snapshot")

#: Longest text of an unexpected exception kept in its one-line message.
UNEXPECTED_TEXT_MAX = 200

SOURCE_MODULES = {"registry": "tasks.sources.registry", "kubernetes": "tasks.sources.kubernetes.workloads",
                  "helm": "tasks.sources.kubernetes.helm", "git": "tasks.sources.git",
                  "keeplist": "tasks.sources.keeplists"}


def select_sources(config: RegsweepConfig, requested: list[str] | None) -> dict[str, bool]:
    """Map every source to whether this run extracts it (requested and enabled by the config).
    The keep-list source is left out of a configuration without `keep.lists`: snapshot.json then
    records no keep-list source at all, as before keep lists existed."""
    enabled = set(config.enabled_sources())
    wanted = set(requested) if requested else set(ALL_SOURCES)
    return {s: (s in enabled and s in wanted) for s in ALL_SOURCES if s != "keeplist" or config.keep.lists}


def check_sources(config: RegsweepConfig, chosen: dict[str, bool]) -> None:
    """Refuse, before any work, a run whose configuration cannot feed a chosen source."""
    problem = git_section_problem(config.git) if chosen.get("git") else None
    if problem:
        raise ConfigError("git", problem)


def preload_sources(chosen: dict[str, bool]) -> None:
    """Import the chosen source modules on the calling thread: two task threads importing the
    kubernetes client at once can deadlock on Python's module locks."""
    for name, on in chosen.items():
        if on:
            importlib.import_module(SOURCE_MODULES[name])


def run_source(name: str, config: RegsweepConfig, staging: str, now: datetime, *, part: int | None = None,
               options: dict[str, Any] | None = None) -> SourceStatus:
    """Extract one source and write its tables into `staging`; never raises for a source failure.
    A batch of a scaled-out source writes its tables as part `part` (Store.write_source_tables),
    with `options` for its extract.

    A SourceError, and any exception that is not one of regsweep's own (a bug met by hostile
    input, a MemoryError), fails the source: its status is `failed` with a one-line error naming
    the source and the exception type, and the snapshot is published incomplete. regsweep's
    other typed errors (a ConfigError, a StoreError) say what the user must fix and still stop
    the run."""
    store = Store(config.store)
    started = time.monotonic()
    with collecting() as notes:
        try:
            module = importlib.import_module(SOURCE_MODULES[name])
            tables = module.extract(config, store, now, **(options or {}))
            counts = store.snapshots.write_source_tables(staging, tables, SOURCE_TABLES[name], part=part)
        except SourceError as e:
            return SourceStatus("failed", seconds=time.monotonic() - started, error=str(e), notes=notes.to_json())
        except RegsweepError:
            raise
        except Exception as e:
            error = unexpected_failure(name, e)
            # The traceback is for whoever fixes the bug: in the run log (redacted), not in snapshot.json.
            log.error(error, exc_info=True)
            if part is None:   # writing may have failed half way; a batch's parts are scaleout.finish's
                store.snapshots.remove_tables(staging, SOURCE_TABLES[name])
            return SourceStatus("failed", seconds=time.monotonic() - started, error=error, notes=notes.to_json())
    rows = counts[next(iter(SOURCE_TABLES[name]))]
    return SourceStatus("ok", rows=rows, seconds=time.monotonic() - started, tables=counts, notes=notes.to_json())


def unexpected_failure(source: str, e: BaseException) -> str:
    """One line for an exception a source did not expect: the source, the exception type and the
    first line of its text (shortened, secrets masked), never a traceback."""
    try:
        lines = str(e).strip().splitlines()
    except Exception:   # an exception whose text cannot even be rendered
        lines = []
    text = redact(lines[0] if lines else "")
    if len(text) > UNEXPECTED_TEXT_MAX:
        text = text[:UNEXPECTED_TEXT_MAX - 1] + "…"
    return (f"{source}: unexpected {type(e).__name__}" + (f": {text}" if text else "")
            + " (a bug or input regsweep does not understand; the source is counted as failed)")


def snapshot_meta(created_at: datetime, config: RegsweepConfig, statuses: dict[str, SourceStatus],
                  capabilities: dict[str, Any] | None = None, missing: dict[str, Any] | None = None) -> dict[str, Any]:
    """snapshot.json; `capabilities` is the registry's probe (`registry_capabilities`), if it ran;
    `missing` the counts of images in use the registry does not have (tasks/snapshot/missing.py),
    if they could be found (the registry source completed)."""
    complete = all(s.status != "failed" for s in statuses.values())
    meta = {
        "created_at": created_at.isoformat(),
        "complete": complete,
        "registry": config.registry.url,
        "sources": {name: st.to_json() for name, st in statuses.items()},
    }
    if capabilities is not None:
        meta["registry_capabilities"] = capabilities
    if missing is not None:
        meta["missing"] = missing
    return meta


def staged_repositories(store: Store, staging: str) -> list[str]:
    """The repositories the registry source wrote into a snapshot's staging area."""
    try:
        t = store.read_table(f"{staging}/tags.parquet", columns=["repository"])
    except NotFound:
        return []
    return sorted(set(t.column("repository").to_pylist()))
