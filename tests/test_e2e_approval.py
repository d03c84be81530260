"""The product as its users meet it: deployments on a real Prefect server, the approval form in Chromium.

The deployments of deployments/prefect.yaml are registered on a `prefect server` started on
loopback (not the test harness) and run by a process worker; snapshot and plan run through
`run_deployment`, the sweep deployment pauses, and a person's part is played in headless
Chromium: open the paused run, click Resume, read the form, fill it in, submit. Screenshots of
the form are written to the `screenshots` directory (var/screenshots unless set).
"""

from __future__ import annotations

import json
import re

import pytest

from tasks.store.store import Store
from tests.support.e2e import E2E_POOL, ROOT, on_server
from testbed.kube import kubectl_list, workload
from tests.support.sweeps import fresh, old, status
from testbed.prefect import deploy, deployment_file, hold_config, wait_for_run
from tests.support.e2e import browser  # noqa: F401 (fixtures)
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)
from tests.support.e2e import worker_configs  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e

SNAPSHOT, PLAN, SWEEP = ("regsweep-snapshot/snapshot-hourly", "regsweep-plan/plan-daily",
                         "regsweep-sweep/sweep-approved")


@pytest.fixture
def deployed_repo(registry, registry_client, unique_repo, tmp_path, prefect_server, e2e_worker, worker_configs):
    """A repository with two images to delete, one fresh and one in use (by a cluster dump); the
    deployments registered with a configuration for it; returns (config, repo, digests)."""
    c, repo = registry_client, unique_repo
    digests = {"v1": old(c, repo, "v1"), "v2": old(c, repo, "v2"), "v3": fresh(c, repo, "v3"), "v4": old(c, repo, "v4")}
    dump = tmp_path / "prod.json"
    dump.write_text(json.dumps(kubectl_list([workload("Deployment", "shop", "web", [f"{registry.host}/{repo}:v4"])])))
    config = {"store": str(tmp_path / "store"), "registry": {"url": registry.url, "repositories": [repo]},
              "kubernetes": {"dumps": [{"file": str(dump), "context": "prod"}]}, "helm": {"enabled": False},
              "cleanup": {"disableGitHistoryBasedPolicy": True, "keepImagesBuiltWithinLastNHours": 2,
                          "unlinkedImages": "delete"}}
    name = re.sub(r"[^a-z0-9-]+", "-", repo.lower()).strip("-")[-60:]
    hold_config(worker_configs, name, config)   # the worker holds it; the deployments name it
    prefect_file = deployment_file(ROOT / "deployments" / "prefect.yaml", tmp_path / "prefect.yaml", config=name,
                                   pool=E2E_POOL, sweep={"approval_poll_interval": 1})
    deploy(prefect_file, E2E_POOL, tmp_path / "prefect-cli", prefect_server.api_url, ROOT)
    return config, repo, digests


def paused_sweep(server):
    """Snapshot and plan through their deployments, then the sweep deployment until it pauses."""
    from prefect.deployments import run_deployment

    with on_server(server):
        for name in (SNAPSHOT, PLAN):
            run = wait_for_run(run_deployment(name, timeout=0, _sync=True).id, timeout=300)
            assert run.state.is_completed(), f"{name}: {run.state.name} {run.state.message}"
        return wait_for_run(run_deployment(SWEEP, timeout=0, _sync=True).id, until="paused", timeout=300)


def open_form(browser, server, run_id):
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.goto(server.run_url(run_id))
    page.get_by_role("button", name="Resume").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Approve deleting").wait_for()
    return page, dialog


def field(page, dialog, title: str):
    """One field of Prefect's schema form, found by its title."""
    return dialog.locator(".schema-form-property").filter(
        has=page.locator(".schema-form-property__label", has_text=title))


