"""The Prefect tasks the snapshot flow runs (flows/snapshot.py sequences them).

One task per source (never per tag), one per repository batch when the registry scan fans out on
Dask, the capability probe, the step that lists images in use the registry does not have (after
every source, before publishing), and the step that caches what history and the what-if read of
the new snapshot. Each is a thin wrapper over a plain function of this package.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from prefect import task

from tasks.config.models import RegsweepConfig
from tasks.snapshot.missing import MissingImages, record_missing
from tasks.snapshot.scaleout import scan_batch
from tasks.snapshot.summary import cache_history_inputs
from tasks.snapshot.take import run_source, staged_repositories
from tasks.sources.registry import probe_capabilities
from tasks.snapshot.take import SourceStatus
from tasks.store.store import Store


@task(name="extract-source", task_run_name="extract-{name}")
def extract_source(name: str, config: RegsweepConfig, staging: str, now_iso: str) -> SourceStatus:
    """One source into the snapshot's staging area (tasks.snapshot.take.run_source)."""
    return run_source(name, config, staging, datetime.fromisoformat(now_iso))


@task(name="probe-registry")
def probe_registry(config: RegsweepConfig, staging: str) -> dict | None:
    """What the registry lets regsweep do (tasks/registry/capabilities.py), probed in a repository just scanned."""
    return probe_capabilities(config.registry, staged_repositories(Store(config.store), staging))


@task(name="find-missing-images")
def find_missing_images(config: RegsweepConfig, staging: str, statuses: dict[str, str]) -> MissingImages | None:
    """Images workloads, Helm revisions and keep lists name that the registry does not have
    (tasks/snapshot/missing.py), from the sources whose status is ok; None when the registry
    source did not complete (nothing can be called missing then)."""
    return record_missing(config, Store(config.store), staging, statuses)


@task(name="scan-registry-batch", task_run_name="scan-registry-batch-{part}")
def scan_registry_batch(config: RegsweepConfig, staging: str, snapshot_id: str, part: int,
                        repositories: list[str], now_iso: str) -> SourceStatus:
    """One batch of repositories of a fanned-out registry scan, written as part files."""
    return scan_batch(config, staging, snapshot_id, part, repositories, datetime.fromisoformat(now_iso))


@task(name="cache-history-inputs")
def cache_history_inputs_task(store_url: str, snapshot_id: str) -> dict[str, Any]:
    """The new snapshot's summary, diff and FootprintIndex cached for history and the what-if (a
    growth report is ~100x and a what-if ~3x slower without them); returns its counts."""
    return cache_history_inputs(Store(store_url), snapshot_id)


def dask_runner(config: RegsweepConfig):
    """The Dask task runner `runner.dask` describes: a scheduler's address, else a LocalCluster
    of worker processes (one thread each: a batch is an asyncio loop of its own) for the run."""
    from prefect_dask import DaskTaskRunner   # optional heavy dependency: only for runner.kind dask

    dask = config.runner.dask
    if dask.address:
        return DaskTaskRunner(address=dask.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": dask.workers, "threads_per_worker": 1, "processes": True,
                                          # no fixed dashboard port to collide on; distributed's INFO lines stay out
                                          "dashboard_address": ":0", "silence_logs": logging.WARNING})
