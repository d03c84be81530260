"""Snapshot flow: extract every enabled source in parallel into one published snapshot; with
`runner.kind: dask` the registry source fans out as repository-batch tasks on a Dask cluster
(tasks/snapshot/scaleout.py)."""

# No `from __future__ import annotations`: a deployment run rebuilds the parameter model from the
# flow signature in another process, where string annotations do not resolve. See flows/sweep.py.

from typing import Annotated

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from tasks.config.models import RegsweepConfig
from tasks.common.errors import SnapshotIncomplete
from tasks.snapshot.take import (check_sources, preload_sources, run_source, select_sources, snapshot_meta,
                            staged_repositories, summary_markdown)
from tasks.store.store import SourceStatus, Store, new_id, utcnow


@task(name="extract-source", task_run_name="extract-{name}")
def extract_source(name: str, config: RegsweepConfig, staging: str, now_iso: str) -> SourceStatus:
    from datetime import datetime
    return run_source(name, config, staging, datetime.fromisoformat(now_iso))


@task(name="probe-registry")
def probe_registry(config: RegsweepConfig, staging: str) -> dict | None:
    """What the registry lets regsweep do (tasks/registry/capabilities.py), probed in a repository just scanned."""
    from tasks.sources.registry import probe_capabilities

    return probe_capabilities(config.registry, staged_repositories(Store(config.store), staging))


@task(name="scan-registry-batch", task_run_name="scan-registry-batch-{part}")
def scan_registry_batch(config: RegsweepConfig, staging: str, snapshot_id: str, part: int,
                        repositories: list[str], now_iso: str) -> SourceStatus:
    from datetime import datetime

    from tasks.snapshot.scaleout import scan_batch

    return scan_batch(config, staging, snapshot_id, part, repositories, datetime.fromisoformat(now_iso))


def dask_runner(config: RegsweepConfig):
    """The Dask task runner `runner.dask` describes: a scheduler's address, else a LocalCluster
    of worker processes (one thread each: a batch is an asyncio loop of its own) for the run."""
    import logging

    from prefect_dask import DaskTaskRunner

    dask = config.runner.dask
    if dask.address:
        return DaskTaskRunner(address=dask.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": dask.workers, "threads_per_worker": 1, "processes": True,
                                          # no fixed dashboard port to collide on; distributed's INFO lines stay out
                                          "dashboard_address": ":0", "silence_logs": logging.WARNING})


@flow(name="regsweep-registry-batches")
def registry_batches_flow(config: RegsweepConfig, staging: str, snapshot_id: str, now_iso: str) -> SourceStatus:
    """The registry source fanned out: one task per batch of repositories, each writing its part files."""
    import time

    from tasks.common.errors import SourceError
    from tasks.snapshot.scaleout import batches, empty_tables, finish, list_repositories, merge_statuses

    store, started = Store(config.store), time.monotonic()
    try:
        repos = list_repositories(config)
    except SourceError as e:
        return SourceStatus("failed", seconds=time.monotonic() - started, error=str(e))
    if not repos:
        counts = empty_tables(store, staging)
        return SourceStatus("ok", seconds=time.monotonic() - started, tables=counts)
    futures = [scan_registry_batch.submit(config, staging, snapshot_id, i, part, now_iso)
               for i, part in enumerate(batches(repos, config.runner.dask.batchRepositories))]
    status = merge_statuses([f.result() for f in futures], time.monotonic() - started)
    finish(store, staging, snapshot_id, status)
    return status


@flow(name="regsweep-snapshot", task_runner=ThreadPoolTaskRunner(max_workers=4))
def snapshot_flow(
    config: RegsweepConfig,
    sources: Annotated[list[str] | None, Field(description="Sources to extract; default: every enabled one.")] = None,
) -> str:
    """Take a snapshot of the registry, clusters, Helm history and git; return its id."""
    chosen = select_sources(config, sources)
    check_sources(config, chosen)
    preload_sources(chosen)
    store, now = Store(config.store), utcnow()
    snapshot_id = new_id(now)
    staging = store.staging_dir(snapshot_id)
    fan_out = config.runner.kind == "dask" and chosen["registry"]
    futures = {name: extract_source.submit(name, config, staging, now.isoformat())
               for name, on in chosen.items() if on and not (fan_out and name == "registry")}
    done: dict[str, SourceStatus] = {}
    if fan_out:
        # The other sources go on in this flow's threads meanwhile.
        runner = registry_batches_flow.with_options(task_runner=dask_runner(config))
        done["registry"] = runner(config, staging, snapshot_id, now.isoformat())
    for name, future in futures.items():
        done[name] = future.result()
    statuses = {name: done.get(name, SourceStatus("skipped")) for name in chosen}
    caps = probe_registry(config, staging) if statuses["registry"].status == "ok" else None
    meta = snapshot_meta(now, config, statuses, caps)
    store.publish_snapshot(snapshot_id, meta)
    create_markdown_artifact(summary_markdown(snapshot_id, meta, store), key="regsweep-snapshot",
                             description=f"Snapshot {snapshot_id}")
    if not meta["complete"]:
        raise SnapshotIncomplete(snapshot_id, {n: s.error or "failed" for n, s in statuses.items() if s.status == "failed"})
    return snapshot_id
