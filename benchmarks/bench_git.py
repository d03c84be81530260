"""Git source benchmark: extract refs and the commit graph of a large history.

    .venv/bin/python benchmarks/bench_git.py [--dir DIR] [--commits 200000] [--branches 2000] [--runs 3] [--url]

Generates (once, cached in DIR; generation is not measured) a clone-like repository with
`git fast-import`: a main line, BRANCHES remote-tracking branches forked from it (every tenth
merged back), annotated and lightweight tags. Then, median of RUNS, each in a fresh
subprocess so peak RSS is the extraction's own:

  - regsweep: tasks.sources.git.extract() into the GIT_REFS and GIT_COMMITS Arrow tables;
  - peer:     `git log --all --format='%H %ct %P' > /dev/null` on the same repository,
              i.e. what any tool that reads the commit graph through git pays at least.

and prints the figures and the ratio regsweep / peer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCH = 1_600_000_000  # 2020-09-13; one commit a minute from there


def _git(repo: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, **kw)


def _stream(commits: int, branches: int):
    """A fast-import stream: main line + branches of equal length, merges, tags."""
    per_branch = max(1, commits // 2 // branches)
    main_len = commits - per_branch * branches
    fork_every = max(1, main_len // (branches + 1))
    mark = 0
    ts = EPOCH
    out: list[bytes] = []

    def commit(ref: str, parent: int | None, merge: int | None = None) -> int:
        nonlocal mark, ts
        mark += 1
        ts += 60
        msg = f"change {mark}\n".encode()
        body = f"content {mark}\n".encode()
        out.append(b"commit %s\nmark :%d\ncommitter Bench <bench@example.invalid> %d +0000\n"
                   b"data %d\n%s" % (ref.encode(), mark, ts, len(msg), msg))
        if parent is not None:
            out.append(b"from :%d\n" % parent)
        if merge is not None:
            out.append(b"merge :%d\n" % merge)
        out.append(b"M 644 inline f%d\ndata %d\n%s\n" % (mark % 64, len(body), body))
        return mark

    head = None
    main_made = branch_no = 0
    tags = 0
    while main_made < main_len:
        merge = None
        if branch_no < branches and main_made and main_made % fork_every == 0:
            # A branch forks from the current main head and grows per_branch commits.
            tip = head
            name = f"refs/remotes/origin/feature/b{branch_no:05d}"
            for _ in range(per_branch):
                tip = commit(name, tip)
            if branch_no % 10 == 0:
                merge = tip
            branch_no += 1
        head = commit("refs/remotes/origin/main", head, merge)
        main_made += 1
        if main_made % 400 == 0:
            tags += 1
            if tags % 2:
                out.append(b"tag v%d\nfrom :%d\ntagger Bench <bench@example.invalid> %d +0000\ndata 4\nrel\n\n"
                           % (tags, head, ts + 30))
            else:
                out.append(b"reset refs/tags/v%d\nfrom :%d\n\n" % (tags, head))
        if len(out) > 20000:
            yield b"".join(out)
            out.clear()
    # Branches never forked (tiny histories) still get their own commits off the last head.
    while branch_no < branches:
        tip = head
        for _ in range(per_branch):
            tip = commit(f"refs/remotes/origin/feature/b{branch_no:05d}", tip)
        branch_no += 1
    out.append(b"reset refs/heads/main\nfrom :%d\n\n" % head)
    yield b"".join(out)


def generate(path: Path, commits: int, branches: int) -> Path:
    """Create the benchmark repository unless an identical one is cached at `path`."""
    stamp = path / "regsweep-bench.json"
    want = {"commits": commits, "branches": branches, "version": 2}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return path
    subprocess.run(["rm", "-rf", str(path)], check=True)
    path.mkdir(parents=True)
    _git(path, "init", "--quiet")
    _git(path, "remote", "add", "origin", "https://example.invalid/bench.git")
    started = time.monotonic()
    proc = subprocess.Popen(["git", "-C", str(path), "fast-import", "--quiet"], stdin=subprocess.PIPE)
    for chunk in _stream(commits, branches):
        proc.stdin.write(chunk)
    proc.stdin.close()
    if proc.wait():
        raise SystemExit("git fast-import failed")
    # Local branches mirror the remote ones (what a url-mode upstream serves as refs/heads/*).
    heads = _git(path, "for-each-ref", "--format=update refs/heads/%(refname:lstrip=3) %(objectname)",
                 "refs/remotes/origin/", capture_output=True).stdout
    _git(path, "update-ref", "--stdin", input=heads)
    # A clone as `git clone` leaves it: one pack, no commit-graph file (the conservative case).
    _git(path, "repack", "-adq")
    print(f"generated {commits} commits / {branches} branches in {time.monotonic() - started:.1f}s at {path}")
    stamp.write_text(json.dumps(want))
    return path


_CHILD = r"""
import json, resource, sys, time
from datetime import datetime, timezone
sys.path.insert(0, sys.argv[1])
from tasks.config.models import RegsweepConfig
from tasks.store.store import Store
from tasks.sources import git
t = time.perf_counter()
import pandas  # pyarrow imports it on first use; the snapshot flow's process has it loaded already
pandas_secs = time.perf_counter() - t
cfg = RegsweepConfig.model_validate({"store": sys.argv[3], "registry": {"url": "http://127.0.0.1:1"},
                                     "git": json.loads(sys.argv[4])})
