"""Registry scans at a distance: regsweep against a plain async scanner and skopeo, 25 ms away.

    .venv/bin/python benchmarks/bench_latency.py [--dir DIR] [--delay-ms 25] [--jitter-ms 0] [--runs 3]
                                                 [--concurrencies 16,32,64,128] [--skopeo-sample 20]
                                                 [--shapes a,b] [--regsweep-concurrency N]

Fills (once, kept in DIR; not measured) a local Distribution 2.8 (testbed/) with two shapes,
every tag its own manifest and config: (a) 20 repositories x 250 tags, (b) ONE repository with
10,000 tags. Puts benchmarks/latency_proxy.py (its own process) in front of it, adding DELAY ms
of round trip (± JITTER/2) to every request. Then, for each shape, in one run:

  per-tag request: HEAD vs GET of a manifest by tag (and GET by digest), straight to the registry
      and through the proxy, every tag once at the plain scanner's best concurrency: which one the
      rescan should use;
  plain scanner: a bare httpx.AsyncClient that lists the tags and GETs every manifest and config,
      one pool of C workers over all tags, at each of --concurrencies (one run each); the best C;
  and RUNS times, interleaved so all see the same machine load:
  (1) regsweep cold: tasks.sources.registry.extract() into a fresh store, registry.concurrency = best C;
  (2) the plain scanner at best C;
  (3) regsweep rescan: extract() again on the unchanged registry (the store's blob cache);
  (4) skopeo: `skopeo list-tags` + `skopeo inspect --no-tags` per tag as a script would loop,
      inspect run on SAMPLE tags and extrapolated to all (a full loop takes minutes).

Prints medians, the ratios against the goals — (1) <= 1.1x (2); (4) >= 10x (1); (1) >= 3x (3)
— the requests each made, and the process CPU seconds per 1,000 tags of (1), (3) and (2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench_registry import median, populate, skopeo_peer  # noqa: E402
from tasks import oci  # noqa: E402
from tasks.sources.blobcache import BlobCache  # noqa: E402
from tasks.config.models import parse_config  # noqa: E402
from tasks.sources.registry import extract, scan_registry  # noqa: E402
from tasks.store.store import Store  # noqa: E402
from testbed import LocalRegistry  # noqa: E402

SHAPES = {"a": ("lat/small", 20, 250), "b": ("lat/big", 1, 10_000)}


@contextmanager
def latency_proxy(upstream: str, delay_ms: float, jitter_ms: float) -> Iterator[str]:
    """benchmarks/latency_proxy.py in its own process; yields its http://127.0.0.1:PORT."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("latency_proxy.py")),
                             "--upstream", upstream, "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms)],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.match(r"listening (\S+)", line)
        if not m:
            raise RuntimeError(f"latency proxy did not start: {line!r}")
        yield f"http://{m.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Timed:
    seconds: float
    cpu: float       # process CPU seconds (user + system) of this process
    requests: int = 0


def timed(fn) -> Timed:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return Timed(time.perf_counter() - t, time.process_time() - c, out if isinstance(out, int) else 0)


# --- the plain scanner -------------------------------------------------------------------------

async def _paged(client: httpx.AsyncClient, url: str, key: str, sent: list[int]) -> list[str]:
    out: list[str] = []
    next_url: str | httpx.URL | None = url
    while next_url is not None:
        sent[0] += 1
        r = await client.get(next_url)
        r.raise_for_status()
        out += r.json().get(key) or []
        link = oci.parse_link_next(r.headers.get("link"))
        next_url = r.request.url.join(link) if link else None
    return out


