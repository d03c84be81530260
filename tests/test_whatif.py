"""Growth and what-if over a sequence of real snapshots of a real registry that changes between them.

Four snapshots at controlled times (the real extractors, `take_snapshot(cfg, now)`): pushes, a
re-tag, a workload that comes and goes in the loopback cluster, and a real sweep's deletions.
Sizes are checked against the blobs the test pushed, a shared base layer included.
"""

from __future__ import annotations

import json
import os
import struct
from datetime import timedelta

import pytest
import yaml

from tasks.config.models import load_config
from tasks.history.growth import growth_report
from tasks.store.store import Store
from tasks.common.units import utcnow
from tasks.history.whatif import load_policy, whatif
from testbed import push_image
from testbed.kube import pod
from testbed.kubeapi import write_kubeconfig
from tests.support.configs import SWEEP, config
from tests.support.sweeps import OLD, make_plan, take_snapshot
from tests.support.kube import kube_env  # noqa: F401 (fixtures)
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)

BASE = os.urandom(20_000)   # the base layer every image shares


def _blobs(m) -> dict[str, int]:
    """digest -> size of every blob a pushed manifest stores: its body, config and layers."""
    doc = json.loads(m.body)
    return {str(m): len(m.body), doc["config"]["digest"]: doc["config"]["size"],
            **{layer["digest"]: layer["size"] for layer in doc["layers"]}}


def _unique(*images) -> int:
    seen: dict[str, int] = {}
    for m in images:
        seen.update(_blobs(m))
    return sum(seen.values())


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def history(registry, registry_client, unique_repo, tmp_path, kube_env, sweep):
    """The four snapshots; returns (cfg, ids, images, the pod's in-use text)."""
    c, repo = registry_client, unique_repo
    t0 = utcnow() - timedelta(days=2)
    s1, s2, s3 = t0, t0 + timedelta(days=1), utcnow() - timedelta(hours=1)
    push = lambda tag, layer, built: push_image(c, repo, tag, layers=[BASE, layer],  # noqa: E731
                                                config={"created": built, "config": {"Labels": {"l": layer.hex()}}})
    x = push("x", os.urandom(3000), t0 - timedelta(minutes=90))   # fresh for the current policy (72h)
    o1 = push("o1", os.urandom(4000), OLD)
    o2 = push("o2", os.urandom(5000), OLD)
    empty, busy = kube_env.server(), kube_env.server()
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, {"prod": (empty.url, None)})
    path = config(SWEEP, url=registry.url, repositories=[repo], kubeconfig=kubeconfig, sweep={"maxPlanAge": "72h"},
                  write=tmp_path)
    data = yaml.safe_load(path.read_text())
    data["cleanup"]["keepImagesBuiltWithinLastNHours"] = 72
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    ids = [take_snapshot(cfg, s1)]
    # day 2: a new image, o2 re-tagged to another image, and a pod running x
    y = push("y", os.urandom(6000), s1 + timedelta(hours=1))
    o2b = push("o2", os.urandom(7000), OLD)
    busy.add(pod("shop", "web-1", [f"{registry.host}/{repo}:x"]))
    write_kubeconfig(kubeconfig, {"prod": (busy.url, None)})
    ids.append(take_snapshot(cfg, s2))
    # day 3: the pod is gone; the current policy's plan deletes the two old images and a sweep does it
    write_kubeconfig(kubeconfig, {"prod": (empty.url, None)})
    ids.append(take_snapshot(cfg, s3))
    report = sweep(cfg, make_plan(cfg, ids[-1]), approve=True)
    assert report["deleted"] == 2 and report["failed"] == 0
    ids.append(take_snapshot(cfg))
    images = {"x": x, "o1": o1, "o2": o2, "y": y, "o2b": o2b}
    return cfg, ids, images, "in use: prod/shop/Pod/web-1 container c0"


