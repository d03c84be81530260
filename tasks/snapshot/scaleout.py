"""The registry scan in repository batches, for a snapshot fanned out over Dask (`runner.kind: dask`).

The snapshot flow lists the selected repositories once, cuts the sorted list into batches of
`runner.dask.batchRepositories`, and runs `scan_batch` for each as a task on the cluster. A
batch scans exactly its repositories (literal names: no catalog read) with the same code as the
single-process source (`run_source` → `tasks.sources.registry.extract`) and writes its tables as part
files `<table>.parquet/part-NNNNN.parquet` into the snapshot's staging area, which is published
once, as one snapshot, when every source is done (Store.publish_snapshot: a rename locally,
`snapshot.json` last on S3). Readers see each table as one dataset (Store.read_table), rows in
part order; batches are consecutive slices of the sorted repositories and each part is sorted
like a whole scan's table, so the rows come out exactly as a single-process scan's.

Each batch reads the store's blob cache and writes what it used to a cache part beside it;
`finish` merges the parts into the cache when every batch succeeded (batches never overwrite each
other's cache), and makes a failed batch fail the whole registry source with no table left in
the staging area (fail closed, as a failed single scan).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import numpy as np
import pyarrow as pa

from tasks.registry.backends import open_backend
from tasks.sources.blobcache import CACHE_NAME, CACHE_SCHEMA, BlobCache
from tasks.config.models import RegsweepConfig
from tasks.registry.distribution import RetryPolicy
from tasks.common.notes import MAX_MESSAGES
from tasks.store.schemas import SOURCE_TABLES
from tasks.snapshot.take import run_source
from tasks.snapshot.take import SourceStatus
from tasks.store.store import Store
from tasks.sources.registry import Scanner


def list_repositories(config: RegsweepConfig, retry: RetryPolicy | None = None) -> list[str]:
    """The repositories the registry source would scan (sorted); typed errors as the scan raises."""

    async def go() -> list[str]:
        async with open_backend(config.registry, retry=retry) as backend:
            await backend.ping()
            return await Scanner(backend, config.link, BlobCache()).repositories()
    return asyncio.run(go())


def batches(repositories: list[str], size: int) -> list[list[str]]:
    """Consecutive slices of the sorted repositories: part order is row order."""
    names = sorted(repositories)
    return [names[i:i + size] for i in range(0, len(names), size)]


def cache_part_dir(store: Store, snapshot_id: str) -> str:
    return store.path("cache", f".parts-{snapshot_id}")


def scan_batch(config: RegsweepConfig, staging: str, snapshot_id: str, part: int, repositories: list[str],
               now: datetime) -> SourceStatus:
    """Scan one batch of repositories into part `part` of the registry tables; never raises for a
    source failure (the status says it)."""
    if not repositories:
        raise ValueError("a batch needs repositories: an empty selection would mean the whole catalog")
    only = config.model_copy(update={"registry": config.registry.model_copy(update={"repositories": repositories})})
    cache_part = f"{cache_part_dir(Store(config.store), snapshot_id)}/part-{part:05d}.parquet"
    return run_source("registry", only, staging, now, part=part, options={"cache_part": cache_part})


def empty_tables(store: Store, staging: str) -> dict[str, int]:
    """A registry with nothing selected: the tables, with no rows."""
    schemas = SOURCE_TABLES["registry"]
    return store.snapshots.write_source_tables(staging, {n: s.empty_table() for n, s in schemas.items()}, schemas)


def merge_statuses(statuses: list[SourceStatus], seconds: float) -> SourceStatus:
    """One status for the registry source from its batches' (snapshot.json's `sources.registry`)."""
    failed = [s for s in statuses if s.status == "failed"]
    tables: dict[str, int] = {}
    notes: dict[str, dict] = {}
    for s in statuses:
        for name, n in s.tables.items():
            tables[name] = tables.get(name, 0) + n
        for kind, tally in s.notes.items():
            into = notes.setdefault(kind, {"count": 0, "messages": []})
            into["count"] += tally.get("count", 0)
            into["messages"] = (into["messages"] + list(tally.get("messages", [])))[:MAX_MESSAGES]
    if failed:
        error = failed[0].error or "failed"
        if len(failed) > 1:
            error += f" (and {len(failed) - 1} more of {len(statuses)} batches failed)"
        return SourceStatus("failed", seconds=seconds, error=error, notes=notes)
    return SourceStatus("ok", rows=tables.get(next(iter(SOURCE_TABLES["registry"])), 0), seconds=seconds,
                        tables=tables, notes=notes)


def finish(store: Store, staging: str, snapshot_id: str, status: SourceStatus) -> None:
    """Merge the batches' cache parts into the cache when all succeeded; leave no registry table
    in the staging area when one failed. The cache parts go either way."""
    parts = cache_part_dir(store, snapshot_id)
    try:
        if status.status != "ok":
            store.snapshots.remove_tables(staging, SOURCE_TABLES["registry"])
        elif store.table_parts(parts):
            store.caches.write(CACHE_NAME, _unique_digests(store.read_table(parts, CACHE_SCHEMA)))
    finally:
        if store.fs.exists(parts):
            store.fs.rm(parts, recursive=True)


def _unique_digests(table: pa.Table) -> pa.Table:
    """One row per digest (content-addressed: any copy is the same), sorted as BlobCache.table()."""
    digests = table.column("digest").to_numpy(zero_copy_only=False)
    _, first = np.unique(digests, return_index=True)   # np.unique sorts
    return table.take(pa.array(first))