async def plain_scan(url: str, prefix: str, concurrency: int) -> int:
    """What a careful script would write: list, then GET each manifest and its config, with one
    pool of `concurrency` requests over the whole registry. Returns the requests it made."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        sent = [0]
        repos = [r for r in await _paged(client, "/v2/_catalog?n=1000", "repositories", sent) if r.startswith(prefix)]
        sem = asyncio.Semaphore(concurrency)

        async def tags_of(repo: str) -> list[tuple[str, str]]:
            async with sem:
                return [(repo, t) for t in await _paged(client, f"/v2/{repo}/tags/list?n=1000", "tags", sent)]

        work = [x for part in await asyncio.gather(*(tags_of(r) for r in repos)) for x in part]
        items = iter(work)
        configs: dict[str, str] = {}

        async def worker() -> None:
            for repo, tag in items:
                r = await client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": oci.ACCEPT})
                r.raise_for_status()
                cfg = json.loads(r.content).get("config", {}).get("digest")
                if cfg and cfg not in configs:
                    configs[cfg] = ""
                    b = await client.get(f"/v2/{repo}/blobs/{cfg}")
                    b.raise_for_status()
                    configs[cfg] = b.text

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(work)))))
        return sent[0] + len(work) + len(configs)


async def per_tag_rate(url: str, tags: list[tuple[str, str]], method: str, concurrency: int,
                       by_digest: dict[tuple[str, str], str] | None = None) -> float:
    """Requests per second of one `method` per tag (by digest when given) at `concurrency`."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        items = iter(tags)

        async def worker() -> None:
            for repo, tag in items:
                ref = by_digest[(repo, tag)] if by_digest else tag
                r = await client.request(method, f"/v2/{repo}/manifests/{ref}", headers={"Accept": oci.ACCEPT})
                r.raise_for_status()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(tags) / (time.perf_counter() - t)


# --- one shape ---------------------------------------------------------------------------------

def bench_shape(name: str, reg: LocalRegistry, proxy: str, args, work: Path) -> dict:
    prefix, repos, tags = SHAPES[name]
    tags = max(1, int(tags * args.scale))
    populate(reg, repos, tags, prefix=prefix)
    cfg = parse_config({"store": str(work / "unused"), "registry": {
        "url": proxy, "repositories": [f"{prefix}*"], "concurrency": 16}})

    # The plain scanner at each concurrency: which serves this registry, this far away, best?
    sweep = {c: timed(lambda c=c: asyncio.run(plain_scan(proxy, prefix, c))) for c in args.concurrencies}
    best = min(sweep, key=lambda c: sweep[c].seconds)
    # regsweep runs at the plain scanner's best unless told otherwise: a rescan is one cheap request
    # per tag, bounded by tags x round trip / concurrency, so far registries want more in flight
    ours = args.regsweep_concurrency or best
    cfg = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"concurrency": ours})})

    # One instrumented cold scan and rescan: the requests each makes (scan_registry is what extract runs).
    cache = BlobCache()
    result, client = asyncio.run(scan_registry(cfg.registry, cfg.link, cache))
    cold_requests = client.requests
    _, client = asyncio.run(scan_registry(cfg.registry, cfg.link, BlobCache(cache.table())))
    rescan_requests = client.requests
    all_tags = sorted((t["repository"], t["tag"]) for t in result.tags)
    digests = {(t["repository"], t["tag"]): t["digest"] for t in result.tags}

    per_tag = {}
    for label, url in (("direct", reg.url), ("proxy", proxy)):
        per_tag[label] = {
            "HEAD by tag": asyncio.run(per_tag_rate(url, all_tags, "HEAD", best)),
            "GET by tag": asyncio.run(per_tag_rate(url, all_tags, "GET", best)),
            "GET by digest": asyncio.run(per_tag_rate(url, all_tags, "GET", best, digests)),
        }

    cold, plain, rescan, sk, loads = [], [], [], [], []
    repo_names = sorted({r for r, _ in all_tags})
    for i in range(args.runs):
        loads.append(os.getloadavg()[0])
        store = Store(str(work / f"{name}-store-{i}"))
        now = datetime.now(timezone.utc)
        cold.append(timed(lambda: extract(cfg, store, now)))
        plain.append(timed(lambda: asyncio.run(plain_scan(proxy, prefix, best))))
        rescan.append(timed(lambda: extract(cfg, store, now)))
        sk.append(skopeo_peer(_Host(proxy), repo_names, all_tags, args.skopeo_sample))
    return {"name": name, "repos": repos, "tags": len(all_tags), "sweep": sweep, "best": best, "ours": ours,
            "cold_requests": cold_requests, "rescan_requests": rescan_requests, "plain_requests": sweep[best].requests,
            "per_tag": per_tag, "cold": cold, "plain": plain, "rescan": rescan, "skopeo": sk, "loads": loads}


class _Host:
    """What skopeo_peer needs of a registry: its host:port (here the proxy's)."""

    def __init__(self, url: str):
        self.host = url.split("://", 1)[1]


