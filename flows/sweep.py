"""Sweep flow: delete what a plan decided, after a human approval and fresh re-checks (docs/safety.md).

The one orchestration of a sweep: the CLI, deployments and tests all run this flow. It only
sequences the steps: the lock, the tasks of tasks/sweep/tasks.py, the approval pause and the
artifacts; what each step does lives in tasks/sweep/.
"""

# No `from __future__ import annotations` here: a deployment run rebuilds the parameter model from
# these annotations in another process, where string annotations do not resolve (`Sweep_FlowModel
# is not fully defined`). Flow signatures hold real types.

import contextlib
import re
import sys
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from flows.plan import DELETIONS_ARTIFACT, PLAN_ARTIFACT, PLAN_ARTIFACTS
from flows.runs import ConfigParam, check_run_approval, run_config
from tasks.config.models import RegsweepConfig, SweepConfig
from tasks.common.errors import SweepNotApproved
from tasks.sweep.lock import sweep_lock
from tasks.common.units import parse_duration
from tasks.store.store import Store
from tasks.sweep import Intent, approval, check_deletable, check_up_front_approval, raise_if_failed
from tasks.sweep.tasks import prepare_sweep, recheck_and_delete


class SweepApproval(RunInput):
    """The form a paused sweep shows under the list of what it will delete."""

    approve: bool = Field(False, title="Approve these deletions",
                          description="On: delete everything listed above, each after its re-check. "
                                      "Off (the default): reject, and nothing is deleted.")
    approver: str = Field(min_length=1, title="Your name", description="Who decided; recorded in the run's logs.")
    comment: str = Field("", title="Comment", description="Optional: why, or a ticket number; recorded with your name.")


def plan_artifact_urls(plan_id: str) -> dict[str, str]:
    """UI pages of the plan flow's artifacts for `plan_id` on this server, by artifact key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    if not ui:
        return {}
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(PLAN_ARTIFACTS))),
                                      sort=ArtifactSort.CREATED_DESC, limit=200)
    urls: dict[str, str] = {}
    for artifact in found:   # flows/plan.py describes both as "Plan <id>..."
        if re.match(rf"Plan {re.escape(plan_id)}\b", artifact.description or "") and artifact.key not in urls:
            urls[artifact.key] = f"{ui.rstrip('/')}/artifacts/artifact/{artifact.id}"
    return urls


def ask_approval(settings: SweepConfig, intent: Intent, poll_interval: int) -> SweepApproval:
    """Pause the run with the approval form; SweepNotApproved on rejection or timeout."""
    from prefect.context import FlowRunContext
    from prefect.utilities.urls import url_for

    logger = get_run_logger()
    links = plan_artifact_urls(intent.plan_id)
    description = approval.render(intent, plan_link=links.get(PLAN_ARTIFACT),
                                  deletions_link=links.get(DELETIONS_ARTIFACT))
    run = FlowRunContext.get().flow_run
    url = url_for("flow-run", obj_id=run.id)
    where = (f"in the Prefect UI at {url}" if url else
             f"for flow run {run.name} ({run.id}); this Prefect has no UI: run `prefect server start`, "
             "set PREFECT_API_URL and sweep again, or approve up front with --yes")
    timeout = parse_duration(settings.approvalTimeout)
    note = (f"waiting up to {settings.approvalTimeout} for approval of {intent.deletions} deletions "
            f"in {intent.registry}: approve or reject {where}")
    logger.warning(note)
    print(f"regsweep: {note}", file=sys.stderr, flush=True)  # the CLI user is waiting on this
    try:
        answer = pause_flow_run(
            # Only the description: initial values given here would replace the fields' help texts.
            wait_for_input=SweepApproval.with_initial_data(description=description),
            timeout=max(1, int(timeout.total_seconds())), poll_interval=poll_interval)
    except FlowPauseTimeout:
        raise SweepNotApproved(f"no approval for plan {intent.plan_id} within sweep.approvalTimeout "
                               f"{settings.approvalTimeout}: nothing was deleted") from None
    said = f" ({answer.comment})" if answer.comment else ""
    if not answer.approve:
        raise SweepNotApproved(f"sweep of plan {intent.plan_id} rejected by {answer.approver}{said}: nothing was deleted")
    logger.warning(f"sweep of plan {intent.plan_id} approved by {answer.approver}{said}")
    return answer


@flow(name="regsweep-sweep")
def sweep_flow(
    config: ConfigParam,
    plan: Annotated[str, Field(description="Plan id, or `latest`.")] = "latest",
    dry_run: Annotated[bool, Field(description="Re-check and report what would be deleted; delete nothing.")] = False,
    approve: Annotated[bool, Field(description="Approval given up front (no pause), within max_deletions.")] = False,
    max_deletions: Annotated[int | None, Field(ge=0, description="Up-front approval covers at most this many deletions; default sweep.maxDeletions.")] = None,
    approval_poll_interval: Annotated[int, Field(ge=1, description="Seconds between checks for the approval.")] = 10,
) -> dict:
    """Delete what a plan decided: lock, approval, fresh re-checks, journalled deletions; returns the report."""
    config = run_config(config)
    check_run_approval(config, approve, max_deletions)   # a deployment run approves up front only if the worker allows
    store = Store(config.store)
    limit = config.sweep.maxDeletions if max_deletions is None else max_deletions
    with contextlib.nullcontext() if dry_run else sweep_lock(store, config.registry.url, plan):
        # A real sweep asks the registry what it can delete before anyone is asked to approve;
        # a dry run sends no DELETE of any kind, and trusts what the snapshot recorded.
        intent = prepare_sweep(config, store, plan, probe=not dry_run)
        if intent.targets and not dry_run:
            check_deletable(intent)
            create_markdown_artifact(approval.render(intent), key="regsweep-sweep-intent",
                                     description=f"What the sweep of plan {intent.plan_id} will delete")
            if approve:
                check_up_front_approval(intent, limit)
            else:
                ask_approval(config.sweep, intent, approval_poll_interval)
        report = recheck_and_delete(config, store, intent, dry_run)
    create_markdown_artifact(report.markdown(), key="regsweep-sweep", description=report.summary())
    raise_if_failed(report)
    return report.to_json()
