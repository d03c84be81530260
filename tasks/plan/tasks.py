"""The Prefect tasks the plan flow runs (flows/plan.py sequences them)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config.models import RegsweepConfig
from tasks.plan.decision_cache import cache_current_decision
from tasks.plan.make import PlanResult, make_plan


@task(name="evaluate-plan", task_run_name="evaluate-{snapshot}")
def evaluate_plan(config: RegsweepConfig, snapshot: str) -> PlanResult:
    """The whole plan of a snapshot: one task, a vectorised pass over every table in repository batches."""
    return make_plan(config, snapshot)


# NO_CACHE: a cache write is never answered from Prefect's cache, and a plan's tables are not worth hashing.
@task(name="cache-whatif-entry", cache_policy=NO_CACHE)
def cache_whatif_entry(config: RegsweepConfig, result: PlanResult) -> bool:
    """The what-if's entry for the current policy at the planned snapshot, from this plan's own
    evaluation (a what-if then evaluates only its candidate there); a failure only logs."""
    return cache_current_decision(config, result)
