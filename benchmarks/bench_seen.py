"""The history rules' inputs over a store of many snapshots (tasks/plan/history_rules.py), in one run.

    .venv/bin/python benchmarks/bench_seen.py [--snapshots 2000] [--manifests 5000] [--workloads 500] [--churn 0]

Writes hourly snapshots through the real Store (manifests with a tenth untimed, a few new digests
an hour; workloads, `--churn` of them redeployed an hour, and Helm rows), then times: the first-seen cache built cold over every
snapshot, extended by one new snapshot, and read with nothing new; `keepImagesSeenInUseWithin:
168h` for one plan; and a replay of both keys over the newest 200 snapshots with one
HistoryInputs. Prints seconds per step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta, timezone

import pyarrow as pa

from tasks.config.policy import CleanupPolicy
from tasks.store.schemas import SOURCE_TABLES
from tasks.plan.history_rules import HistoryInputs
from tasks.snapshot.take import SourceStatus
from tasks.store.store import Store, new_id

REGISTRY = "https://registry.example.com"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def snapshot(store: Store, i: int, manifests: int, workloads: int, churn: int = 0) -> str:
    """Snapshot `i` (hour i); `churn` workloads redeployed an hour (0: every one, every hour)."""
    now = T0 + timedelta(hours=i)
    sid = new_id(now)
    staging = store.snapshots.staging_dir(sid)
    first = i * 5   # five new digests an hour, the oldest five leave
    d = [f"sha256:{k:064x}" for k in range(first, first + manifests)]
    repo = [f"team/app{k % 50}" for k in range(first, first + manifests)]
    created = [None if k % 10 == 0 else datetime(2025, 1, 1, tzinfo=timezone.utc) for k in range(first, first + manifests)]
    n = manifests
    tables = {
        "tags": pa.table({"repository": repo, "tag": [f"t{k}" for k in range(n)], "digest": d, "gone": [False] * n}),
        "manifests": pa.table({"repository": repo, "digest": d, "media_type": ["application/vnd.oci.image.manifest.v1+json"] * n,
                               "kind": ["image"] * n, "artifact_type": [None] * n, "size": [1000] * n,
                               "created": pa.array(created, pa.timestamp("us", tz="UTC")), "revision": [None] * n,
                               "subject": [None] * n, "pushed": pa.nulls(n, pa.timestamp("us", tz="UTC")),
                               "last_pulled": pa.nulls(n, pa.timestamp("us", tz="UTC")), "problem": [None] * n}),
    }
    # the registry's other tables (children, links, ...) empty
    tables = {name: tables.get(name, schema.empty_table()) for name, schema in SOURCE_TABLES["registry"].items()}
    store.snapshots.write_source_tables(staging, tables, SOURCE_TABLES["registry"])
    w = workloads
    period = max(w // churn, 1) if churn else 1
    version = [(i + period - k % period) // period for k in range(w)]   # deploys of workload k so far
    image = [k + v * w for k, v in zip(range(w), version)]   # the build workload k runs (an absolute number)
    store.snapshots.write_source_tables(staging, {"workloads": pa.table({
        "context": ["prod"] * w, "namespace": [f"ns{k % 20}" for k in range(w)], "kind": ["Deployment"] * w,
        "name": [f"app{k}" for k in range(w)], "container": ["app"] * w, "container_type": ["containers"] * w,
        "image": [f"registry.example.com/team/app{j % 50}:b{j}" for j in image],
        "image_id": [f"registry.example.com/team/app{j % 50}@sha256:{j:064x}" for j in image],
        "finished": [False] * w})}, SOURCE_TABLES["kubernetes"])
    store.snapshots.write_source_tables(staging, {"helm": pa.table({
        "context": ["prod"] * w, "namespace": ["shop"] * w, "release": [f"r{k}" for k in range(w)],
        "revision": pa.array([i % 7 + 1] * w, pa.int32()), "status": ["deployed"] * w, "chart": ["app"] * w,
        "app_version": ["1"] * w, "last_deployed": pa.array([now] * w, pa.timestamp("us", tz="UTC")),
        "driver": ["secret"] * w, "image": [f"registry.example.com/team/app{k % 50}:b{k}" for k in range(w)]})},
        SOURCE_TABLES["helm"])
    ok = {"registry": SourceStatus("ok"), "kubernetes": SourceStatus("ok"), "helm": SourceStatus("ok")}
    store.snapshots.publish(sid, {"created_at": now.isoformat(), "complete": True, "registry": REGISTRY,
                                 "sources": {k: v.to_json() for k, v in ok.items()}})
    return sid


def timed(label: str, fn):
    t = time.perf_counter()
    out = fn()
    print(f"{label}: {time.perf_counter() - t:.2f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshots", type=int, default=2000)
    ap.add_argument("--manifests", type=int, default=5000)
    ap.add_argument("--workloads", type=int, default=500)
    ap.add_argument("--churn", type=int, default=0, help="workloads redeployed an hour (0: all, every hour)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        ids = timed(f"write {a.snapshots} snapshots", lambda: [snapshot(store, i, a.manifests, a.workloads, a.churn)
                                                                  for i in range(a.snapshots)])
        both = CleanupPolicy.model_validate({"keepImagesSeenInUseWithin": "168h", "firstSeenAsBuildTime": True})
        fs = timed("first seen, cache cold (every snapshot folded)", lambda: HistoryInputs(store).first_seen(ids[-1]))
        print(f"  rows for the newest snapshot: {len(fs)}")
        new = snapshot(store, a.snapshots, a.manifests, a.workloads, a.churn)
        timed("first seen, one new snapshot folded", lambda: HistoryInputs(store).first_seen(new))
        timed("first seen, nothing new", lambda: HistoryInputs(store).first_seen(new))
        seen = timed("seen in use within 168h, one plan", lambda: HistoryInputs(store).seen_in_use(new, timedelta(hours=168)))
        print(f"  sightings: {len(seen)}")
        h = HistoryInputs(store)
        timed("replay: both keys over the newest 200 snapshots, one HistoryInputs",
              lambda: [h.for_snapshot(sid, both) for sid in ids[-200:]])


if __name__ == "__main__":
    main()
