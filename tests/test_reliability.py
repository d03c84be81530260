"""Faults at the sweep's fresh cluster scan, and images whose build facts cannot be read.

A cluster that refuses (403), expires a list mid-way (410), fails (500) or does not answer in
time at the re-check makes the sweep delete nothing. An image whose config blob 404s or whose
manifest will not parse is recorded per source in snapshot.json and kept, its reason in the plan.
"""

from __future__ import annotations

import json

import pytest

from tasks.config.models import load_config
from tasks.common.errors import SweepFailed
from tasks.oci.manifest import OCI_MANIFEST, sha256_digest
from tasks.store.store import Store
from testbed import push_image
from testbed.kube import workload
from tests.support.configs import SWEEP, config
from tests.support.sweeps import journal_events, old, plan_of, status, take_snapshot
from tests.support.faults import ServingProxy
from tests.support.kube import kube_env  # noqa: F401 (fixtures)
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)


def cluster_config(tmp_path, url, repo, kube_env, **kube):
    server = kube_env.server()
    kubeconfig = kube_env.kubeconfig({"prod": (server, None)})
    path = config(SWEEP, url=url, repositories=[repo], kubeconfig=kubeconfig, write=tmp_path)
    text = path.read_text()
    if kube:
        import yaml

        data = yaml.safe_load(text)
        data["kubernetes"].update(kube)
        path.write_text(yaml.safe_dump(data))
    return server, load_config(path)


@pytest.mark.parametrize("fault", ["403", "410-every-page", "500", "timeout"])
def test_cluster_faults_at_the_recheck_delete_nothing(sweep, registry, registry_client, unique_repo, tmp_path,
                                                      kube_env, fault):
    c, repo = registry_client, unique_repo
    doomed = [old(c, repo, t) for t in ("a", "b", "c")]
    server, cfg = cluster_config(tmp_path, registry.url, repo, kube_env, pageSize=1, timeout=1.0)
    server.add(*(workload("Deployment", "shop", f"web-{i}", ["busybox:1"]) for i in range(3)))
    plan = plan_of(cfg)
    # The cluster goes wrong between planning and sweeping.
    {"403": lambda: server.forbid("pods"),
     "410-every-page": lambda: server.expire_continue("deployments", nth=1, times=100),
     "500": lambda: server.fail("replicasets", 500),
     "timeout": lambda: server.slow("statefulsets", 3.0)}[fault]()

    with pytest.raises(SweepFailed) as exc:
        sweep(cfg, plan, approve=True)

    assert str(exc.value).startswith("the fresh cluster scan before deleting failed, so nothing was deleted: kubernetes")
    assert "\n" not in str(exc.value)
    assert all(status(c, repo, d) == 200 for d in doomed)
    assert not any(e["event"] == "started" for e in journal_events(cfg, plan))


def test_a_list_expiring_once_mid_way_restarts_and_still_sees_every_workload(sweep, registry, registry_client,
                                                                            unique_repo, tmp_path, kube_env):
    """The image in use sits on a later page than the 410: the restarted list still protects it."""
    c, repo = registry_client, unique_repo
    used, gone = old(c, repo, "used"), old(c, repo, "gone")
    server, cfg = cluster_config(tmp_path, registry.url, repo, kube_env, pageSize=1)
    server.add(*(workload("Deployment", "shop", f"a-{i}", ["busybox:1"]) for i in range(3)))
    plan = plan_of(cfg)
    server.add(workload("Deployment", "shop", "z-last", [f"{registry.host}/{repo}:used"]))
    server.expire_continue("deployments", nth=2)

    report = sweep(cfg, plan, approve=True)

    assert status(c, repo, used) == 200 and status(c, repo, gone) == 404
    why = {o["digest"]: o["detail"] for o in report["outcomes"]}
    assert "in use by Deployment shop/z-last" in why[used]
    assert sum(1 for q in server.list_requests("deployments") if not q.get("continue")) >= 2   # restarted


def test_a_config_blob_that_404s_is_recorded_and_the_image_kept_as_fresh(registry, registry_client, unique_repo,
                                                                         tmp_path):
    from tasks.plan.make import make_plan

    c, repo = registry_client, unique_repo
    broken = old(c, repo, "no-config")
    gone = old(c, repo, "fine")
    config_digest = json.loads(broken.body)["config"]["digest"]
    assert c.delete(f"/v2/{repo}/blobs/{config_digest}").status_code == 202
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))

    sid = take_snapshot(cfg)

    store = Store(cfg.store)
    warnings = store.snapshots.meta(sid)["sources"]["registry"]["warnings"]
    assert warnings["count"] == 1 and config_digest in warnings["messages"][0] and "404" in warnings["messages"][0]
    rows = {r["digest"]: r for r in store.snapshots.table(sid, "manifests").to_pylist()}
    assert rows[broken]["problem"] == f"config blob {config_digest} is missing (HTTP 404)"
    assert rows[broken]["created"] is None and rows[gone]["problem"] is None
    plan = {r["tag"]: r for r in store.plans.table(make_plan(cfg, sid).plan_id).to_pylist()}
    assert plan["no-config"]["action"] == "keep" and plan["fine"]["action"] == "delete"
    assert (f"build time unknown (config blob {config_digest} is missing (HTTP 404)): counts as fresh, kept"
            in plan["no-config"]["reasons"])


def test_a_manifest_that_will_not_parse_is_recorded_and_kept(registry, registry_client, unique_repo, tmp_path):
    from tasks.plan.make import make_plan

    c, repo = registry_client, unique_repo
    push_image(c, repo, "broken", layers=[b"x"])      # listed by the registry, served broken by the proxy
    old(c, repo, "fine")
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": '
    with ServingProxy(registry.url, {r"/manifests/broken$": (OCI_MANIFEST, body)}) as proxy:
        cfg = load_config(config(SWEEP, url=proxy.url, repositories=[repo], write=tmp_path))
        sid = take_snapshot(cfg)
    store = Store(cfg.store)
    warnings = store.snapshots.meta(sid)["sources"]["registry"]["warnings"]
    assert warnings["count"] == 1 and "malformed" in warnings["messages"][0]
    problem = {r["digest"]: r["problem"] for r in store.snapshots.table(sid, "manifests").to_pylist()}
    assert problem[sha256_digest(body)].startswith(f"malformed {OCI_MANIFEST}")
    plan = {r["tag"]: r for r in store.plans.table(make_plan(cfg, sid).plan_id).to_pylist()}
    assert plan["broken"]["action"] == "keep" and plan["fine"]["action"] == "delete"
    assert plan["broken"]["reasons"] == [f"unreadable manifest ({problem[sha256_digest(body)]}): kept"]
