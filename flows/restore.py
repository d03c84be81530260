"""Restore flow: undo a sweep until the registry's garbage collector runs (docs/operations/restore.md).

The CLI (`regsweep restore`) and the `restore` deployment run this flow; what it does lives in
tasks/sweep/restore.py. It deletes nothing and overwrites no tag that moved, so it needs no approval.
"""

# No `from __future__ import annotations`: a deployment run rebuilds the parameter model from
# these annotations (flows/sweep.py says why).

from typing import Annotated, Optional

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows.runs import ConfigParam, run_config
from tasks.store.store import Store


@flow(name="regsweep-restore")
def restore_flow(
    config: ConfigParam,
    sweep: Annotated[str, Field(description="The sweep to undo: the id of the plan it acted on, or `latest` (the newest plan).")] = "latest",
    repository: Annotated[Optional[str], Field(description="Only what was deleted from this repository.")] = None,
    tag: Annotated[Optional[str], Field(description="Only the manifest that carried this tag (and what went with it), and only this tag.")] = None,
) -> dict:
    """Re-upload what a sweep deleted where every blob it needs is still there; never overwrite a moved tag."""
    from tasks.sweep.restore import restore

    config = run_config(config)
    store = Store(config.store)
    sweep_id = store.plans.resolve(sweep)
    report = restore(config, store, sweep_id, repository=repository or None, tag=tag or None)
    create_markdown_artifact(report.markdown(), key="regsweep-restore", description=report.summary())
    return report.to_json()
