"""Snapshot flow: extract every enabled source in parallel, list the images in use that the registry
does not have, publish it all as one snapshot, then cache what history and the what-if read of it;
with `runner.kind: dask` the registry source fans out as repository-batch tasks on a Dask cluster
(tasks/snapshot/scaleout.py). The steps are tasks/snapshot/tasks.py's."""

# No `from __future__ import annotations`: a deployment run rebuilds the parameter model from the
# flow signature in another process, where string annotations do not resolve. See flows/sweep.py.

import time
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.runs import ConfigParam, run_config
from tasks.common.errors import SnapshotIncomplete, SourceError
from tasks.common.units import utcnow
from tasks.config.models import RegsweepConfig
from tasks.snapshot.render import summary_markdown
from tasks.snapshot.scaleout import batches, empty_tables, finish, list_repositories, merge_statuses
from tasks.snapshot.take import SourceStatus, check_sources, preload_sources, select_sources, snapshot_meta
from tasks.snapshot.tasks import (cache_history_inputs_task, dask_runner, extract_source, find_missing_images,
                                  probe_registry, scan_registry_batch)
from tasks.store.store import Store, new_id


@flow(name="regsweep-registry-batches")
def registry_batches_flow(config: RegsweepConfig, staging: str, snapshot_id: str, now_iso: str) -> SourceStatus:
    """The registry source fanned out: one task per batch of repositories, each writing its part files."""
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
    config: ConfigParam,
    sources: Annotated[list[str] | None, Field(description="Sources to extract; default: every enabled one.")] = None,
) -> str:
    """Take a snapshot of the registry, clusters, Helm history and git; return its id."""
    config = run_config(config)
    chosen = select_sources(config, sources)
    check_sources(config, chosen)
    preload_sources(chosen)
    store, now = Store(config.store), utcnow()
    snapshot_id = new_id(now)
    staging = store.snapshots.staging_dir(snapshot_id)
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
    missing = find_missing_images(config, staging, {name: s.status for name, s in statuses.items()})
    meta = snapshot_meta(now, config, statuses, caps, None if missing is None else missing.to_json())
    store.snapshots.publish(snapshot_id, meta)
    counts = cache_history_inputs_task(config.store, snapshot_id)
    create_markdown_artifact(summary_markdown(snapshot_id, meta, counts, None if missing is None else missing.shown),
                             key="regsweep-snapshot", description=f"Snapshot {snapshot_id}")
    if not meta["complete"]:
        raise SnapshotIncomplete(snapshot_id, {n: s.error or "failed" for n, s in statuses.items() if s.status == "failed"})
    return snapshot_id
