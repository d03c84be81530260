"""History flow: registry growth over every snapshot in the store and, given a candidate cleanup
policy, the what-if next to the current policy (tasks/history/growth.py, tasks/history/whatif.py)."""

# No `from __future__ import annotations`: a deployment run rebuilds the parameter model from the
# flow signature in another process, where string annotations do not resolve. See flows/sweep.py.

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from tasks.history import growth as history

from tasks.history import whatif
from tasks.config.models import RegsweepConfig
from tasks.config.policy import CleanupPolicy
from tasks.store.store import Store


@dataclass
class HistoryResult:
    growth: "history.Growth | None"
    whatif: "whatif.WhatIf | None"


@task(name="read-growth")
def read_growth(store_url: str, since: datetime | None) -> history.Growth:
    return history.growth_report(Store(store_url), since)


@task(name="replay-candidate")
def replay_candidate(config: RegsweepConfig, candidate: CleanupPolicy, since: datetime | None) -> whatif.WhatIf:
    return whatif.whatif(config, candidate, since)


@flow(name="regsweep-history")
def history_flow(
    config: RegsweepConfig,
    since: Annotated[datetime | None, Field(description="Only snapshots taken at or after this time.")] = None,
    chart: Annotated[str | None, Field(description="Write a PNG chart of growth to this path.")] = None,
    candidate: Annotated[CleanupPolicy | None, Field(description="A candidate `cleanup:` policy to replay over every "
                         "complete snapshot next to the current one: deletions, reclaimable bytes and regrets.")] = None,
    whatif_chart: Annotated[str | None, Field(description="Write a PNG of current vs candidate to this path.")] = None,
    growth: Annotated[bool, Field(description="Compute the growth report (the CLI's whatif skips it).")] = True,
    top: Annotated[int, Field(ge=1, description="Repositories shown in the top-by-growth table and chart.")] = 10,
) -> HistoryResult:
    """Summarise registry growth from all snapshots; with a candidate policy, replay it too."""
    report = read_growth(config.store, since) if growth else None
    if report is not None:
        if chart:
            history.render_chart(report, chart, top)
        create_markdown_artifact(history.render_markdown(report, top), key="regsweep-history", description="Registry growth")
        if len(report.repositories):
            create_table_artifact(history.to_json(report, top)["repositories"], key="regsweep-history-repositories",
                                  description=f"Top {top} repositories by growth")
    result = replay_candidate(config, candidate, since) if candidate is not None else None
    if result is not None:
        if whatif_chart:
            whatif.render_chart(result, whatif_chart)
        create_markdown_artifact(whatif.render_markdown(result), key="regsweep-whatif", description="What-if: candidate vs current")
        data = result.to_json()
        create_table_artifact([{"snapshot": x["id"], **{f"{p}_{k}": x[p][k] for p in ("current", "candidate") for k in x[p]}}
                               for x in data["snapshots"]], key="regsweep-whatif-snapshots", description="Per snapshot, both policies")
        if data["regrets"]:
            create_table_artifact(data["regrets"], key="regsweep-whatif-regrets", description="Regrets of the candidate")
    return HistoryResult(report, result)
