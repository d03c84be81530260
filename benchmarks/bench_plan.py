"""Plan benchmark: the plan as users run it (read, evaluate in batches, write), time and peak RSS.

    .venv/bin/python benchmarks/bench_plan.py [--dir DIR] [--sizes 100000,1000000] [--runs 3]
                                              [--policy defaults|stress] [--batch-rows N]

Generates (once, cached in DIR; generation is not measured) one snapshot per size into a store,
as Parquet, with the shapes of a busy registry. At 1M tags: 2,000 repositories, 200,000 commits
(a main line, 2,000 branches forked from it, every tenth merged back), 1,000 git tags, 10,000
in-use workload references (by tag, by digest, with pod imageIDs), Helm revisions, 10%
multi-platform indexes, 5% signed images (artifact + `sha256-<hex>` fallback tag), 90% of images
linked to a commit by annotation and by an abbreviated `sha-<commit>` tag. Other sizes scale
every count with the tags. Tables are sorted by repository, as the registry source writes them.

Each measurement runs in a fresh subprocess (so peak RSS is its own):
  plan  `tasks.plan.make.make_plan`: reads the snapshot, evaluates it one batch of repositories at a
        time (tasks/plan/batches.py) and writes the plan to the store (removed again afterwards);
  read  the peer: reading every table of the snapshot into Arrow, what any consumer pays.
Prints medians of RUNS (wall time, and the CPU time of the process: on a shared machine the
steadier figure), the ratio plan / read, time per tag relative to the base size (the
smallest of this run, or `--base`'s figures recorded by an earlier run in DIR), and the issue's
goals: 1M tags ≤ 8 s and ≤ 1.5 GiB peak; 5M ≤ 60 s within 8 GiB; time per tag flat from 100k.

`--policy stress` adds `branch: /.*/` with `imagesPerReference: {last: 2}` to werf's defaults, so
all 2,000 branches are selected and walked.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
REGISTRY = "https://registry.example.com"
VERSION = 3   # 3: tables sorted by repository, as the registry source writes them


def _hexes(rng, n: int, width: int) -> "np.ndarray":
    import numpy as np

    raw = rng.integers(0, 256, size=n * width // 2, dtype=np.uint8).tobytes().hex()
    return np.array([raw[i * width:(i + 1) * width] for i in range(n)], dtype=object)


def generate(store_url: str, tags: int, seed: int = 1) -> str:
    """Write one synthetic snapshot of about `tags` tags; returns its id."""
    import numpy as np
    import pandas as pd

    from tasks.store.schemas import SOURCE_TABLES
    from tasks.snapshot.take import SourceStatus
    from tasks.store.store import Store

    rng = np.random.default_rng(seed)
    scale = tags / 1_000_000
    n_repo = max(4, int(2000 * scale))
    n_commit = max(200, int(200_000 * scale))
    n_branch = max(4, int(2000 * scale))
    n_gtag = max(2, int(1000 * scale))
    n_inuse = max(10, int(10_000 * scale))
    now_s = int(NOW.timestamp())

    # --- git: main line, branches forked from it (every tenth merged back), tags on main
    per_branch = max(1, (n_commit // 2) // n_branch)
    n_main = n_commit - per_branch * n_branch
    shas = _hexes(rng, n_commit, 40)
    span = 365 * 86400
    main_dates = now_s - span + (np.arange(n_main) * (span // n_main))
    dates = np.empty(n_commit, dtype=np.int64)
    dates[:n_main] = main_dates
    parents: list[list[str]] = [[] for _ in range(n_commit)]
    for i in range(1, n_main):
        parents[i] = [shas[i - 1]]
    forks = np.sort(rng.integers(0, n_main - 10, size=n_branch))
    # the newest branches are recent: a few within the last week, as on any busy repository
    forks[-5:] = n_main - 10
    heads = []
    pos = n_main
    for b, f in enumerate(forks):
        prev = f
        for j in range(per_branch):
            parents[pos] = [shas[prev]]
            dates[pos] = main_dates[f] + 10 * (j + 1)
            prev = pos
            pos += 1
        heads.append(prev)
        if b % 10 == 0 and f + 6 < n_main:
            parents[f + 6] = parents[f + 6] + [shas[prev]]   # merge commit on main
    branch_names = [f"feature/b{b:05d}" for b in range(n_branch)]
    refs = pd.DataFrame({
        "name": ["main", *branch_names],
        "kind": "branch",
        "commit": [shas[n_main - 1], *[shas[h] for h in heads]],
        "date": pd.to_datetime([main_dates[-1], *[dates[h] for h in heads]], unit="s", utc=True),
        "annotated": False,
    })
    tag_at = np.linspace(0, n_main - 1, n_gtag).astype(int)
    gtags = pd.DataFrame({"name": [f"v{i}.0.0" for i in range(n_gtag)], "kind": "tag",
                          "commit": shas[tag_at], "date": pd.to_datetime(main_dates[tag_at] + 60, unit="s", utc=True),
                          "annotated": np.arange(n_gtag) % 2 == 0})
    git_refs = pd.concat([refs, gtags], ignore_index=True)
    git_commits = pd.DataFrame({"commit": shas, "committed": pd.to_datetime(dates, unit="s", utc=True),
                                "parents": parents})

    # --- registry: images (10% indexes of two platforms), signatures, shared tags
    n_img = int(tags * 0.9)
    repo_names = np.array([f"team{i % 50}/app{i:04d}" for i in range(n_repo)], dtype=object)
    img_repo = repo_names[rng.integers(0, n_repo, size=n_img)]
    img_digest = "sha256:" + _hexes(rng, n_img, 64)
    img_commit = rng.integers(0, n_commit, size=n_img)
    created = pd.to_datetime(np.minimum(dates[img_commit] + rng.integers(60, 1800, size=n_img), now_s), unit="s", utc=True)
    linked = rng.random(n_img) < 0.9
    is_index = rng.random(n_img) < 0.10
    signed = rng.random(n_img) < 0.05
    commit_sha = shas[img_commit]
    tag_names = np.where(linked, "sha-" + pd.Series(commit_sha).str[:7].to_numpy(dtype=object),
                         "build-" + pd.Series(np.arange(n_img)).astype(str).to_numpy(dtype=object))
    # tag-pattern tags can repeat (two images of one repo on one commit): keep one tag per name
    tags_df = pd.DataFrame({"repository": img_repo, "tag": tag_names, "digest": img_digest, "gone": False})
    tags_df = tags_df.drop_duplicates(["repository", "tag"])
    latest = tags_df.groupby("repository").tail(1).assign(tag="latest")
    extra = tags_df.sample(frac=0.08, random_state=seed).assign(tag=lambda d: "release-" + d.index.astype(str))
    img_types = np.where(is_index, "index", "image")
    mt = np.where(is_index, "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json")
    size = rng.integers(5_000_000, 400_000_000, size=n_img)
    manifests = [pd.DataFrame({"repository": img_repo, "digest": img_digest, "media_type": mt, "kind": img_types,
                               "artifact_type": None, "size": size, "created": created,
                               "revision": np.where(linked, commit_sha, None), "subject": None})]
    ix = np.flatnonzero(is_index)
    children_rows = []
    for k, platform in enumerate(("linux/amd64", "linux/arm64")):
        cd = "sha256:" + _hexes(rng, len(ix), 64)
        manifests.append(pd.DataFrame({"repository": img_repo[ix], "digest": cd,
                                       "media_type": "application/vnd.oci.image.manifest.v1+json",
                                       "kind": "image", "artifact_type": None, "size": size[ix] // 2,
                                       "created": created[ix], "revision": None, "subject": None}))
        children_rows.append(pd.DataFrame({"repository": img_repo[ix], "index_digest": img_digest[ix],
                                           "child_digest": cd, "platform": platform}))
    sx = np.flatnonzero(signed)
    sig = "sha256:" + _hexes(rng, len(sx), 64)
    ridx = "sha256:" + _hexes(rng, len(sx), 64)
    manifests.append(pd.DataFrame({"repository": img_repo[sx], "digest": sig,
                                   "media_type": "application/vnd.oci.image.manifest.v1+json", "kind": "artifact",
                                   "artifact_type": "application/vnd.dev.cosign.artifact.sig.v1+json", "size": 900,
                                   "created": created[sx], "revision": None, "subject": img_digest[sx]}))
    manifests.append(pd.DataFrame({"repository": img_repo[sx], "digest": ridx,
                                   "media_type": "application/vnd.oci.image.index.v1+json", "kind": "referrers-index",
                                   "artifact_type": None, "size": 500, "created": pd.NaT, "revision": None,
                                   "subject": img_digest[sx]}))
    children_rows.append(pd.DataFrame({"repository": img_repo[sx], "index_digest": ridx, "child_digest": sig,
                                       "platform": None}))
    fallback = pd.DataFrame({"repository": img_repo[sx],
                             "tag": "sha256-" + pd.Series(img_digest[sx]).str[7:].to_numpy(dtype=object),
                             "digest": ridx, "gone": False})
    all_tags = pd.concat([tags_df, latest, extra, fallback], ignore_index=True)
    lx = np.flatnonzero(linked)
    links = pd.concat([
        pd.DataFrame({"repository": img_repo[lx], "digest": img_digest[lx], "commit": commit_sha[lx], "source": "annotation"}),
        pd.DataFrame({"repository": img_repo[lx], "digest": img_digest[lx],
                      "commit": pd.Series(commit_sha[lx]).str[:7].to_numpy(dtype=object), "source": "tag-pattern"}),
    ], ignore_index=True)

    # --- kubernetes and helm: references by tag, by digest, with imageIDs; finished jobs
    host = "registry.example.com"
    pick = tags_df.sample(n=min(n_inuse, len(tags_df)), random_state=seed + 1)
    by_digest = rng.random(len(pick)) < 0.3
    image = np.where(by_digest, host + "/" + pick["repository"] + "@" + pick["digest"],
                     host + "/" + pick["repository"] + ":" + pick["tag"])
    workloads = pd.DataFrame({
        "context": np.where(rng.random(len(pick)) < 0.7, "prod", "staging"), "namespace": "default",
        "kind": rng.choice(["Pod", "Deployment", "ReplicaSet", "StatefulSet", "Job"], size=len(pick)),
        "name": "w" + pd.Series(np.arange(len(pick))).astype(str).to_numpy(dtype=object),
        "container": "app", "container_type": "containers", "image": image,
        "image_id": np.where(rng.random(len(pick)) < 0.5, "docker-pullable://" + host + "/" + pick["repository"] + "@" + pick["digest"], None),
        "finished": rng.random(len(pick)) < 0.05,
    })
    hp = tags_df.sample(n=max(5, n_inuse // 2), random_state=seed + 2)
    helm = pd.DataFrame({"context": "prod", "namespace": "default",
                         "release": "r" + (pd.Series(np.arange(len(hp))) // 10).astype(str).to_numpy(dtype=object),
                         "revision": (np.arange(len(hp)) % 10 + 1).astype("int32"),
                         "status": "superseded", "chart": "app-1.0.0", "app_version": "1.0",
                         "last_deployed": pd.Timestamp(NOW), "driver": "secret",
                         "image": (host + "/" + hp["repository"] + ":" + hp["tag"]).to_numpy(dtype=object)})

    # A Distribution registry reports no push or pull times, and every synthetic image reads fine.
    manifests = pd.concat(manifests, ignore_index=True).assign(pushed=pd.NaT, last_pulled=pd.NaT, problem=None)
    tables = {"tags": all_tags, "manifests": manifests,
              "children": pd.concat(children_rows, ignore_index=True), "links": links,
              "workloads": workloads, "helm": helm, "git_refs": git_refs, "git_commits": git_commits}
    # sorted as the registry source writes them (tasks/sources/registry.py): by repository, then key
    for name, keys in SORT_KEYS.items():
        tables[name] = tables[name].sort_values(keys, kind="stable", ignore_index=True)
    store = Store(store_url)
    from tasks.store.store import new_id
    sid = new_id(NOW)
    staging = store.snapshots.staging_dir(sid)
    statuses = {}
    for source, schemas in SOURCE_TABLES.items():
        # tables this generator does not make (BLOBS: no true bytes) are written empty
        counts = store.snapshots.write_source_tables(staging, {k: tables.get(k, schemas[k].empty_table()) for k in schemas},
                                           schemas)
        statuses[source] = SourceStatus("ok", rows=counts[next(iter(schemas))], tables=counts).to_json()
    store.snapshots.publish(sid, {"created_at": NOW.isoformat(), "complete": True, "registry": REGISTRY,
                                 "sources": statuses})
    return sid


SORT_KEYS = {"tags": ["repository", "tag"], "manifests": ["repository", "digest"],
             "children": ["repository", "index_digest", "child_digest"],
             "links": ["repository", "digest", "commit", "source"]}


WERF_DEFAULTS = [
    {"references": {"tag": "/.*/", "limit": {"last": 10}}},
    {"references": {"branch": "/.*/", "limit": {"last": 10, "in": "168h", "operator": "And"}},
     "imagesPerReference": {"last": 2, "in": "168h", "operator": "And"}},
    {"references": {"branch": "/^(main|master|staging|production)$/"}, "imagesPerReference": {"last": 10}},
]


def bench_config(store_url: str, policy: str):
    from tasks.config.models import parse_config

    cleanup = {"keepImagesBuiltWithinLastNHours": 2}
    if policy == "stress":
        cleanup["keepPolicies"] = WERF_DEFAULTS + [{"references": {"branch": "/.*/"}, "imagesPerReference": {"last": 2}}]
    return parse_config({"store": store_url, "registry": {"url": REGISTRY, "aliases": ["registry.example.com:443"]},
                         "git": {"path": "/unused"}, "cleanup": cleanup})


def peak_rss() -> int:
    """This process's peak resident memory in bytes, since its exec: VmHWM. Not ru_maxrss, which
    Linux carries across exec from the parent that spawned us (the parent that just generated a
    snapshot would lend the measurement its own peak)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib * 1024


