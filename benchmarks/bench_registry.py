"""Registry source benchmark: regsweep's extractor against skopeo and the registry's own rate.

    .venv/bin/python benchmarks/bench_registry.py [--dir DIR] [--repos 20] [--tags 250] [--runs 3]
                                                  [--skopeo-sample 40] [--concurrency N]

Fills (once, kept in DIR; filling is not measured) a local Distribution 2.8 registry
(testbed/) with REPOS repositories × TAGS tags, every tag its own image (own
manifest, own config). Then, in one run, median of RUNS each:

  (a) regsweep cold: tasks.sources.registry.extract() into a fresh store (no cache): every tag's
      manifest and config read, tables built;
  (b) skopeo:        `skopeo list-tags` per repository + `skopeo inspect --no-tags` per tag, in a
      loop as a script would; inspect is run on a sample of tags and extrapolated per tag;
  (c) registry rate: the same manifest and config GETs (a) made, as a flat list, by a bare
      httpx async loop at several concurrencies (and `ab` on one manifest URL for reference);
      the best rate gives the time (a)'s requests need at the least;
  (d) regsweep rescan: extract() again on the unchanged registry with the cache from (a).

Targets: (a) ≥ 10x faster than (b); (a) within 1.5x of (c)'s implied time; (d) ≥ 3x faster than (a).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tasks import oci  # noqa: E402
from tasks.sources.blobcache import CACHE_NAME, BlobCache  # noqa: E402
from tasks.config.models import parse_config  # noqa: E402
from tasks.sources.registry import extract, scan_registry  # noqa: E402
from tasks.store.store import Store  # noqa: E402
from testbed import LocalRegistry, push_repositories  # noqa: E402


def _tag(repo: str, i: int) -> str:
    return "sha-" + hashlib.sha1(f"{repo}-{i}".encode()).hexdigest()[:12]


def populate(reg: LocalRegistry, repos: int, tags: int, prefix: str = "bench/app") -> None:
    """REPOS repositories `<prefix>NN` of TAGS tags each, every tag its own manifest and config
    (the revision in a config label, so reading a tag takes its manifest and its config)."""
    marker = reg.root / f"populated-{prefix.replace('/', '_')}-{repos}x{tags}"
    if marker.exists():
        return
    started = time.monotonic()
    plan = {f"{prefix}{r:02d}": [_tag(f"{prefix}{r:02d}", i) for i in range(tags)] for r in range(repos)}
    with reg.client(timeout=120) as c:
        push_repositories(c, plan, labels=lambda t: {"build": t, oci.ANN_REVISION: t[4:]}, workers=8)
    marker.write_text("ok")
    print(f"filled {repos} repositories x {tags} tags in {time.monotonic() - started:.1f} s (not measured)")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def run_extract(cfg, store_dir: Path) -> float:
    store = Store(str(store_dir))
    t = time.perf_counter()
    tables = extract(cfg, store, datetime.now(timezone.utc))
    elapsed = time.perf_counter() - t
    assert tables["tags"].num_rows > 0
    return elapsed


def skopeo_peer(reg: LocalRegistry, repos: list[str], all_tags: list[tuple[str, str]], sample: int) -> tuple[float, float, int]:
    """(seconds for list-tags over every repository, seconds per inspected tag, tags inspected)."""
    base = ["skopeo"]
    t = time.perf_counter()
    for repo in repos:
        subprocess.run(base + ["list-tags", "--tls-verify=false", f"docker://{reg.host}/{repo}"],
                       check=True, capture_output=True)
    list_seconds = time.perf_counter() - t
    step = max(1, len(all_tags) // sample)
    chosen = all_tags[::step][:sample]
    t = time.perf_counter()
    for repo, tag in chosen:
        subprocess.run(base + ["inspect", "--no-tags", "--tls-verify=false", f"docker://{reg.host}/{repo}:{tag}"],
                       check=True, capture_output=True)
    per_tag = (time.perf_counter() - t) / len(chosen)
    return list_seconds, per_tag, len(chosen)


async def raw_rate(url: str, paths: list[str], concurrency: int) -> float:
    """Requests per second for GETting `paths` with `concurrency` workers on one keep-alive client."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        items = iter(paths)

        async def worker():
            for p in items:
                r = await client.get(p, headers={"Accept": oci.ACCEPT})
                r.raise_for_status()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(paths) / (time.perf_counter() - t)


