"""Sweep benchmark: regsweep's deletion rate against the registry's own DELETE rate, same run.

    .venv/bin/python benchmarks/bench_sweep.py [--manifests 2000] [--runs 3] [--concurrency 8]

A local Distribution registry (delete enabled) is seeded twice with identical sets of images:
`bench/sweep-*` is snapshotted by the real registry extractor, every tag planned `delete`, and
swept by running the sweep flow `flows.sweep.sweep_flow` as the CLI does (approval up front;
the flow run, lock, plan checks, journal with fsync, registry re-check with a HEAD per planned
tag, all included); `bench/raw-*` is deleted with bare async httpx DELETEs at the same
concurrency, the fastest a client could go. Between runs the manifests are PUT back (their
blobs are still there: no garbage collection runs), and the plan is republished under a new id
so the journal starts empty. Prints the median rates and their ratio.

The flow runs against $PREFECT_API_URL when set, else a temporary Prefect server started for
the benchmark (not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Before Prefect is first imported: no telemetry on a closed network, no run logs in the figures.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "ERROR")

import httpx  # noqa: E402
import pyarrow as pa  # noqa: E402

from tasks.config.models import parse_config  # noqa: E402
from testbed import LocalRegistry, push_raw_manifest, push_tags  # noqa: E402
from tasks.store.schemas import PLAN  # noqa: E402
from tasks.snapshot.take import run_source, snapshot_meta  # noqa: E402
from tasks.snapshot.take import SourceStatus
from tasks.store.store import Store, new_id
from tasks.common.units import utcnow  # noqa: E402

OLD = datetime(2024, 1, 1, tzinfo=timezone.utc)
REPOS = 4


def seed(client: httpx.Client, prefix: str, n: int) -> dict[str, dict]:
    """n distinct images over REPOS repositories; returns repo -> {tag: PushedManifest}."""
    out = {}
    per = n // REPOS
    for r in range(REPOS):
        repo = f"bench/{prefix}-{r}"
        out[repo] = push_tags(client, repo, [f"v{i:05d}" for i in range(per)], created=OLD, workers=8)
    return out


def repush(client: httpx.Client, pushed: dict[str, dict]) -> None:
    items = [(repo, tag, m) for repo, tags in pushed.items() for tag, m in tags.items()]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda x: push_raw_manifest(client, x[0], x[1], x[2].body, x[2].media_type), items))


def snapshot_and_plan(cfg, store: Store) -> tuple[str, pa.Table, dict]:
    """A real registry snapshot and a plan deleting every tag in it."""
    now = utcnow()
    sid = new_id(now)
    status = run_source("registry", cfg, store.snapshots.staging_dir(sid), now)
    if status.status != "ok":
        raise SystemExit(f"snapshot failed: {status.error}")
    skipped = {s: SourceStatus("skipped") for s in ("kubernetes", "helm", "git")}
    store.snapshots.publish(sid, snapshot_meta(now, cfg, {"registry": status, **skipped}))
    tags = store.snapshots.table(sid, "tags").to_pandas()
    manifests = store.snapshots.table(sid, "manifests").to_pandas().set_index(["repository", "digest"])
    rows = [{"repository": t.repository, "tag": t.tag, "digest": t.digest,
             "kind": manifests.at[(t.repository, t.digest), "kind"], "action": "delete", "reasons": ["benchmark"],
             "size": int(manifests.at[(t.repository, t.digest), "size"]), "created": None}
            for t in tags.itertuples()]
    meta = {"snapshot_id": sid, "created_at": now.isoformat(), "complete": True, "registry": cfg.registry.url,
            "policy": cfg.cleanup.digest()}
    return sid, pa.Table.from_pylist(rows, schema=PLAN), meta


async def raw_delete(url: str, targets: list[tuple[str, str]], concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def one(repo: str, digest: str) -> None:
            async with sem:
                r = await client.delete(f"/v2/{repo}/manifests/{digest}")
            if r.status_code != 202:
                raise SystemExit(f"raw DELETE {repo}@{digest}: HTTP {r.status_code}")
        await asyncio.gather(*(one(repo, d) for repo, d in targets))


def prefect_server():
    """The Prefect server flows report to: $PREFECT_API_URL, or a temporary one for this run."""
    if os.environ.get("PREFECT_API_URL"):
        return contextlib.nullcontext()
    from prefect.testing.utilities import prefect_test_harness

    return prefect_test_harness(server_startup_timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifests", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    n = args.manifests - args.manifests % REPOS

    from flows.sweep import sweep_flow

    with tempfile.TemporaryDirectory(prefix="regsweep-bench-sweep-") as tmp, prefect_server(), \
            LocalRegistry(Path(tmp) / "registry", log_level="error") as reg, reg.client() as client:
        t0 = time.perf_counter()
        sweep_set, raw_set = seed(client, "sweep", n), seed(client, "raw", n)
        print(f"seeded 2 x {n} images in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        cfg = parse_config({
            "store": str(Path(tmp) / "store"),
            "registry": {"url": reg.url, "repositories": ["bench/sweep-*"], "concurrency": 16},
            "cleanup": {"disableKubernetesBasedPolicy": True, "disableGitHistoryBasedPolicy": True},
            "helm": {"enabled": False},
            "sweep": {"concurrency": args.concurrency, "maxDeletions": n},
        })
        store = Store(cfg.store)
        sid, plan, meta = snapshot_and_plan(cfg, store)
        raw_targets = [(repo, str(m)) for repo, tags in raw_set.items() for m in tags.values()]

        sweep_rates, raw_rates = [], []
        for run in range(args.runs):
            if run:
                repush(client, sweep_set)
                repush(client, raw_set)
            plan_id = new_id()
            store.plans.publish(plan_id, plan, {**meta, "created_at": utcnow().isoformat()})

            def do_sweep():
                t = time.perf_counter()
                report = sweep_flow(config=cfg, plan=plan_id, approve=True, max_deletions=n)
                dt = time.perf_counter() - t
                if report["deleted"] != n or report["failed"]:
                    raise SystemExit(f"sweep deleted {report['deleted']}/{n}, failed {report['failed']}: "
                                     f"{report['summary']}")
                sweep_rates.append(n / dt)

            def do_raw():
                t = time.perf_counter()
                asyncio.run(raw_delete(reg.url, raw_targets, args.concurrency))
                raw_rates.append(n / (time.perf_counter() - t))

            # Alternate which goes first, so neither always meets a warmer (or busier) registry.
            for step in ((do_sweep, do_raw) if run % 2 == 0 else (do_raw, do_sweep)):
                step()
            print(f"run {run + 1}: regsweep {sweep_rates[-1]:.0f}/s, raw DELETE {raw_rates[-1]:.0f}/s",
                  file=sys.stderr)

    s, r = statistics.median(sweep_rates), statistics.median(raw_rates)
    print(f"deleting {n} manifests from a local Distribution 2.8, concurrency {args.concurrency}, "
          f"median of {args.runs} runs:")
    print(f"  regsweep sweep flow (journal, re-check HEAD, lock): {s:8.0f} deletions/s  ({n / s:.2f}s)")
    print(f"  raw async httpx DELETE                            : {r:8.0f} deletions/s  ({n / r:.2f}s)")
    print(f"  ratio regsweep / raw: {s / r:.2f}")


if __name__ == "__main__":
    main()