t = time.perf_counter()
tables = git.extract(cfg, Store(cfg.store), datetime.now(timezone.utc))
secs = time.perf_counter() - t
print(json.dumps({"seconds": secs, "pandas_import": pandas_secs, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "refs": tables["git_refs"].num_rows, "commits": tables["git_commits"].num_rows}))
"""

_BASELINE = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import pandas, pyarrow, pygit2, tasks.config.models, tasks.store.store
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_regsweep(git_section: dict, store: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), "", str(store), json.dumps(git_section)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def run_peer(repo: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["git", "-C", str(repo), "log", "--all", "--format=%H %ct %P"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="where the generated repository is cached (default: a temp dir)")
    ap.add_argument("--commits", type=int, default=200_000)
    ap.add_argument("--branches", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--url", action="store_true",
                    help="also measure git.url mode (steady state: cache cloned once, untimed, then fetched)")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.gettempdir()) / "regsweep-bench-git"
    repo = generate(base / f"repo-{args.commits}-{args.branches}", args.commits, args.branches)
    store = base / "store"

    ours, peer = [], []
    for _ in range(args.runs):  # interleaved, so load from elsewhere on the machine hits both alike
        ours.append(run_regsweep({"path": str(repo)}, store))
        peer.append(run_peer(repo))
    baseline = json.loads(subprocess.run([sys.executable, "-c", _BASELINE, str(ROOT)], check=True,
                                         capture_output=True, text=True).stdout)["rss_mb"]
    t_ours = statistics.median(r["seconds"] for r in ours)
    rss = statistics.median(r["rss_mb"] for r in ours)
    t_peer = statistics.median(peer)
    print(f"repository: {ours[0]['commits']} commits, {ours[0]['refs']} refs (branches + tags)")
    print(f"regsweep extract: median {t_ours:.2f}s over {args.runs} runs "
          f"(runs: {', '.join(format(r['seconds'], '.2f') for r in ours)})")
    print(f"  (pandas, which pyarrow loads on first use, imported before timing as in the snapshot flow: "
          f"{statistics.median(r['pandas_import'] for r in ours):.2f}s)")
    print(f"regsweep peak RSS: median {rss:.0f} MB (process with imports alone: {baseline:.0f} MB)")
    print(f"peer git log --all --format='%H %ct %P': median {t_peer:.2f}s "
          f"(runs: {', '.join(format(t, '.2f') for t in peer)})")
    print(f"ratio regsweep / peer: {t_ours / t_peer:.2f}x")
    if args.url:
        section = {"url": repo.resolve().as_uri(), "cache": str(base / "url-cache")}
        cached = (base / "url-cache").exists()
        started = time.perf_counter()
        run_regsweep(section, store)  # the first run clones (libgit2, file://): not the steady state
        print(f"git.url first run ({'fetch into the cache kept from an earlier benchmark' if cached else 'clone into the cache'}): "
              f"{time.perf_counter() - started:.1f}s")
        url_runs = [run_regsweep(section, store) for _ in range(args.runs)]
        print(f"git.url steady state (fetch with prune + commit-graph + extract): median "
              f"{statistics.median(r['seconds'] for r in url_runs):.2f}s, {url_runs[0]['refs']} refs, "
              f"{url_runs[0]['commits']} commits, peak RSS {statistics.median(r['rss_mb'] for r in url_runs):.0f} MB")


if __name__ == "__main__":
    os.environ.setdefault("GIT_CONFIG_NOSYSTEM", "1")
    main()
