"""Snapshot flow: extract every enabled source in parallel into one published snapshot."""

# No `from __future__ import annotations`: a deployment run rebuilds the parameter model from the
# flow signature in another process, where string annotations do not resolve. See flows/sweep.py.

from typing import Annotated

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from tasks.config import RegsweepConfig
from tasks.errors import SnapshotIncomplete
from tasks.snapshot import (check_sources, preload_sources, run_source, select_sources, snapshot_meta,
                            staged_repositories, summary_markdown)
from tasks.store import SourceStatus, Store, new_id, utcnow


@task(name="extract-source", task_run_name="extract-{name}")
def extract_source(name: str, config: RegsweepConfig, staging: str, now_iso: str) -> SourceStatus:
    from datetime import datetime
    return run_source(name, config, staging, datetime.fromisoformat(now_iso))


@task(name="probe-registry")
def probe_registry(config: RegsweepConfig, staging: str) -> dict | None:
    """What the registry lets regsweep do (tasks/capabilities.py), probed in a repository just scanned."""
    from tasks.registry import probe_capabilities

    return probe_capabilities(config.registry, staged_repositories(Store(config.store), staging))


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
    futures = {name: extract_source.submit(name, config, staging, now.isoformat())
               for name, on in chosen.items() if on}
    statuses = {name: (futures[name].result() if on else SourceStatus("skipped"))
                for name, on in chosen.items()}
    caps = probe_registry(config, staging) if statuses["registry"].status == "ok" else None
    meta = snapshot_meta(now, config, statuses, caps)
    store.publish_snapshot(snapshot_id, meta)
    create_markdown_artifact(summary_markdown(snapshot_id, meta, store), key="regsweep-snapshot",
                             description=f"Snapshot {snapshot_id}")
    if not meta["complete"]:
        raise SnapshotIncomplete(snapshot_id, {n: s.error or "failed" for n, s in statuses.items() if s.status == "failed"})
    return snapshot_id