def ab_rate(url: str, concurrency: int, n: int) -> float | None:
    if shutil.which("ab") is None:
        return None
    out = subprocess.run(["ab", "-q", "-k", "-n", str(n), "-c", str(concurrency), "-H", f"Accept: {oci.OCI_MANIFEST}", url],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("Requests per second:"):
            return float(line.split()[3])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "regsweep-bench-registry"))
    ap.add_argument("--repos", type=int, default=20)
    ap.add_argument("--tags", type=int, default=250)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skopeo-sample", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=0,
                    help="registry.concurrency for regsweep; default: the raw loop's best concurrency on this machine")
    args = ap.parse_args()

    with LocalRegistry(Path(args.dir), log_level="error") as reg:
        populate(reg, args.repos, args.tags)
        work = Path(tempfile.mkdtemp(prefix="regsweep-bench-"))
        try:
            cfg = parse_config({"store": str(work / "unused"), "registry": {
                "url": reg.url, "repositories": ["bench/*"], "concurrency": args.concurrency or 16}})

            # One instrumented scan: what requests does (a) make?
            cache = BlobCache()
            result, client = asyncio.run(scan_registry(cfg.registry, cfg.link, cache))
            n_tags = len(result.tags)
            requests_a = client.requests
            manifest_paths = [f"/v2/{t['repository']}/manifests/{t['tag']}" for t in result.tags]
            config_paths = []
            seen = set()
            for row in result.manifests:
                body = cache.entries[row["digest"]][1]
                cd = json.loads(body)["config"]["digest"]
                if cd not in seen:
                    seen.add(cd)
                    config_paths.append(f"/v2/{row['repository']}/blobs/{cd}")
            paths = manifest_paths + config_paths
            print(f"registry {reg.url}: {args.repos} repositories, {n_tags} tags; regsweep makes {requests_a} "
                  f"requests cold ({len(manifest_paths)} manifest + {len(config_paths)} config GETs + listing)")

            # (c) first a short sweep to find the registry's best concurrency on this machine.
            sweep_paths = paths[:: max(1, len(paths) // 3000)]
            sweep = {conc: asyncio.run(raw_rate(reg.url, sweep_paths, conc)) for conc in (1, 4, 8, 16, 32, 64)}
            best_conc = max(sweep, key=sweep.get)
            # Both sides at the concurrency this machine serves best (on 2 shared cores, 8 beats the
            # default 16: httpcore checks every idle pooled connection on each request).
            concurrency = args.concurrency or best_conc
            cfg = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"concurrency": concurrency})})

            # (a), (c), (d) and (b) interleaved run by run, so that all see the same machine load
            # (the machine is shared: figures move with it, ratios much less).
            repos = sorted({t["repository"] for t in result.tags})
            all_tags = sorted((t["repository"], t["tag"]) for t in result.tags)
            cold, warm, raw, sk_runs, loads = [], [], [], [], []
            for i in range(args.runs):
                loads.append(os.getloadavg()[0])
                store_dir = work / f"store-{i}"
                cold.append(run_extract(cfg, store_dir))
                raw.append(asyncio.run(raw_rate(reg.url, paths, best_conc)))
                warm.append(run_extract(cfg, store_dir))
                assert Store(str(store_dir)).caches.read(CACHE_NAME) is not None
                sk_runs.append(skopeo_peer(reg, repos, all_tags, args.skopeo_sample))
            a, d = median(cold), median(warm)
            rate = median(raw)
            c_implied = requests_a / rate
            ab = ab_rate(f"{reg.url}{manifest_paths[0]}", best_conc, 5000)
            list_s = median([r[0] for r in sk_runs])
            per_tag = median([r[1] for r in sk_runs])
            b = list_s + per_tag * n_tags
        finally:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"runs: {args.runs} (medians); regsweep registry.concurrency={concurrency}; "
          f"1-min load average at each run start: {', '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} CPUs")
    print(f"(a) regsweep extract, cold cache : {a:8.2f} s   ({n_tags / a:,.0f} tags/s)   runs {', '.join(f'{x:.2f}' for x in cold)}")
    print(f"(b) skopeo list-tags + inspect   : {b:8.2f} s   (list-tags {list_s:.2f} s for {len(repos)} repositories + "
          f"{per_tag * 1000:.0f} ms/tag x {n_tags} tags, extrapolated from {sk_runs[0][2]} inspected tags per run)")
    print(f"(c) raw httpx GET rate, sweep on {len(sweep_paths)} GETs: " + ", ".join(f"c={k}: {v:,.0f}/s" for k, v in sweep.items()))
    print(f"    best c={best_conc}, all {len(paths)} GETs: {rate:,.0f} req/s (runs {', '.join(f'{x:,.0f}' for x in raw)})"
          f" -> (a)'s {requests_a} requests need >= {c_implied:.2f} s")
    if ab:
        print(f"    (ab -k -c {best_conc}, one manifest URL repeated: {ab:,.0f} req/s, for reference)")
    print(f"(d) regsweep extract, rescan     : {d:8.2f} s   ({n_tags / d:,.0f} tags/s)   runs {', '.join(f'{x:.2f}' for x in warm)}")
    print()
    checks = [
        ("(b)/(a) skopeo vs regsweep cold", b / a, ">= 10", b / a >= 10),
        ("(a)/(c) regsweep cold vs raw rate", a / c_implied, "<= 1.5", a / c_implied <= 1.5),
        ("(a)/(d) cold vs rescan", a / d, ">= 3", a / d >= 3),
    ]
    for name, ratio, target, ok in checks:
        print(f"{name:36s}: {ratio:6.2f}x  target {target:7s} {'MET' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
