"""History benchmark: the growth report and a what-if over 365 daily snapshots of 100k tags each.

    .venv/bin/python benchmarks/bench_history.py [--dir DIR] [--days 365] [--tags 100000]

Generates (once, cached in DIR; generation is not measured) a year of daily snapshots written
directly as Parquet through the Store, with continuity: images are pushed at 500 a day into 200
repositories and the oldest leave, so each snapshot holds the newest `tags` images (one tag each,
plus a `latest` per repository that moves every day). Every image stores four blobs (BLOBS): its
manifest, its config, one of ten shared base layers (30-80 MB) and its own layer; 90% are linked to
a commit of a linear git history (12 commits a day, ~6,800 in all) with 30 branches and 20 git
tags; 500 workload references (by tag, by digest, some with imageIDs) and 300 Helm rows name
recent images. Digests are random hex.

Each measurement runs in a fresh subprocess (peak RSS of it and of its pool's workers), through
the functions `regsweep history` and `regsweep whatif` call:
  (c) peer      pyarrow reads the same columns of every snapshot (the growth report's; a cold what-if's)
  (b) cold      no caches at all (snapshots taken before this release): tasks.history.growth.growth_report,
                then tasks.history.whatif.whatif with a tighter candidate (git: 5 branches, 1 image each; no
                Kubernetes rule); each makes and caches what it lacks
  (a) steady    the caches the flows write, primed by calling what they call per snapshot (the
                snapshot flow's cache-history-inputs step, the plan flow's tasks.history.whatif.cache_current; their
                cost is reported per snapshot as moved to the flows), then growth and what-if
                `--repeats` times each (median)
Goals: growth <= 10 s, what-if <= 60 s, <= 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAY0 = datetime(2025, 11, 1, 6, 0, tzinfo=timezone.utc)
REGISTRY = "https://registry.example.com"
HOST = "registry.example.com"
PER_DAY, REPOS, COMMITS_PER_DAY, BASES = 500, 200, 12, 10
VERSION = 1


class World:
    """Every image, blob and commit of the year, as arrays; a snapshot is a window of them."""

    def __init__(self, days: int, tags: int, seed: int = 7):
        import numpy as np

        rng = np.random.default_rng(seed)
        self.tags, self.days = tags, days
        n = tags + days * PER_DAY
        self.back = tags // PER_DAY                      # days of images before day 0
        hexes = lambda k: _hexes(rng, k)  # noqa: E731
        self.digest = "sha256:" + hexes(n)
        self.config = "sha256:" + hexes(n)
        self.layer = "sha256:" + hexes(n)
        self.base = "sha256:" + hexes(BASES)
        self.base_size = rng.integers(30_000_000, 80_000_000, BASES)
        self.img_base = rng.integers(0, BASES, n)
        self.layer_size = rng.integers(1_000_000, 50_000_000, n)
        self.man_size = rng.integers(1_000, 2_000, n)
        self.cfg_size = rng.integers(3_000, 9_000, n)
        self.repo = np.array([f"team{i % 20}/app{i:03d}" for i in range(REPOS)], dtype=object)[rng.integers(0, REPOS, n)]
        self.t0 = int(DAY0.timestamp())
        self.created = self.t0 + ((np.arange(n) / PER_DAY - self.back) * 86400).astype(np.int64)
        n_commit = (days + self.back) * COMMITS_PER_DAY
        self.commit = _hexes(rng, n_commit, 40)
        self.commit_time = self.t0 + ((np.arange(n_commit) / COMMITS_PER_DAY - self.back) * 86400).astype(np.int64)
        self.img_commit = np.minimum(np.arange(n) * COMMITS_PER_DAY // PER_DAY, n_commit - 1)
        self.linked = rng.random(n) < 0.9
        self.rng = rng

    def snapshot(self, day: int) -> tuple[datetime, dict]:
        import numpy as np
        import pandas as pd

        now = DAY0 + timedelta(days=day)
        now_s = int(now.timestamp())
        lo, hi = day * PER_DAY, day * PER_DAY + self.tags
        idx = np.arange(lo, hi)
        rng = np.random.default_rng(day)
        repo, dig = self.repo[idx], self.digest[idx]
        tags = pd.DataFrame({"repository": repo, "tag": "b" + pd.Series(idx).astype(str).to_numpy(dtype=object),
                             "digest": dig, "gone": False})
        latest = tags.groupby("repository").tail(1).assign(tag="latest")
        tags = pd.concat([tags, latest], ignore_index=True)
        ts = lambda a: pd.to_datetime(a, unit="s", utc=True)  # noqa: E731
        size = self.man_size[idx] + self.cfg_size[idx] + self.base_size[self.img_base[idx]] + self.layer_size[idx]
        manifests = pd.DataFrame({"repository": repo, "digest": dig, "media_type": "application/vnd.oci.image.manifest.v1+json",
                                  "kind": "image", "artifact_type": None, "size": size, "created": ts(self.created[idx]),
                                  "revision": np.where(self.linked[idx], self.commit[self.img_commit[idx]], None),
                                  "subject": None, "pushed": pd.NaT, "last_pulled": pd.NaT, "problem": None})
        lx = idx[self.linked[idx]]
        links = pd.DataFrame({"repository": self.repo[lx], "digest": self.digest[lx],
                              "commit": self.commit[self.img_commit[lx]], "source": "annotation"})
        blobs = pd.DataFrame({"repository": np.tile(repo, 4), "digest": np.tile(dig, 4),
                              "blob": np.concatenate([dig, self.config[idx], self.base[self.img_base[idx]], self.layer[idx]]),
                              "kind": np.repeat(np.array(["manifest", "config", "layer", "layer"], dtype=object), len(idx)),
                              "size": np.concatenate([self.man_size[idx], self.cfg_size[idx],
                                                      self.base_size[self.img_base[idx]], self.layer_size[idx]])})
        # workloads and Helm name recent images (the last 3,000 pushed)
        pick = rng.integers(hi - 3000, hi, 500)
        by_digest = rng.random(500) < 0.3
        image = np.where(by_digest, HOST + "/" + self.repo[pick] + "@" + self.digest[pick],
                         HOST + "/" + self.repo[pick] + ":b" + pd.Series(pick).astype(str).to_numpy(dtype=object))
        workloads = pd.DataFrame({"context": "prod", "namespace": "default", "kind": "Deployment",
                                  "name": "w" + pd.Series(np.arange(500)).astype(str).to_numpy(dtype=object),
                                  "container": "app", "container_type": "containers", "image": image,
                                  "image_id": np.where(rng.random(500) < 0.5, "docker-pullable://" + HOST + "/"
                                                       + self.repo[pick] + "@" + self.digest[pick], None),
                                  "finished": False})
        hp = rng.integers(hi - 6000, hi, 300)
        helm = pd.DataFrame({"context": "prod", "namespace": "default",
                             "release": "r" + pd.Series(np.arange(300) // 10).astype(str).to_numpy(dtype=object),
                             "revision": (np.arange(300) % 10 + 1).astype("int32"), "status": "superseded",
                             "chart": "app-1.0.0", "app_version": "1.0", "last_deployed": pd.Timestamp(now),
                             "driver": "secret", "image": HOST + "/" + self.repo[hp] + ":b"
                             + pd.Series(hp).astype(str).to_numpy(dtype=object)})
        c_hi = int(np.searchsorted(self.commit_time, now_s, side="right"))
        commits = pd.DataFrame({"commit": self.commit[:c_hi], "committed": ts(self.commit_time[:c_hi]),
                                "parents": [[]] + [[c] for c in self.commit[:c_hi - 1]]})
        heads = [c_hi - 1 - 5 * k for k in range(30)]
        gtags = np.linspace(0, c_hi - 1, 20).astype(int)
        refs = pd.DataFrame({"name": ["main", *[f"feature/f{k}" for k in range(1, 30)], *[f"v{k}.0.0" for k in range(20)]],
                             "kind": ["branch"] * 30 + ["tag"] * 20, "commit": self.commit[np.r_[heads, gtags]],
                             "date": ts(self.commit_time[np.r_[heads, gtags]]), "annotated": False})
        return now, {"tags": tags, "manifests": manifests, "children": pd.DataFrame(columns=["repository", "index_digest",
                                                                                            "child_digest", "platform"]),
                     "links": links, "blobs": blobs, "workloads": workloads, "helm": helm,
                     "git_refs": refs, "git_commits": commits}


def _hexes(rng, n: int, width: int = 64):
    import numpy as np

    raw = rng.integers(0, 256, size=n * width // 2, dtype=np.uint8).tobytes().hex()
    return np.array([raw[i * width:(i + 1) * width] for i in range(n)], dtype=object)


_world: World | None = None


def _write_days(store_url: str, days: int, tags: int, which: list[int]) -> None:
    global _world
    from tasks.store.schemas import SOURCE_TABLES
    from tasks.snapshot.take import SourceStatus
    from tasks.store.store import Store, new_id

    _world = _world or World(days, tags)
    store = Store(store_url)
    for day in which:
        now, tables = _world.snapshot(day)
        sid = new_id(now)
        staging = store.snapshots.staging_dir(sid)
        statuses = {}
        for source, schemas in SOURCE_TABLES.items():
            counts = store.snapshots.write_source_tables(staging, {k: tables[k] for k in schemas}, schemas)
            statuses[source] = SourceStatus("ok", rows=counts[next(iter(schemas))], tables=counts).to_json()
        store.snapshots.publish(sid, {"created_at": now.isoformat(), "complete": True, "registry": REGISTRY,
                                     "sources": statuses})


def generate(store_dir: Path, days: int, tags: int) -> None:
    shutil.rmtree(store_dir, ignore_errors=True)
    store_dir.mkdir(parents=True)
    chunks = [list(range(k, days, 2)) for k in range(2)]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_days, [str(store_dir)] * 2, [days] * 2, [tags] * 2, chunks))


def config(store_url: str):
    from tasks.config.models import parse_config

    return parse_config({"store": store_url, "registry": {"url": REGISTRY}, "git": {"path": "/unused"},
                         "helm": {"enabled": True}, "cleanup": {"keepImagesBuiltWithinLastNHours": 2}})


CANDIDATE = {"keepPolicies": [{"references": {"branch": "/.*/", "limit": {"last": 5}}, "imagesPerReference": {"last": 1}}],
             "keepImagesBuiltWithinLastNHours": 2, "disableKubernetesBasedPolicy": True}


def _prime_chunk(store_url: str, sids: list[str]) -> tuple[float, float]:
    """What the flows do per snapshot, for these snapshots in order: the snapshot flow's
    `cache-history-inputs` step (the summary, the diff with the previous snapshot and the
    FootprintIndex) and the plan flow's `cache_whatif_entry` task (here `cache_current`). Returns the
    seconds spent in each."""
    from tasks.snapshot.summary import cache_history_inputs
    from tasks.store.store import Store
    from tasks.history.whatif import cache_current

    store, cfg = Store(store_url), config(store_url)
    snap = plan = 0.0
    for sid in sids:
        t = time.perf_counter()
        cache_history_inputs(store, sid)
        t1 = time.perf_counter()
        cache_current(cfg, sid)
        snap, plan = snap + t1 - t, plan + time.perf_counter() - t1
    return snap, plan


def measure(what: str, store_url: str) -> dict:
    """One measurement, in this fresh process."""
    t0 = time.perf_counter()
    extra: dict = {}
    if what in ("peer", "peer-whatif"):
        import pyarrow.dataset as ds

        from tasks.store.schemas import SOURCE_TABLES
        from tasks.store.store import Store
        from tasks.plan.inputs import UNEVALUATED

        store = Store(store_url)
        if what == "peer":       # the columns the growth report reads
            read = (("tags", ["repository", "tag", "digest", "gone"]), ("manifests", ["repository", "digest", "size", "subject"]),
                    ("blobs", ["repository", "digest", "blob", "size"]))
        else:                    # the columns a cold what-if reads: every evaluated table, and BLOBS for the footprint
            read = [(n, [c for c in sch.names if c not in UNEVALUATED.get(n, ())]) for schemas in SOURCE_TABLES.values()
                    for n, sch in schemas.items() if n != "children"] + [("blobs", ["repository", "digest", "blob", "size"])]
        rows = 0
        for table, cols in read:
            paths = [store.path("snapshots", s, f"{table}.parquet") for s in store.snapshots.list()]
            for batch in ds.dataset(paths, format="parquet").to_batches(columns=cols):
                rows += batch.num_rows
        extra["rows"] = rows
    elif what == "prime":
        from tasks.store.store import Store

        sids = Store(store_url).snapshots.list()
        # contiguous halves: each snapshot's diff reads its predecessor, as the snapshot flow does
        chunks = [sids[:len(sids) // 2], sids[len(sids) // 2:]]
        with ProcessPoolExecutor(2) as pool:
            parts = list(pool.map(_prime_chunk, [store_url] * 2, chunks))
        extra = {"snapshot_flow_ms": round(1000 * sum(p[0] for p in parts) / len(sids)),
                 "plan_flow_ms": round(1000 * sum(p[1] for p in parts) / len(sids))}
    elif what == "growth":
        # what `regsweep history` calls (flows/history.py read_growth)
        from tasks.history.growth import growth_report
        from tasks.store.store import Store

        g = growth_report(Store(store_url))
        extra = {"snapshots": len(g.snapshots), "tags_last": int(g.snapshots["tags"].iloc[-1]),
                 "moved": g.totals["moved"], "unique_last": g.totals["unique_bytes"]}
    elif what == "whatif":
        # what `regsweep whatif` calls (flows/history.py replay_candidate)
        import hashlib

        from tasks.config.policy import CleanupPolicy
        from tasks.history.whatif import whatif

        r = whatif(config(store_url), CleanupPolicy.model_validate(CANDIDATE))
        extra = {"snapshots": len(r.snapshots), "regrets": len(r.regrets),
                 "current_delete_last": r.snapshots[-1].current.delete,
                 "candidate_delete_last": r.snapshots[-1].candidate.delete,
                 # the same JSON whatever was cached
                 "json_sha": hashlib.sha256(json.dumps(r.to_json(), sort_keys=True, default=str).encode()).hexdigest()[:12]}
    wall = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"what": what, "wall": wall, "rss": own, "worker_rss": kids, **extra}


def _run(what: str, store_dir: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", what, str(store_dir)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _clear(store_dir: Path, *prefixes: str) -> None:
    for prefix in prefixes:
        for p in (store_dir / "cache").glob(f"{prefix}*"):
            p.unlink()


CACHES = ("history-", "whatif-", "footprint-")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "regsweep-bench-history"))
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--tags", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each steady-state measurement (median shown)")
    ap.add_argument("--no-cold", action="store_true", help="skip the fully cold runs (minutes)")
    ap.add_argument("--measure", nargs=2, metavar=("WHAT", "STORE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    store_dir = Path(args.dir) / f"d{args.days}-t{args.tags}"
    stamp = Path(args.dir) / f"d{args.days}-t{args.tags}.json"
    want = {"days": args.days, "tags": args.tags, "version": VERSION}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        t = time.perf_counter()
        generate(store_dir, args.days, args.tags)
        stamp.write_text(json.dumps(want))
        print(f"generated {args.days} snapshots of {args.tags:,} tags in {time.perf_counter() - t:.0f}s at {store_dir}",
              flush=True)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)", flush=True)
    gib = 2 ** 30
    show = lambda r, label: print(f"{label:<22} {r['wall']:7.1f} s  peak RSS {r['rss'] / gib:5.2f} GiB"  # noqa: E731
                                  f" (workers {r['worker_rss'] / gib:4.2f} GiB)  "
                                  + "  ".join(f"{k}={v}" for k, v in r.items() if k not in ("what", "wall", "rss", "worker_rss")),
                                  flush=True)
    median = lambda rs: sorted(rs, key=lambda r: r["wall"])[len(rs) // 2]  # noqa: E731
    results = {}
    print("(c) peer: pyarrow reading the same columns of every snapshot", flush=True)
    results["peer"] = _run("peer", store_dir)
    show(results["peer"], "peer read (growth)")
    if not args.no_cold:
        results["peer-whatif"] = _run("peer-whatif", store_dir)
        show(results["peer-whatif"], "peer read (what-if)")
        print("(b) fully cold: no caches (snapshots taken before this release)", flush=True)
        _clear(store_dir, *CACHES)
        results["growth cold"] = _run("growth", store_dir)
        show(results["growth cold"], "growth cold")
        _clear(store_dir, *CACHES)
        results["whatif cold"] = _run("whatif", store_dir)
        show(results["whatif cold"], "what-if cold")
    print("(a) steady state: caches written as the snapshot and plan flows write them", flush=True)
    _clear(store_dir, *CACHES)
    prime = _run("prime", store_dir)
    show(prime, "priming (flows' share)")
    print(f"moved to the snapshot/plan flow: {prime['snapshot_flow_ms'] + prime['plan_flow_ms']} ms per snapshot "
          f"(snapshot flow {prime['snapshot_flow_ms']} ms: summary, diff, FootprintIndex; plan flow "
          f"{prime['plan_flow_ms']} ms: the current policy's decide-only result)", flush=True)
    for what, label in (("growth", "growth steady"), ("whatif", "what-if steady")):
        runs = []
        for k in range(args.repeats):
            runs.append(_run(what, store_dir))
            show(runs[-1], f"{label} #{k + 1}")
        results[label] = median(runs)
    print()
    for label, goal in (("growth steady", 10), ("what-if steady", 60), ("growth cold", 10), ("whatif cold", 60)):
        r = results.get(label)
        if r is None:
            continue
        mem = max(r["rss"], r["worker_rss"])
        ok = r["wall"] <= goal and mem <= 4 * gib
        print(f"{label} (median of {args.repeats if 'steady' in label else 1}): goal <= {goal} s and <= 4 GB: "
              f"{'met' if ok else 'MISSED'} ({r['wall']:.1f} s, {mem / gib:.2f} GiB)"
              + ("" if "steady" in label else "  [cold: reported, not judged]"))
    if "whatif cold" in results:
        same = results["whatif cold"]["json_sha"] == results["what-if steady"]["json_sha"]
        print(f"what-if JSON identical cold and steady: {same}")


if __name__ == "__main__":
    main()
