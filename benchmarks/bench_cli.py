"""`regsweep --help` start-up time against a bare Python interpreter start, in one run.

    .venv/bin/python benchmarks/bench_cli.py [--runs 7]

The help must answer in under a second: heavy modules (prefect, pandas, pyarrow) must stay
out of the CLI's import path. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

EXE = Path(sys.executable).parent / "regsweep"


def timed(cmd: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    bare = timed([sys.executable, "-c", "pass"], args.runs)
    helped = timed([str(EXE), "--help"], args.runs)
    sub = timed([str(EXE), "sweep", "--help"], args.runs)
    print(f"python -c pass      : {bare * 1000:7.0f} ms (median of {args.runs})")
    print(f"regsweep --help     : {helped * 1000:7.0f} ms   target < 1000 ms   {'MET' if helped < 1 else 'MISSED'}")
    print(f"regsweep sweep --help: {sub * 1000:6.0f} ms")
    print(f"ratio help / bare interpreter: {helped / bare:.1f}x")


if __name__ == "__main__":
    main()
