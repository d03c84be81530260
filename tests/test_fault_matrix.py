"""Snapshot → plan → sweep with a fault-injecting proxy in front of the registry and the Kubernetes
API: every fault class ends exactly as a fault-free run does (same plan, same survivors), or fails
closed with nothing deleted and a one-line message. Retries are bounded, logged and counted in
snapshot.json (`sources.<name>.retries`) and in the sweep's report.

Each run gets its own repository holding the same images (so the same digests), and a
Deployment in the cluster that runs one of them, so the sweep's fresh cluster scan matters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest

from tasks.config.models import load_config
from tasks.common.errors import PlanRefused, RegsweepError, SweepFailed
from tasks.store.store import Store
from testbed import push_image, push_index
from tests.support.faults import FaultProxy
from testbed.kube import workload
from testbed.kubeapi import KubeServer, write_kubeconfig
from tests.support.configs import SWEEP, config
from tests.support.sweeps import make_plan, survivors, take_snapshot, utcnow

OLD = datetime(2024, 1, 1, tzinfo=timezone.utc)
FRESH = utcnow().replace(microsecond=0)   # one build time for every run's fresh image: the same digest
ARM, AMD = {"os": "linux", "architecture": "arm64"}, {"os": "linux", "architecture": "amd64"}

#: fault class -> FaultProxy.inject arguments (every Nth request of the run)
FAULTS = {
    "503": {"status": 503, "every": 3},
    "429": {"status": 429, "every": 4, "retry_after": 1},
    "500": {"status": 500, "every": 3},
    "drop": {"drop": True, "every": 3},
    "truncate": {"truncate": True, "every": 3},
    "slow": {"slow": 3.0, "every": 4},        # past the 1 s timeouts the run is configured with
}
RETRIED = {"503", "429", "drop", "truncate", "slow"}
RESULTS: list[dict] = []   # one row per run, printed at the end (-s): the fault table


def world(client, repo: str) -> None:
    """Old images a, b (in use), c, an old two-platform index m, and a fresh image f."""
    for tag in ("a", "b", "c"):
        push_image(client, repo, tag, layers=[f"layer {tag}".encode()], config={"created": OLD})
    arm = push_image(client, repo, None, layers=[b"arm"], config={"created": OLD, "architecture": "arm64"})
    amd = push_image(client, repo, None, layers=[b"amd"], config={"created": OLD})
    push_index(client, repo, "m", [(arm, ARM), (amd, AMD)])
    push_image(client, repo, "f", layers=[b"fresh"], config={"created": FRESH})


@dataclass
class Stack:
    tmp: object
    client: object
    reg: FaultProxy
    kube: FaultProxy
    server: KubeServer
    repos: list[str] = field(default_factory=list)

    def config(self, repo: str, timeout: float):
        kubeconfig = write_kubeconfig(self.tmp / f"kubeconfig-{len(self.repos)}", {"prod": (self.kube.url, None)})
        path = config(SWEEP, url=self.reg.url, repositories=[repo], kubeconfig=kubeconfig,
                      registry={"timeout": timeout}, kubernetes={"timeout": timeout},
                      write=self.tmp / f"{len(self.repos)}.yaml")
        self.repos.append(repo)
        return load_config(path)

    def faults(self) -> tuple[int, int]:
        return len(self.reg.faulted), len(self.kube.faulted)


@pytest.fixture(scope="module")
def stack(registry, registry_client, tmp_path_factory, prefect_harness):
    server = KubeServer().start()
    with FaultProxy(registry.url) as reg, FaultProxy(server.url) as kube:
        yield Stack(tmp_path_factory.mktemp("faults"), registry_client, reg, kube, server)
    server.stop()
    # The fault table of this module's runs (shown with pytest -s).
    print("\n| run | fault | faulted in snapshot (registry, kube) | plan | sweep | outcome |")
    for r in RESULTS:
        outcome = f"{type(r['error']).__name__}: {r['error']}" if "error" in r else r["report"]["summary"]
        print(f"| {r['run']} | {r['fault']} | {r['snapshot_faults']} | {r['plan_faults']} | {r['sweep_faults']} "
              f"| {outcome[:140]} |")


def run(stack: Stack, name: str, fault: str | None, stages: set[str]) -> dict:
    """One snapshot → plan → sweep with `fault` injected in `stages`; what happened."""
    from flows.sweep import sweep_flow

    repo = f"faults/{name}"
    world(stack.client, repo)
    stack.server.add(workload("Deployment", "shop", re.sub(r"\W", "-", name), [f"{stack.reg.host}/{repo}:b"]))
    cfg = stack.config(repo, timeout=1.0 if fault == "slow" else 30.0)
    row = {"run": name, "fault": fault or "none", "before": survivors(stack.client, repo), "cfg": cfg}

    def inject(stage):
        stack.reg.clear(), stack.kube.clear()
        if fault and stage in stages:
            stack.reg.inject(**FAULTS[fault])
            stack.kube.inject(**FAULTS[fault])

    counts = stack.faults()
    for stage in ("snapshot", "plan", "sweep"):
        inject(stage)
        if stage == "snapshot":
            row["snapshot"] = take_snapshot(cfg)
        elif stage == "plan":
            row["plan"] = make_plan(cfg, row["snapshot"])
        else:
            try:
                row["report"] = sweep_flow(config=cfg, plan=row["plan"], approve=True)
            except RegsweepError as e:
                row["error"] = e
        now = stack.faults()
        row[f"{stage}_faults"] = (now[0] - counts[0], now[1] - counts[1])
        counts = now
    stack.reg.clear(), stack.kube.clear()
    store = Store(cfg.store)
    row["meta"] = store.snapshots.meta(row["snapshot"])
    row["rows"] = {(r["tag"], r["digest"]): r["action"] for r in store.plans.table(row["plan"]).to_pylist()}
    row["after"] = survivors(stack.client, repo)
    RESULTS.append(row)
    return row


@pytest.fixture(scope="module")
def baseline(stack):
    row = run(stack, "baseline", None, set())
    assert "error" not in row, row.get("error")
    # The fault-free run: a, c and the index m (with its platforms) go; b (in use) and f (fresh) stay.
    assert set(row["after"]) == {"b", "f"}
    assert row["report"]["deleted"] == 5 and row["report"]["failed"] == 0
    return row


def same_as_baseline(row: dict, baseline: dict) -> None:
    assert "error" not in row, f"{row['fault']}: {row['error']}"
    assert row["rows"] == baseline["rows"]            # the same plan, row for row
    assert row["after"] == baseline["after"]          # the same survivors, digest for digest
    assert row["report"]["failed"] == 0


@pytest.mark.parametrize("fault", sorted(RETRIED))
def test_intermittent_faults_end_exactly_as_a_fault_free_run(stack, baseline, fault):
    row = run(stack, fault, fault, {"snapshot", "plan", "sweep"})
    same_as_baseline(row, baseline)
    reg_faults, kube_faults = row["snapshot_faults"]
    assert reg_faults > 0 and kube_faults > 0, row          # the proxy did fault this run
    assert sum(row["sweep_faults"]) > 0, row
    assert row["plan_faults"] == (0, 0)                       # a plan reads the store only
    sources = row["meta"]["sources"]
    assert row["meta"]["complete"] and sources["registry"]["status"] == sources["kubernetes"]["status"] == "ok"
    # Every faulted request was retried once, logged and counted (a slow answer may time out twice
    # on a loaded machine, so there the count is a lower bound).
    for source, faults in (("registry", reg_faults), ("kubernetes", kube_faults)):
        retries = sources[source]["retries"]
        assert (retries["count"] >= faults) if fault == "slow" else (retries["count"] == faults), (source, retries)
        assert retries["messages"] and all("trying again" in m or "retrying in" in m for m in retries["messages"])
    assert row["report"]["retries"]["count"] >= 1


def test_500s_at_the_snapshot_fail_closed(stack, baseline):
    """A 500 is not retried: the snapshot is published incomplete, its plan deletes nothing, the sweep refuses."""
    row = run(stack, "500-snapshot", "500", {"snapshot", "plan", "sweep"})
    assert row["snapshot_faults"][0] > 0 and row["snapshot_faults"][1] > 0
    assert not row["meta"]["complete"]
    for source in ("registry", "kubernetes"):
        st = row["meta"]["sources"][source]
        assert st["status"] == "failed" and "500" in st["error"] and "\n" not in st["error"]
    plan = Store(row["cfg"].store).plans.meta(row["plan"])
    assert plan["complete"] is False and plan["delete"] == 0 and "delete" not in row["rows"].values()
    assert isinstance(row["error"], PlanRefused) and "incomplete snapshot" in str(row["error"])
    assert "\n" not in str(row["error"])
    assert row["after"] == row["before"]                     # nothing deleted


def test_500s_at_the_sweep_delete_nothing(stack, baseline):
    """Snapshot and plan fault-free; the sweep's re-checks meet 500s: it fails closed before any DELETE."""
    row = run(stack, "500-sweep", "500", {"sweep"})
    assert row["rows"] == baseline["rows"] and row["snapshot_faults"] == (0, 0)
    assert sum(row["sweep_faults"]) > 0
    assert isinstance(row["error"], SweepFailed) and "nothing was deleted" in str(row["error"])
    assert "\n" not in str(row["error"])
    assert row["after"] == row["before"]