def measure(store_url: str, snapshot: str, policy: str, what: str, batch_rows: int | None) -> dict:
    """One measurement in this (fresh) process: the plan as `regsweep plan` makes it, or the read."""
    from tasks.store.schemas import SOURCE_TABLES
    from tasks.store.store import Store

    store = Store(store_url)
    if what != "read":
        import tasks.plan.evaluate  # noqa: F401 - imports are not the plan's time (nor the read's)
        import tasks.plan.batches  # noqa: F401
        from tasks.plan.make import make_plan

        config = bench_config(store_url, policy)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if what == "read":
        tables = [store.snapshots.table(snapshot, name) for schemas in SOURCE_TABLES.values() for name in schemas]
        rows = sum(t.num_rows for t in tables if t is not None)   # (snapshots of older versions lack BLOBS)
        out = {"time": time.perf_counter() - t0, "rows": rows}
    else:
        result = make_plan(config, snapshot, batch_rows)
        out = {"time": time.perf_counter() - t0, "tags": result.meta["tags"], "delete": result.meta["delete"]}
        store.fs.rm(store.path("plans", result.plan_id), recursive=True)   # plans of 5M tags are large
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["rss"] = peak_rss()
    # all threads' CPU: a shared machine stretches wall time, less so CPU time
    out["cpu"] = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    return out


