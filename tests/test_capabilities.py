"""The capability probe: what a registry lets regsweep do, found before anything depends on it,
recorded in the snapshot and the plan, and used by the sweep before it asks for approval."""

from __future__ import annotations

import json

import pytest

from tasks.registry.capabilities import Capabilities
from tasks.config.models import load_config, parse_config
from tasks.common.errors import SweepFailed
from tasks.store.store import Store
from testbed import LocalRegistry, tag_manifest
from tests.support.registry import READER_PASSWORD, READER_USER
from tests.support.configs import SWEEP, config
from tests.support.sweeps import edit_plan, journal_events, make_plan, old, status, take_snapshot
from tests.support.registry import (fault_proxy, fault_proxy_factory, fresh_registry,  # noqa: F401 (fixtures)
                                     token_issuer, unique_repo)
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)


def snapshot_caps(cfg, sid: str) -> dict:
    return Store(cfg.store).snapshots.meta(sid)["registry_capabilities"]


def test_a_registry_with_deletion_off_is_said_so_before_approval_is_asked(run_cli, fresh_registry, fault_proxy_factory,
                                                                          tmp_path):
    reg = fresh_registry(delete_enabled=False)
    with reg.client() as c:
        doomed = [old(c, "app", t) for t in ("a", "b")]
    proxy = fault_proxy_factory(reg)
    # No --yes: a sweep that reached the approval gate would wait there until the timeout.
    path = config(SWEEP, url=proxy.url, repositories=["app"], sweep={"approvalTimeout": "2m"}, write=tmp_path)

    assert run_cli("snapshot", "--config", path).returncode == 0
    cfg = load_config(path)
    sid = Store(cfg.store).snapshots.resolve("latest")
    caps = snapshot_caps(cfg, sid)
    assert (caps["delete_digest"], caps["delete_tag"], caps["referrers"]) == ("no", "no", "no")
    assert "HTTP 405 UNSUPPORTED" in caps["notes"]["delete_digest"]
    plan = run_cli("plan", "--config", path)
    assert plan.returncode == 0 and f"registry {proxy.url} refuses deletion" in plan.stderr

    r = run_cli("sweep", "--config", path, "--plan", "latest")

    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"regsweep: error: registry {proxy.url} refuses deletion ({caps['notes']['delete_digest']}); enable it "
        "(Distribution: set storage.delete.enabled: true); found before asking for approval: nothing was deleted"]
    assert r.stdout.strip().splitlines()[-1] == "failed: deleted nothing"
    with reg.client() as c:
        assert all(status(c, "app", d) == 200 for d in doomed)
    # The only DELETEs it ever sent were the probes': a digest of zeros and a random tag.
    assert all("0" * 64 in p or "regsweep-capability-probe-" in p for m, p in proxy.requests if m == "DELETE")
    assert journal_events(cfg, Store(cfg.store).plans.resolve("latest")) == []


def test_lone_tags_a_registry_cannot_delete_are_kept_without_asking_it(sweep, registry, registry_client, unique_repo,
                                                                       tmp_path, fault_proxy):
    c, repo = registry_client, unique_repo
    d = old(c, repo, "nightly")
    tag_manifest(c, repo, d, "stable")
    gone = old(c, repo, "old")
    cfg = load_config(config(SWEEP, url=fault_proxy.url, repositories=[repo], write=tmp_path))
    edited = edit_plan(cfg, make_plan(cfg, take_snapshot(cfg, probe=True)), {"stable": "keep"})
    before = fault_proxy.count("DELETE", r"/manifests/nightly$")

    report = sweep(cfg, edited, approve=True, max_deletions=1)   # the lone tag is no deletion to approve

    assert status(c, repo, "nightly") == 200 and status(c, repo, gone) == 404
    assert fault_proxy.count("DELETE", r"/manifests/nightly$") == before   # the probe knew: never asked
    skipped = [o for o in report["outcomes"] if o["ref"] == "nightly"]
    assert skipped and skipped[0]["status"] == "skipped" and "cannot delete a tag alone" in skipped[0]["detail"]
    assert report["deleted"] == 1 and report["failed"] == 0


def test_a_plan_probed_as_unable_to_delete_is_probed_again_before_refusing(sweep, tmp_path):
    root = tmp_path / "registry"
    reg = LocalRegistry(root, delete_enabled=False).start()
    try:
        with reg.client() as c:
            doomed = old(c, "app", "a")
        cfg = load_config(config(SWEEP, url=reg.url, repositories=["app"], write=tmp_path))
        sid = take_snapshot(cfg, probe=True)
        assert snapshot_caps(cfg, sid)["delete_digest"] == "no"
        plan = make_plan(cfg, sid)
        reg.stop()
        reg = LocalRegistry(root, delete_enabled=True, port=reg.port).start()   # fixed since the snapshot

        report = sweep(cfg, plan, approve=True)

        assert report["deleted"] == 1 and report["failed"] == 0
        with reg.client() as c:
            assert status(c, "app", doomed) == 404
    finally:
        reg.stop()


def test_an_account_that_may_only_pull_is_denied_before_the_gate(sweep, token_registry, token_issuer, tmp_path,
                                                                  monkeypatch):
    with token_registry.client() as c:
        doomed = old(c, "ro/app", "a")
    monkeypatch.setenv("REGSWEEP_READER_PW", READER_PASSWORD)
    data = config(SWEEP, url=token_registry.url, repositories=["ro/app"], store=tmp_path / "store")
    data["registry"]["auth"] = {"username": READER_USER, "password_env": "REGSWEEP_READER_PW"}
    data["registry"]["allowInsecureCredentials"] = True   # a plain-http loopback registry
    cfg = parse_config(data)
    sid = take_snapshot(cfg, probe=True)
    caps = Capabilities.from_json(snapshot_caps(cfg, sid))
    assert caps.delete_digest == "denied" and "check the credentials" in caps.notes["delete_digest"]
    plan = make_plan(cfg, sid)

    with pytest.raises(SweepFailed, match="does not let these credentials delete") as e:
        sweep(cfg, plan, approve=True)

    assert "found before asking for approval: nothing was deleted" in str(e.value) and e.value.report is None
    with token_registry.client() as c:
        assert status(c, "ro/app", doomed) == 200


@pytest.mark.unit
def test_capabilities_read_back_from_json_and_summarise():
    caps = Capabilities(api="ecr", delete_digest="yes", delete_tag="yes", delete_untagged="yes", referrers="no",
                        repository="team/app", notes={"delete_tag": "x"})
    again = Capabilities.from_json(json.loads(json.dumps(caps.to_json())))
    assert again == caps and Capabilities.from_json({"no": "api"}) is None
    assert again.summary() == "delete by digest: yes; lone tags: yes; untagged: yes; referrers API: no"


@pytest.mark.unit
@pytest.mark.parametrize("registry, key, words", [
    ({"api": "gitlab"}, "registry", "`api: gitlab` needs a `gitlab:` section naming the project or group"),
    ({"api": "gitlab", "gitlab": {"project": "a/b", "group": "a"}}, "registry", "exactly one of project or group"),
    ({"api": "github", "github": {}}, "registry.github.owner", "required"),
    ({"api": "dockerhub"}, "registry", "naming the namespace"),
    ({"api": "quay"}, "registry.api", "'distribution', 'ecr'"),
    ({"api": "github", "github": {"owner": "o", "token": "s3cret"}}, "registry.github.token", "unknown key"),
])
def test_registry_api_settings_are_checked(registry, key, words):
    from tasks.common.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_config({"registry": {"url": "https://ghcr.io", **registry}})
    assert e.value.key == key and words in str(e.value)
