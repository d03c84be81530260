"""The Prefect tasks the history flows run (flows/history.py sequences them)."""

from __future__ import annotations

from datetime import datetime

from prefect import task

from tasks.config.models import RegsweepConfig
from tasks.config.policy import CleanupPolicy
from tasks.history.growth import Growth, growth_report
from tasks.history.whatif import WhatIf, whatif
from tasks.store.store import Store


@task(name="read-growth")
def read_growth(store_url: str, since: datetime | None) -> Growth:
    """The growth report over every snapshot since `since` (cached summaries first)."""
    return growth_report(Store(store_url), since)


@task(name="replay-candidate")
def replay_candidate(config: RegsweepConfig, candidate: CleanupPolicy, since: datetime | None) -> WhatIf:
    """The candidate policy replayed over every complete snapshot beside the current one."""
    return whatif(config, candidate, since)
