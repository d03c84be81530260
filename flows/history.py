"""History flows, one per job: registry growth over every snapshot in the store, and the what-if of
a candidate cleanup policy next to the current one (tasks/history/). Charts and JSON files are the
command line's to write (`regsweep history --chart`, `regsweep whatif --json`): a flow writes only
Prefect artifacts, never a path it is given."""

# No `from __future__ import annotations`: a deployment run rebuilds the parameter model from the
# flow signature in another process, where string annotations do not resolve. See flows/sweep.py.

from datetime import datetime
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from flows.runs import ConfigParam, run_config
from tasks.config.policy import CleanupPolicy
from tasks.history import growth, whatif
from tasks.history.tasks import read_growth, replay_candidate


@flow(name="regsweep-history")
def growth_flow(
    config: ConfigParam,
    since: Annotated[datetime | None, Field(description="Only snapshots taken at or after this time.")] = None,
    top: Annotated[int, Field(ge=1, le=1000, description="Repositories shown in the top-by-growth table.")] = 10,
) -> growth.Growth:
    """Summarise registry growth from all snapshots: sizes, churn, growth per day, projections."""
    config = run_config(config)
    report = read_growth(config.store, since)
    create_markdown_artifact(growth.render_markdown(report, top), key="regsweep-history", description="Registry growth")
    if len(report.repositories):
        create_table_artifact(growth.to_json(report, top)["repositories"], key="regsweep-history-repositories",
                              description=f"Top {top} repositories by growth")
    return report


@flow(name="regsweep-whatif")
def whatif_flow(
    config: ConfigParam,
    candidate: Annotated[CleanupPolicy, Field(description="A candidate `cleanup:` policy to replay over every "
                         "complete snapshot next to the current one: deletions, reclaimable bytes and regrets.")],
    since: Annotated[datetime | None, Field(description="Only snapshots taken at or after this time.")] = None,
) -> whatif.WhatIf:
    """Replay a candidate cleanup policy over the stored snapshots next to the current policy."""
    config = run_config(config)
    result = replay_candidate(config, candidate, since)
    create_markdown_artifact(whatif.render_markdown(result), key="regsweep-whatif", description="What-if: candidate vs current")
    data = result.to_json()
    create_table_artifact([{"snapshot": x["id"], **{f"{p}_{k}": x[p][k] for p in ("current", "candidate") for k in x[p]}}
                           for x in data["snapshots"]], key="regsweep-whatif-snapshots", description="Per snapshot, both policies")
    if data["regrets"]:
        create_table_artifact(data["regrets"], key="regsweep-whatif-regrets", description="Regrets of the candidate")
    return result
