"""History flow: registry growth over every snapshot in the store."""

# No `from __future__ import annotations`: a deployment run rebuilds the parameter model from the
# flow signature in another process, where string annotations do not resolve. See flows/sweep.py.

from datetime import datetime
from typing import Annotated

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from tasks.config import RegsweepConfig
from tasks.history import growth, render_chart, render_markdown
from tasks.store import Store


@task(name="read-growth")
def read_growth(store_url: str, since: datetime | None):
    return growth(Store(store_url), since)


@flow(name="regsweep-history")
def history_flow(
    config: RegsweepConfig,
    since: Annotated[datetime | None, Field(description="Only snapshots taken at or after this time.")] = None,
    chart: Annotated[str | None, Field(description="Write a PNG chart of growth to this path.")] = None,
):
    """Summarise registry growth from all snapshots; returns the table as a pandas frame."""
    df = read_growth(config.store, since)
    if chart:
        render_chart(df, chart)
    create_markdown_artifact(render_markdown(df), key="regsweep-history", description="Registry growth")
    return df
