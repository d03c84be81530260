"""Sweep fixtures and builders: snapshots and plans made by the real extractors and evaluation.

    sweep            fixture: sweep(cfg, plan, **flow parameters) runs the sweep flow; its JSON report
    start_in_thread  run a flow (or the `sweep` fixture) in a thread, to act while it runs
    take_snapshot    a snapshot taken by the real extractors, at an optional clock (probe: with capabilities)
    make_plan, plan_of   plans stored as the plan flow stores them
    edit_plan        a stored plan with some tags' actions changed by hand, as a new plan
    old, fresh       push an image built in 2024 (planned delete) or now (kept as fresh)
    status, resolves_to  what the registry itself serves for a reference now
    survivors        every tag (and platform manifest of a tagged index) the registry serves now
"""

from __future__ import annotations

import contextvars
import threading
from datetime import datetime, timezone

import pytest

from tasks.snapshot.take import SourceStatus

from tasks.store.store import Store, new_id
from tasks.sweep import Journal
from tasks.common.units import utcnow
from testbed import MANIFEST_ACCEPT, push_image

OLD = datetime(2024, 1, 1, tzinfo=timezone.utc)

#: DELETE paths of the sweep's own targets, not of the capability probe it sends first
#: (a digest no content hashes to, and a random `regsweep-capability-probe-…` tag).
TARGET_DELETES = r"/manifests/(?!sha256:0{64}$|regsweep-capability-probe-)"
PROBE_DELETES = r"/manifests/(sha256:0{64}$|regsweep-capability-probe-)"


def take_snapshot(cfg, now: datetime | None = None, *, probe: bool = False) -> str:
    """A snapshot taken by the real extractors, published as the snapshot flow does.

    `now` is the clock of the machine taking it: an earlier one makes a snapshot as old as a run
    that long ago would have left, a later one a snapshot from a clock running ahead. With
    `probe` the registry's capabilities are probed and recorded, as the snapshot flow does.
    """
    from tasks.sources.registry import probe_capabilities
    from tasks.snapshot.take import run_source, select_sources, snapshot_meta, staged_repositories

    store = Store(cfg.store)
    now = now or utcnow()
    sid = new_id(now)
    staging = store.snapshots.staging_dir(sid)
    statuses = {name: (run_source(name, cfg, staging, now) if on else SourceStatus("skipped"))
                for name, on in select_sources(cfg, None).items()}
    caps = probe_capabilities(cfg.registry, staged_repositories(store, staging)) if probe else None
    store.snapshots.publish(sid, snapshot_meta(now, cfg, statuses, caps))
    return sid


def make_plan(cfg, sid: str) -> str:
    """Evaluate a snapshot into a stored plan, as the plan flow does."""
    from tasks.plan.make import make_plan as evaluate_and_publish

    return evaluate_and_publish(cfg, sid).plan_id


def plan_of(cfg) -> str:
    return make_plan(cfg, take_snapshot(cfg))


def edit_plan(cfg, plan_id: str, actions: dict[str, str]) -> str:
    """A copy of a stored plan whose tags in `actions` get that action ("keep" / "delete") by hand."""
    import pyarrow as pa

    from tasks.store.schemas import PLAN

    store = Store(cfg.store)
    rows = store.plans.table(plan_id).to_pylist()
    for r in rows:
        if r["tag"] in actions:
            r["action"], r["reasons"] = actions[r["tag"]], ["hand edit"]
    edited = new_id()
    store.plans.publish(edited, pa.Table.from_pylist(rows, schema=PLAN), {**store.plans.meta(plan_id), "id": edited})
    return edited


def status(client, repo: str, ref: str) -> int:
    return client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}).status_code


def resolves_to(client, repo: str, ref: str) -> str | None:
    """The digest the registry itself serves for `ref` now (None when it does not know it)."""
    r = client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
    return r.headers["docker-content-digest"] if r.status_code == 200 else None


def survivors(client, repo: str) -> dict[str, str]:
    """What the registry itself serves now: tag -> digest, and `<tag>/<arch>` -> each platform manifest."""
    tags = client.get(f"/v2/{repo}/tags/list").json().get("tags") or []
    out = {}
    for tag in tags:
        r = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
        if r.status_code == 200:
            out[tag] = r.headers["docker-content-digest"]
            for child in r.json().get("manifests") or []:
                out[f"{tag}/{(child.get('platform') or {}).get('architecture')}"] = child["digest"]
    return out


@pytest.fixture
def sweep(prefect_harness):
    """`sweep(cfg, plan, **flow parameters)`: run the sweep flow as the CLI does; its JSON report."""
    from flows.sweep import sweep_flow

    def run(cfg, plan: str, **parameters) -> dict:
        return sweep_flow(config=cfg, plan=plan, **parameters)

    return run


def start_in_thread(fn, **kwargs):
    """Run a flow in a thread (carrying the harness's Prefect settings); returns (thread, box):
    `box["result"]` or `box["error"]` once the thread ends."""
    ctx, box = contextvars.copy_context(), {}

    def target():
        try:
            box["result"] = ctx.run(fn, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def journal_events(cfg, plan_id: str) -> list[dict]:
    return Journal(Store(cfg.store), plan_id).read().to_pylist()


_builds = iter(range(10**9))


def old(client, repo, tag, **kw):
    """An image built in 2024 (no rule keeps it); every call builds a distinct image."""
    return push_image(client, repo, tag, config={"created": OLD, "config": {"Labels": {"build": str(next(_builds))}}}, **kw)


def fresh(client, repo, tag, **kw):
    """An image built just now (kept by keepImagesBuiltWithinLastNHours)."""
    return push_image(client, repo, tag, config={"created": utcnow(), "config": {"Labels": {"build": str(next(_builds))}}}, **kw)
