"""Reproduce the abort at interpreter exit that a Parquet read through a Python file object causes.

    .venv/bin/python benchmarks/repro_exit_abort.py [--runs 200] [--parallel 4] [--mode both|python-file|store]

Each run is a fresh `python` that reads one Parquet file with a row filter (as `regsweep
explain` reads a plan) and exits at once. `python-file` hands `pyarrow.parquet.read_table` an
fsspec file object, as tasks/store/store.py did; `store` goes through `Store.read_table`. With the
Python file, Arrow's scan threads drop their last reference to it (or to Python-owned bytes)
after `read_table` has returned; that takes the GIL, and a thread doing so while the
interpreter is finalizing is ended with pthread_exit inside a C++ destructor, which calls
std::terminate: "terminate called without an active exception", exit -6 (134 from a shell),
after the work was done. On the 2-core development machine with 4 in parallel, 6-17 % of
`python-file` runs aborted; `store` runs (Arrow-owned memory) aborted in none of 300.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = {
    "python-file": (
        "import sys, fsspec, pyarrow.parquet as pq\n"
        "fs, path = fsspec.core.url_to_fs(sys.argv[1])\n"
        "with fs.open(path, 'rb') as f:\n"
        "    t = pq.read_table(f, filters=[('repository', 'in', ['r1'])])\n"
        "print(t.num_rows)\n"),
    "store": (
        "import sys\n"
        "from tasks.store.store import Store\n"
        "t = Store(sys.argv[2]).read_table(sys.argv[1], filters=[('repository', 'in', ['r1'])])\n"
        "print(t.num_rows)\n"),
}


def write_sample(directory: Path) -> Path:
    """A small plan (the PLAN schema, as `regsweep plan` writes it), stored by the store."""
    from datetime import datetime, timezone

    import pyarrow as pa

    from tasks.store.schemas import PLAN
    from tasks.store.store import Store

    rows = [{"repository": f"r{i % 2}", "tag": f"t{i}", "digest": f"sha256:{i:064x}", "kind": "image",
             "action": "delete" if i % 3 else "keep", "reasons": ["unlinked", f"built {i}d ago"],
             "size": 1000 * i, "created": datetime(2024, 1, 1, tzinfo=timezone.utc)} for i in range(8)]
    store = Store(str(directory))
    path = store.path("plan.parquet")
    store.write_table(path, pa.Table.from_pylist(rows, schema=PLAN))
    return Path(path)


def run(mode: str, path: Path, runs: int, parallel: int) -> list[tuple[int, str]]:
    """(exit code, last stderr line) of every run that did not exit 0."""
    def one(_: int) -> tuple[int, str]:
        p = subprocess.run([sys.executable, "-c", CHILD[mode], str(path), str(path.parent)], cwd=ROOT,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        return p.returncode, (p.stderr.strip().splitlines() or [""])[-1]

    with ThreadPoolExecutor(parallel) as pool:
        return [r for r in pool.map(one, range(runs)) if r[0] != 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--mode", choices=["both", *CHILD], default="both")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as d:
        path = write_sample(Path(d))
        for mode in (CHILD if args.mode == "both" else [args.mode]):
            failed = run(mode, path, args.runs, args.parallel)
            lines = sorted({line for _, line in failed})
            print(f"{mode:12s} {len(failed):4d} of {args.runs} runs failed"
                  + (f" (exit {sorted({c for c, _ in failed})}: {'; '.join(lines)})" if failed else ""))


if __name__ == "__main__":
    main()