def report(r: dict, args) -> None:
    n = r["tags"]
    med = lambda xs, f="seconds": median([getattr(x, f) for x in xs])  # noqa: E731
    a, p, d = med(r["cold"]), med(r["plain"]), med(r["rescan"])
    list_s = median([s[0] for s in r["skopeo"]])
    per = median([s[1] for s in r["skopeo"]])
    sk = list_s + per * n
    runs = lambda xs: ", ".join(f"{x.seconds:.2f}" for x in xs)  # noqa: E731
    print(f"\n== shape ({r['name']}): {r['repos']} repositories x {n // r['repos']:,} tags = {n:,} tags, "
          f"{args.delay_ms:g} ms round trip (jitter {args.jitter_ms:g} ms); 1-min load at each run: "
          f"{', '.join(f'{x:.1f}' for x in r['loads'])} on {os.cpu_count()} CPUs")
    print("plain scanner by concurrency (one run each): " +
          ", ".join(f"c={c}: {t.seconds:.2f} s" for c, t in r["sweep"].items()) + f"  -> best c={r['best']}")
    for where, rates in r["per_tag"].items():
        print(f"one request per tag, {where:6s} at c={r['best']}: " +
              ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items()))
    floor = n * args.delay_ms / 1000 / r["ours"]
    print(f"regsweep at c={r['ours']}: a rescan's floor is {n:,} tags x {args.delay_ms:g} ms / {r['ours']} = {floor:.2f} s, "
          f"so (1)/(3) >= 3 needs a cold scan >= {3 * floor:.2f} s at this concurrency")
    print(f"(1) regsweep cold   : {a:7.2f} s  {n / a:7,.0f} tags/s  {r['cold_requests']:6,} requests  runs {runs(r['cold'])}")
    print(f"(2) plain scanner   : {p:7.2f} s  {n / p:7,.0f} tags/s  {r['plain_requests']:6,} requests  runs {runs(r['plain'])}"
          f"  (c={r['best']})")
    print(f"(3) regsweep rescan : {d:7.2f} s  {n / d:7,.0f} tags/s  {r['rescan_requests']:6,} requests  runs {runs(r['rescan'])}")
    print(f"(4) skopeo loop     : {sk:7.2f} s  (list-tags {list_s:.2f} s + {per * 1000:.0f} ms/tag x {n:,} tags, "
          f"extrapolated from {r['skopeo'][0][2]} inspected tags per run)")
    k = 1000 / n
    print(f"CPU s per 1,000 tags (this process): regsweep cold {med(r['cold'], 'cpu') * k:.3f}, "
          f"rescan {med(r['rescan'], 'cpu') * k:.3f}, plain scanner {med(r['plain'], 'cpu') * k:.3f} "
          f"-> cold/plain {med(r['cold'], 'cpu') / med(r['plain'], 'cpu'):.2f}x")
    for label, ratio, target, ok in [
        ("(1)/(2) cold vs best plain scanner", a / p, "<= 1.1", a / p <= 1.1),
        ("(4)/(1) skopeo vs cold", sk / a, ">= 10", sk / a >= 10),
        ("(1)/(3) cold vs rescan", a / d, ">= 3", a / d >= 3),
    ]:
        print(f"  {label:36s}: {ratio:6.2f}x  target {target:7s} {'MET' if ok else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "regsweep-bench-latency"))
    ap.add_argument("--delay-ms", type=float, default=25.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrencies", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128])
    ap.add_argument("--skopeo-sample", type=int, default=20)
    ap.add_argument("--shapes", default="a,b")
    ap.add_argument("--regsweep-concurrency", type=int, default=None,
                    help="registry.concurrency for regsweep's scans (default: the plain scanner's best)")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of each shape's tags (a quick smoke run)")
    args = ap.parse_args()

    with LocalRegistry(Path(args.dir), log_level="error") as reg, \
            latency_proxy(reg.host, args.delay_ms, args.jitter_ms) as proxy, \
            tempfile.TemporaryDirectory(prefix="regsweep-bench-") as tmp:
        results = [bench_shape(s, reg, proxy, args, Path(tmp)) for s in args.shapes.split(",")]
    for r in results:
        report(r, args)


if __name__ == "__main__":
    main()
