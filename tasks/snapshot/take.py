"""Running one source into a snapshot's staging area, and the snapshot's own record (snapshot.json).

Every source module exposes `extract(config, store, now) -> {table name: pyarrow.Table}` and
raises a `SourceError` when it could not read everything. A failed source writes no table at
all, so nobody can mistake "could not list" for "nothing there" (README "Safety": fail closed).
"""

from __future__ import annotations

import importlib
import time
from datetime import datetime
from typing import Any

from tasks.config.models import ALL_SOURCES, RegsweepConfig, git_section_problem
from tasks.common.errors import ConfigError, SourceError
from tasks.common.notes import collecting
from tasks.store.schemas import SOURCE_TABLES
from tasks.store.store import SourceStatus, Store

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
    with `options` for its extract."""
    store = Store(config.store)
    started = time.monotonic()
    with collecting() as notes:
        try:
            module = importlib.import_module(SOURCE_MODULES[name])
            tables = module.extract(config, store, now, **(options or {}))
            counts = store.write_source_tables(staging, tables, SOURCE_TABLES[name], part=part)
        except SourceError as e:
            return SourceStatus("failed", seconds=time.monotonic() - started, error=str(e), notes=notes.to_json())
    rows = counts[next(iter(SOURCE_TABLES[name]))]
    return SourceStatus("ok", rows=rows, seconds=time.monotonic() - started, tables=counts, notes=notes.to_json())


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
    except FileNotFoundError:
        return []
    return sorted(set(t.column("repository").to_pylist()))
