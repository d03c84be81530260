"""The snapshot's registry scan fanned out on Dask (`runner.kind: dask`): repository-batch tasks on
a real distributed.LocalCluster of worker processes, through Prefect's DaskTaskRunner, against the
real registry; part files in the staging area, published as one snapshot, locally and on S3
(moto's server). The tables must equal the single-process scan's row by row, and so must the plan."""

from __future__ import annotations

import pytest

from tasks.oci import manifest as oci
from tasks.config.models import parse_config
from tasks.plan.make import make_plan
from tasks.store.schemas import SOURCE_TABLES
from tasks.store.store import Store
from testbed import push_artifact, push_image, push_index, push_repositories
from tests.support.configs import config
from tests.support.s3 import s3_store  # noqa: F401 (fixtures)

SHA = "^sha-(?P<commit>[0-9a-f]{7,40})$"


@pytest.fixture(scope="module")
def scale_repos(registry, request):
    """Six repositories of uneven size (one far larger), an index with platforms and a signature."""
    base = f"scale{abs(hash(request.node.nodeid)) % 10**6}"
    with registry.client() as c:
        sizes = [30, 1, 4, 7, 2]
        push_repositories(c, {f"{base}/r{i}": [f"sha-{i:02d}{j:05x}" for j in range(n)] for i, n in enumerate(sizes)},
                          labels=lambda t: {oci.ANN_REVISION: t[4:]})
        kids = [(push_image(c, f"{base}/multi", None, config={"architecture": a}), {"os": "linux", "architecture": a})
                for a in ("amd64", "arm64")]
        index = push_index(c, f"{base}/multi", "v1", kids)
        push_artifact(c, f"{base}/multi", subject=index, artifact_type="application/vnd.dev.sig")
    return base


def configs(registry, base, store):
    doc = config(store=store, url=registry.url, repositories=[f"{base}/*"], registry={"concurrency": 4},
                 link={"tagPatterns": [SHA]}, helm={"enabled": False},
                 cleanup={"disableGitHistoryBasedPolicy": True, "disableKubernetesBasedPolicy": True})
    dask = config(doc, runner={"kind": "dask", "dask": {"workers": 2, "batchRepositories": 2}})
    return parse_config(doc), parse_config(dask)


def same_tables(single_store: str, sid_single: str, dask_store: str, sid_dask: str) -> None:
    a, b = Store(single_store), Store(dask_store)
    for name in SOURCE_TABLES["registry"]:
        ta, tb = a.snapshots.table(sid_single, name), b.snapshots.table(sid_dask, name)
        assert tb.schema.equals(ta.schema), name
        assert tb.to_pylist() == ta.to_pylist(), name        # row by row, in order
    # blobs included: every manifest's body, config and layers (the repositories hold an index and a signature)
    kinds = set(a.snapshots.table(sid_single, "blobs").column("kind").to_pylist())
    assert kinds == {"manifest", "config", "layer"}


def test_dask_fan_out_writes_part_files_with_the_single_scans_rows(prefect_harness, registry, scale_repos, tmp_path):
    from flows.snapshot import snapshot_flow

    single, dask = (configs(registry, scale_repos, str(tmp_path / "single"))[0],
                    configs(registry, scale_repos, str(tmp_path / "dask"))[1])
    sid_single = snapshot_flow(config=single, sources=["registry"])
    sid_dask = snapshot_flow(config=dask, sources=["registry"])
    same_tables(single.store, sid_single, dask.store, sid_dask)

    store = Store(dask.store)
    parts = store.table_parts(store.path("snapshots", sid_dask, "tags.parquet"))
    assert len(parts) == 3                                  # 6 repositories in batches of 2
    meta, single_meta = store.snapshots.meta(sid_dask), Store(single.store).snapshots.meta(sid_single)
    assert meta["complete"] and meta["sources"]["registry"]["tables"] == single_meta["sources"]["registry"]["tables"]
    assert meta["registry_capabilities"]["repository"] == single_meta["registry_capabilities"]["repository"]
    assert not any(".staging" in p for p in store.fs.ls(store.path("snapshots")))
    # The batches' cache parts are merged into the one cache: a rescan reads no manifest again.
    assert store.caches.read("registry-blobs").num_rows == Store(single.store).caches.read("registry-blobs").num_rows
    assert not store.fs.exists(store.path("cache", f".parts-{sid_dask}"))

    # The plan reads the part files as one dataset and decides exactly as on the single scan.
    plan_single, plan_dask = make_plan(single, sid_single), make_plan(dask, sid_dask)
    rows = lambda cfg, p: Store(cfg.store).plans.table(p.plan_id).to_pylist()  # noqa: E731
    assert rows(dask, plan_dask) == rows(single, plan_single)
    assert plan_dask.meta["delete"] == plan_single.meta["delete"]


def test_dask_fan_out_into_an_s3_store_gives_the_single_scans_tables_and_plan(prefect_harness, registry, scale_repos,
                                                                            tmp_path, s3_store):
    from flows.snapshot import snapshot_flow

    single, dask = (configs(registry, scale_repos, str(tmp_path / "single"))[0],
                    configs(registry, scale_repos, s3_store)[1])
    sid_single = snapshot_flow(config=single, sources=["registry"])
    sid_dask = snapshot_flow(config=dask, sources=["registry"])
    same_tables(single.store, sid_single, dask.store, sid_dask)
    store = Store(dask.store)
    assert len(store.table_parts(store.path("snapshots", sid_dask, "manifests.parquet"))) == 3
    assert Store(dask.store).snapshots.list() == [sid_dask]
    plan_single, plan_dask = make_plan(single, sid_single), make_plan(dask, sid_dask)
    assert (Store(dask.store).plans.table(plan_dask.plan_id).to_pylist()
            == Store(single.store).plans.table(plan_single.plan_id).to_pylist())


def test_a_failed_batch_fails_the_source_and_leaves_no_registry_table(prefect_harness, registry, scale_repos, tmp_path):
    from flows.snapshot import snapshot_flow
    from tasks.common.errors import SnapshotIncomplete
    from tests.support.faults import FaultProxy

    with FaultProxy(registry.url) as proxy:
        proxy.inject(500, times=None, path=f"/v2/{scale_repos}/r2/tags/list")   # one batch of three fails
        dask = configs(proxy, scale_repos, str(tmp_path / "dask"))[1]
        with pytest.raises(SnapshotIncomplete):
            snapshot_flow(config=dask, sources=["registry"])
    store = Store(dask.store)
    (sid,) = store.snapshots.list()
    reg = store.snapshots.meta(sid)["sources"]["registry"]
    assert reg["status"] == "failed" and "500" in reg["error"]
    for name in SOURCE_TABLES["registry"]:
        assert store.snapshots.table(sid, name) is None, name   # not three batches' worth of rows
    assert store.caches.read("registry-blobs") is None          # no partial cache either
