"""The Prefect tasks the sweep flow (flows/sweep.py) runs, in order: prepare, then re-check and delete.

Each is a thin wrapper over the plain-Python step it names, so the steps stay testable without
Prefect; the flow adds what needs a flow run (the lock, the approval pause, the artifacts).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config.models import RegsweepConfig
from tasks.store.store import Store
from tasks.sweep.execute import delete_targets
from tasks.sweep.intent import Intent
from tasks.sweep.loading import prepare
from tasks.sweep.report import SweepReport


# NO_CACHE: a sweep is never answered from a cache, and its inputs (store, intent) are not worth hashing.
@task(name="prepare-sweep", cache_policy=NO_CACHE)
def prepare_sweep(config: RegsweepConfig, store: Store, plan: str, probe: bool) -> Intent:
    """Load and check the plan (`loading.prepare`): the intent to approve, or PlanRefused."""
    return prepare(config, store, plan, probe=probe)


@task(name="recheck-and-delete", cache_policy=NO_CACHE)
def recheck_and_delete(config: RegsweepConfig, store: Store, intent: Intent, dry_run: bool) -> SweepReport:
    """Re-check the registry and clusters and delete the approved intent (`execute.delete_targets`)."""
    return delete_targets(config, store, intent, dry_run=dry_run)
