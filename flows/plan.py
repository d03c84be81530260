"""Plan flow: evaluate one snapshot against the keep policies, publish the plan, then cache the
current policy's decision for the what-if (tasks/plan/tasks.py holds the steps)."""

# No `from __future__ import annotations`: a deployment run rebuilds the parameter model from the
# flow signature in another process, where string annotations do not resolve. See flows/sweep.py.

from typing import Annotated

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from flows.runs import ConfigParam, run_config
from tasks.plan.tasks import cache_whatif_entry, evaluate_plan

# The keys of the plan's artifacts, which the sweep's approval form links to.
PLAN_ARTIFACT, DELETIONS_ARTIFACT = PLAN_ARTIFACTS = ("regsweep-plan", "regsweep-plan-deletions")


@flow(name="regsweep-plan", log_prints=True)
def plan_flow(
    config: ConfigParam,
    snapshot: Annotated[str, Field(description="Snapshot id to evaluate, or `latest`.")] = "latest",
) -> str:
    """Decide keep or delete for every tag of a snapshot; return the plan id."""
    config = run_config(config)
    result = evaluate_plan(config, snapshot)
    cache_whatif_entry(config, result)
    meta = result.meta
    create_markdown_artifact(result.markdown, key=PLAN_ARTIFACT, description=f"Plan {result.plan_id}")
    create_table_artifact(result.deletions, key=DELETIONS_ARTIFACT,
                          description=f"Plan {result.plan_id}: the {len(result.deletions)} largest of "
                                      f"{meta['delete']} planned deletions")
    print(f"plan {result.plan_id}: {meta['delete']} of {meta['rows']} rows to delete"
          + ("" if meta["complete"] else " (snapshot incomplete: nothing will be deleted)"))
    return result.plan_id
