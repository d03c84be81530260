"""Plan flow: evaluate one snapshot against the keep policies and publish the plan."""

# No `from __future__ import annotations`: a deployment run rebuilds the parameter model from the
# flow signature in another process, where string annotations do not resolve. See flows/sweep.py.

from typing import Annotated

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows.runs import ConfigParam, run_config
from tasks.config.models import RegsweepConfig
from tasks.plan.decision_cache import cache_current_decision
from tasks.plan.make import PlanResult, make_plan

# The keys of the plan's artifacts, which the sweep's approval form links to.
PLAN_ARTIFACT, DELETIONS_ARTIFACT = PLAN_ARTIFACTS = ("regsweep-plan", "regsweep-plan-deletions")


@task(name="evaluate-plan", task_run_name="evaluate-{snapshot}")
def evaluate_plan(config: RegsweepConfig, snapshot: str) -> PlanResult:
    # One task for the whole evaluation: it is a vectorised pass over every table at once.
    return make_plan(config, snapshot)


# NO_CACHE: a cache write is never answered from Prefect's cache, and a plan's tables are not worth hashing.
@task(name="cache-whatif-entry", cache_policy=NO_CACHE)
def cache_whatif_entry(config: RegsweepConfig, result: PlanResult) -> bool:
    """The what-if's entry for the current policy at the planned snapshot, from this plan's own
    evaluation (a what-if then evaluates only its candidate there); a failure only logs."""
    return cache_current_decision(config, result)


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