def fill_and_submit(page, dialog, *, approve: bool, name: str, comment: str, shot) -> None:
    from playwright.sync_api import expect

    switch = field(page, dialog, "Approve these deletions").get_by_role("switch")
    if approve:
        switch.click()
    expect(switch).to_have_attribute("aria-checked", "true" if approve else "false")
    field(page, dialog, "Your name").locator("textarea").fill(name)
    field(page, dialog, "Comment").locator("textarea").fill(comment)
    page.screenshot(path=str(shot), animations="disabled")
    dialog.get_by_role("button", name="Submit").click()
    try:
        expect(dialog).to_be_hidden(timeout=60_000)
    except AssertionError:
        page.screenshot(path=str(shot.with_name(shot.stem + "-not-submitted.png")))
        raise


def test_approval_through_the_ui_deletes_the_planned_tags_only(deployed_repo, prefect_server, browser, registry_client,
                                                               screenshots):
    config, repo, d = deployed_repo
    run = paused_sweep(prefect_server)
    page, dialog = open_form(browser, prefect_server, run.id)
    page.screenshot(path=str(screenshots / "approval-form.png"), animations="disabled")
    dialog.locator(".p-modal__body > article").evaluate("e => { e.scrollTop = e.scrollHeight; }")
    page.screenshot(path=str(screenshots / "approval-form-details.png"), animations="disabled")

    # The form is worth reading: what goes and why, the plan's age and snapshot, the artifact link.
    text = dialog.inner_text()
    assert "Approve deleting 2 items from" in text and repo in text
    plan_id = Store(config["store"]).plans.resolve("latest")
    ago = r"(less than a minute|\d+ min) ago"
    assert re.search(rf"plan {plan_id}, made {ago}", text) and re.search(rf"from snapshot \S+, taken {ago}", text)
    assert "2 manifests" in text and "Why they go" in text and "largest:" in text and "oldest:" in text
    assert "re-reads the cluster dumps (prod.json" in text
    for title, help_text in (("Approve these deletions", "Off (the default): reject"),
                             ("Your name", "Who decided"), ("Comment", "ticket number")):
        assert help_text in field(page, dialog, title).inner_text()
    hrefs = [dialog.get_by_role("link", name=name).get_attribute("href")
             for name in ("the plan's summary", "its largest deletions with digests")]
    for href in hrefs:
        assert re.fullmatch(re.escape(prefect_server.ui_url) + r"/artifacts/artifact/[0-9a-f-]{36}", href)

    fill_and_submit(page, dialog, approve=True, name="Ada Lovelace", comment="CHG-1234",
                    shot=screenshots / "approval-form-filled.png")
    with on_server(prefect_server):
        done = wait_for_run(run.id, timeout=300)
    assert done.state.is_completed(), done.state.message
    c = registry_client
    assert status(c, repo, d["v1"]) == 404 and status(c, repo, d["v2"]) == 404
    assert status(c, repo, d["v3"]) == 200 and status(c, repo, d["v4"]) == 200

    # The links lead to the plan's own artifacts.
    artifact = browser.new_page(viewport={"width": 1280, "height": 900})
    for href, name in zip(hrefs, ("plan-summary", "plan-deletions")):
        artifact.goto(href)
        artifact.get_by_text(f"Plan {plan_id}").first.wait_for()
        artifact.screenshot(path=str(screenshots / f"{name}-artifact.png"), animations="disabled")
    page.close()
    artifact.close()


def test_rejection_through_the_ui_deletes_nothing(deployed_repo, prefect_server, browser, registry_client, screenshots):
    config, repo, d = deployed_repo
    run = paused_sweep(prefect_server)
    page, dialog = open_form(browser, prefect_server, run.id)
    fill_and_submit(page, dialog, approve=False, name="Grace Hopper", comment="not before the release",
                    shot=screenshots / "rejection-form-filled.png")
    with on_server(prefect_server):
        done = wait_for_run(run.id, timeout=300)
    assert done.state.is_failed()
    assert "rejected by Grace Hopper (not before the release): nothing was deleted" in done.state.message
    assert all(status(registry_client, repo, digest) == 200 for digest in d.values())
    page.close()