def test_growth_counts_bytes_and_churn_of_real_snapshots(history, tmp_path, run_cli):
    cfg, ids, im, _ = history
    report = growth_report(Store(cfg.store))
    df = report.snapshots
    assert df["snapshot"].tolist() == ids
    assert df["tags"].tolist() == [3, 4, 4, 2]
    assert df["complete"].tolist() == [True] * 4
    expected = [_unique(im["x"], im["o1"], im["o2"]), _unique(im["x"], im["o1"], im["o2b"], im["y"]),
                _unique(im["x"], im["o1"], im["o2b"], im["y"]), _unique(im["x"], im["y"])]
    assert df["unique_bytes"].tolist() == expected
    # image bytes count the shared base layer in every image: more than the unique bytes
    assert df["image_bytes"].tolist()[0] == sum(sum(_blobs(im[k]).values()) for k in ("x", "o1", "o2"))
    assert df["image_bytes"].tolist()[0] - expected[0] == 2 * len(BASE)
    assert df[["added", "removed", "moved"]].iloc[1:].values.tolist() == [[1, 0, 1], [0, 0, 0], [0, 2, 0]]
    assert df["reclaimable_bytes"].isna().tolist() == [True, True, False, True]   # only S3 has a plan
    # the sweep freed exactly the old images' own layers and configs (the base layer stays)
    assert df["reclaimable_bytes"].tolist()[2] == expected[2] - expected[3]
    assert report.basis == "unique"
    assert report.repositories["repository"].tolist() == [cfg.registry.repositories[0]]
    assert report.totals["tags"] == 2 and report.totals["added"] == 1 and report.totals["removed"] == 2

    cfg_path = tmp_path / "regsweep.yaml"
    chart, out = tmp_path / "growth.png", tmp_path / "growth.json"
    r = run_cli("history", "--config", cfg_path, "--chart", chart, "--json", out, "--top", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split()[:3] == ["snapshot", "created_at", "complete"]
    assert "top 1 repositories by growth:" in r.stdout and "projection:" in r.stdout
    data = json.loads(out.read_text())
    assert [s["unique_bytes"] for s in data["snapshots"]] == expected
    w, h = _png_size(chart)
    assert w > 0 and h > 0


def test_whatif_reports_the_image_a_later_snapshot_ran_as_a_regret(history, tmp_path, run_cli):
    cfg, ids, im, in_use = history
    repo = cfg.registry.repositories[0]
    werf = tmp_path / "werf.yaml"
    werf.write_text("project: shop\nconfigVersion: 1\ncleanup:\n  disableKubernetesBasedPolicy: true\n"
                    "  disableGitHistoryBasedPolicy: true\n  keepImagesBuiltWithinLastNHours: 1\n"
                    "  unlinkedImages: delete\n")
    out, chart = tmp_path / "whatif.json", tmp_path / "whatif.png"
    r = run_cli("whatif", "--config", tmp_path / "regsweep.yaml", "--policy", werf, "--json", out, "--chart", chart)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["regrets"] == [{"repository": repo, "tag": "x", "digest": str(im["x"]), "deleted_at": ids[0],
                                "needed_at": ids[1], "why": in_use}]
    assert f"{repo}:x {im['x']} deleted at {ids[0]}, needed at {ids[1]}: {in_use}" in r.stdout
    assert [s["id"] for s in data["snapshots"]] == ids
    # the current policy's figures are the plan's own (decide-only agrees with the full plan path)
    store = Store(cfg.store)
    for s in data["snapshots"]:
        meta = store.plans.meta(make_plan(cfg, s["id"]))
        assert s["current"] == {"delete": meta["delete"], "reclaimable_bytes": meta["bytes_reclaimable"]}
    assert [s["current"]["delete"] for s in data["snapshots"]] == [2, 2, 2, 0]
    assert [s["candidate"]["delete"] for s in data["snapshots"]] == [3, 4, 4, 2]
    assert data["snapshots"][0]["candidate"]["reclaimable_bytes"] == _unique(im["x"], im["o1"], im["o2"])
    w, h = _png_size(chart)
    assert w > 0 and h > 0
    # the current policy replayed against itself regrets nothing (x was kept while in use and fresh)
    same = whatif(cfg, cfg.cleanup)
    assert same.regrets.empty and [s.candidate.delete for s in same.snapshots] == [2, 2, 2, 0]
    assert load_policy(werf).disableKubernetesBasedPolicy is True
    # the history-only rules replay too: with the Kubernetes rule on, x is kept at S2 (running);
    # keepImagesSeenInUseWithin also keeps it at S3 and S4, where the pod is gone but S2 saw it
    # within 48h. At S1 nothing had seen it yet, so that regret stays.
    in_use_rule = load_policy(werf).model_copy(update={"disableKubernetesBasedPolicy": False})
    without = whatif(cfg, in_use_rule)
    seen = whatif(cfg, in_use_rule.model_copy(update={"keepImagesSeenInUseWithin": timedelta(hours=48)}))
    assert [s.candidate.delete for s in without.snapshots] == [3, 3, 4, 2]
    assert [s.candidate.delete for s in seen.snapshots] == [3, 3, 3, 1]
    for r in (without, seen):
        assert r.regrets[["tag", "deleted_at", "needed_at"]].values.tolist() == [["x", ids[0], ids[1]]]


@pytest.mark.parametrize("content, key", [
    (None, "--policy"),
    ("registry: {url: http://r}\n", "--policy"),
    ("cleanup:\n  keepImagesBuiltWithinLastNHour: 3\n", "cleanup.keepImagesBuiltWithinLastNHour"),
    ("cleanup:\n  unlinkedImages: sometimes\n", "cleanup.unlinkedImages"),
    ("cleanup: [1, 2]\n", "cleanup"),
])
def test_whatif_bad_policy_is_one_line_exit_2(tmp_path, run_cli, content, key):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store: {tmp_path / 'store'}\nregistry: {{url: http://127.0.0.1:1}}\n")
    policy = tmp_path / "p.yaml"
    if content is not None:
        policy.write_text(content)
    r = run_cli("whatif", "--config", cfg, "--policy", policy)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"regsweep: error: {key}:"), r.stderr
    assert r.stdout == ""


def test_caches_the_flows_write_give_the_whatif_the_same_answer(history, tmp_path, run_cli):
    """Steady state: the snapshot flow's summary (summary, diff, FootprintIndex) and the plan
    flow's cache of the current policy give a what-if the very JSON it computes with no caches."""
    import shutil

    import numpy as np
    import pyarrow as pa

    from tasks.snapshot.footprint import Footprint, load_index
    from tasks.store.caches import diff_name, footprint_name
    from tasks.snapshot.summary import cache_history_inputs
    from tasks.plan.decision_cache import cache_name, policy_key, read_current

    cfg, ids, im, _ = history
    store = Store(cfg.store)
    candidate = load_policy(_candidate(tmp_path))
    cache = store.path("cache")
    shutil.rmtree(cache, ignore_errors=True)
    cold = whatif(cfg, candidate, workers=1).to_json()

    shutil.rmtree(cache)
    for sid in ids:   # what the snapshot flow does once a snapshot is published
        cache_history_inputs(store, sid)
        r = run_cli("plan", "--config", tmp_path / "regsweep.yaml", "--snapshot", sid)
        assert r.returncode == 0, r.stderr
    key = policy_key(cfg)
    plans = {store.plans.meta(p)["snapshot_id"]: store.plans.meta(p) for p in store.plans.list()}
    for prev, sid in zip([None, *ids], ids):
        assert os.path.exists(store.path("cache", footprint_name(sid) + ".parquet"))
        if prev:
            assert os.path.exists(store.path("cache", diff_name(prev, sid) + ".parquet"))
        # the plan flow's decide-only entry agrees with the full plan it published
        outcome, needed = read_current(store, sid, key)
        assert (outcome.delete, outcome.reclaimable_bytes) == (plans[sid]["delete"], plans[sid]["bytes_reclaimable"])
        # the index frees what the footprint frees, for any set of deleted manifests
        m = store.snapshots.table(sid, "manifests", columns=["repository", "digest"])
        for pick in (np.arange(m.num_rows), np.arange(m.num_rows)[::2], np.arange(0)):
            sel = m.take(pa.array(pick, pa.int64()))
            assert load_index(store, sid).total(sel["repository"].combine_chunks(), sel["digest"].combine_chunks()) == \
                Footprint.load(store, sid).reclaimable(sel["repository"].to_pylist(), sel["digest"].to_pylist()).total
    assert cold["snapshots"][1]["current"] == {"delete": plans[ids[1]]["delete"],
                                               "reclaimable_bytes": plans[ids[1]]["bytes_reclaimable"]}

    written = {sid: os.stat(store.path("cache", cache_name(sid, key) + ".parquet")).st_mtime_ns for sid in ids}
    steady = whatif(cfg, candidate, workers=1).to_json()
    assert steady == cold and len(cold["regrets"]) == 1
    # the current policy was read from the plan flow's entries, not evaluated and written again
    assert {sid: os.stat(store.path("cache", cache_name(sid, key) + ".parquet")).st_mtime_ns for sid in ids} == written


def _candidate(tmp_path):
    werf = tmp_path / "candidate.yaml"
    werf.write_text("cleanup:\n  disableKubernetesBasedPolicy: true\n  disableGitHistoryBasedPolicy: true\n"
                    "  keepImagesBuiltWithinLastNHours: 1\n  unlinkedImages: delete\n")
    return werf