def _run(store_dir: Path, sid: str, args, what: str) -> dict:
    runs = []
    for _ in range(args.runs):
        cmd = [sys.executable, __file__, "--policy", args.policy, "--measure", str(store_dir), sid, what]
        if args.batch_rows:
            cmd += ["--batch-rows", str(args.batch_rows)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(r[k] for r in runs) for k in ("time", "rss", "cpu")}
    return {**runs[0], **med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "regsweep-bench-plan"))
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--policy", choices=["defaults", "stress"], default="defaults")
    ap.add_argument("--batch-rows", type=int, default=None, help="rows per batch (tasks.plan.batches.BATCH_ROWS)")
    ap.add_argument("--base", type=int, default=None, help="size whose time per tag is 1.0 (default: the smallest run)")
    ap.add_argument("--measure", nargs=3, metavar=("STORE", "SNAPSHOT", "WHAT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure[:2], args.policy, args.measure[2], args.batch_rows)))
        return

    results = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        store_dir = Path(args.dir) / f"tags-{size}"
        stamp = store_dir / "bench.json"
        want = {"tags": size, "version": VERSION}
        if stamp.exists() and json.loads(stamp.read_text()).get("want") == want:
            sid = json.loads(stamp.read_text())["snapshot"]
        else:
            subprocess.run(["rm", "-rf", str(store_dir)], check=True)
            t = time.perf_counter()
            sid = generate(str(store_dir), size)
            stamp.write_text(json.dumps({"want": want, "snapshot": sid}))
            print(f"generated {size:,}-tag snapshot in {time.perf_counter() - t:.1f}s at {store_dir}", flush=True)
        plan, read = _run(store_dir, sid, args, "plan"), _run(store_dir, sid, args, "read")
        r = {"size": size, "tags": plan["tags"], "plan": plan["time"], "cpu": plan["cpu"], "rss": plan["rss"], "read": read["time"],
             "read_rss": read["rss"], "delete": plan["delete"]}
        (store_dir / f"result-{args.policy}.json").write_text(json.dumps(r))
        results[size] = r
        print(f"{r['tags']:>9,} tags: plan {r['plan']:6.2f}s (CPU {r['cpu']:5.1f}s)  peak RSS {r['rss'] / 2**20:6.0f} MiB  |  read {r['read']:5.2f}s "
              f"{r['read_rss'] / 2**20:6.0f} MiB  (plan/read {r['plan'] / r['read']:.1f}x)  deletes {r['delete']:,}  "
              f"[median of {args.runs}, policy {args.policy}]", flush=True)
    base_size = args.base or min(results)
    base = results.get(base_size)
    recorded = Path(args.dir) / f"tags-{base_size}" / f"result-{args.policy}.json"
    if base is None and recorded.exists():
        base = json.loads(recorded.read_text())
    if base is not None:
        per_tag0 = base["plan"] / base["tags"]
        print(f"\ntime per tag relative to {base['tags']:,} tags (1.0 = linear; < 1 = better than linear):")
        for r in [base, *[r for s, r in sorted(results.items()) if s != base_size]]:
            print(f"  {r['tags']:>9,} tags: {r['plan'] / r['tags'] * 1e6:7.2f} µs/tag  ratio {r['plan'] / r['tags'] / per_tag0:.2f}")
    goals = {1_000_000: (8, 1.5), 5_000_000: (60, 8)}
    for size, (secs, gib) in goals.items():
        if size in results:
            r = results[size]
            ok = r["plan"] <= secs and r["rss"] <= gib * 2**30
            print(f"{size // 10**6}M goal (plan ≤ {secs} s, peak RSS ≤ {gib} GiB): {'met' if ok else 'MISSED'} "
                  f"({r['plan']:.1f}s, {r['rss'] / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
