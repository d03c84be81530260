"""Memory of the registry source: peak RSS of a snapshot of one repository with many tags.

    .venv/bin/python benchmarks/bench_memory.py [--tags 100000] [--dir DIR] [--concurrency 16]

Fills (once, kept in DIR; filling is not measured) a local Distribution 2.8 registry with one
repository of TAGS tags, every tag its own manifest (one annotation apart) over a shared config
and layer. Then, each in a fresh process:

  (a) baseline:  the same imports and configuration, no scan;
  (b) registry:  the registry source as a snapshot runs it (`run_source("registry", ...)`: the
                 scan, the five tables built and written to a store, the blob cache written).

It prints each process's peak RSS (getrusage ru_maxrss of the child) and (b) − (a) per tag.
Bound: peak RSS of (b) ≤ 160 MiB + 8 kB per tag (B_FIXED + B_PER_TAG × tags): under 1 GiB at
100,000 tags. The script exits 1 when it is exceeded.

Preliminary figures (development machine, shared and busy): 2,000 tags 161 MiB, 10,000 tags
189 MiB (3.6 kB per extra tag between the two; the baseline process is 90 MiB), which puts
100,000 tags near 500 MiB. The full-size run is still to be made on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed import LocalRegistry, push_tags  # noqa: E402

B_FIXED = 160 * 2**20
B_PER_TAG = 8_000
REPO = "bench/many"

CHILD = r"""
import json, sys, time
from datetime import datetime, timezone
from tasks.config.models import parse_config
from tasks.snapshot.take import run_source
from tasks.store.store import Store, new_id
import tasks.sources.registry  # noqa: F401 - the baseline imports what the scan imports
mode, url, store, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = parse_config({"store": store, "registry": {"url": url, "repositories": [sys.argv[5]],
                                                  "concurrency": concurrency}})
out = {}
if mode == "registry":
    s = Store(cfg.store)
    now = datetime.now(timezone.utc)
    started = time.monotonic()
    st = run_source("registry", cfg, s.snapshots.staging_dir(new_id(now)), now)
    out = {"status": st.status, "rows": st.rows, "seconds": round(time.monotonic() - started, 1),
           "error": st.error, "retries": st.notes.get("retries", {}).get("count")}
print(json.dumps(out))
"""


def populate(reg: LocalRegistry, tags: int) -> None:
    marker = reg.root / f"populated-{tags}"
    if marker.exists():
        return
    started = time.monotonic()
    with reg.client() as c:
        push_tags(c, REPO, [f"build-{i:06d}" for i in range(tags)], workers=8)
    marker.write_text("ok")
    print(f"filled {REPO} with {tags} tags in {time.monotonic() - started:.1f} s (not measured)")


def child(mode: str, url: str, store: Path, concurrency: int) -> tuple[dict, int]:
    """Run one measured process; (its JSON answer, its peak RSS in bytes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = subprocess.run([sys.executable, "-c", CHILD, mode, url, str(store), str(concurrency), REPO], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # RUSAGE_CHILDREN reports the largest child so far: measure the small one first
    if peak <= before and mode != "baseline":
        raise RuntimeError("measure the baseline first: the children's peak did not move")
    return json.loads(p.stdout.strip().splitlines()[-1]), peak * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "regsweep-bench-memory"))
    ap.add_argument("--tags", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    with LocalRegistry(Path(args.dir), log_level="error") as reg:
        populate(reg, args.tags)
        with tempfile.TemporaryDirectory(prefix="regsweep-bench-store-") as store:
            _, base = child("baseline", reg.url, Path(store), args.concurrency)
            result, peak = child("registry", reg.url, Path(store), args.concurrency)
    if result.get("status") != "ok" or result.get("rows") != args.tags:
        raise SystemExit(f"the scan did not read every tag: {result}")
    per_tag = (peak - base) / args.tags
    print(f"baseline (imports, no scan)     peak RSS {base / 2**20:7.1f} MiB")
    print(f"registry source, {args.tags:,} tags   peak RSS {peak / 2**20:7.1f} MiB in {result['seconds']} s "
          f"({per_tag / 1000:.2f} kB per tag above the baseline)")
    bound = B_FIXED + B_PER_TAG * args.tags
    ok = peak <= bound
    print(f"bound: {B_FIXED / 2**20:.0f} MiB + {B_PER_TAG / 1000:.0f} kB per tag = {bound / 2**20:.0f} MiB: "
          f"{'within' if ok else 'EXCEEDED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
