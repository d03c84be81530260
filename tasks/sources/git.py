"""Git source: branches, tags and the commit graph the git keep rules walk (docs/how-it-decides.md).

Where the repository comes from (`git:` in the configuration):

- `path`: a local clone, read in place and never written to.
- `url`: a bare cache clone under `git.cache` (default `<store>/git-cache` for a local store),
  created on first use and fetched with prune on every run, so branches deleted upstream stop
  keeping images; its branches are the upstream's refs/heads/* (git.remote does not apply).
  Only URLs that need no credentials are supported (user info or a query string in the URL is
  refused, as the cache would store it and messages would show it; http:// and git:// need
  git.allowInsecureTransport); for private repositories use `path`.

Branches are `refs/remotes/<remote>/*` (named without the `<remote>/` prefix, `<remote>/HEAD`
skipped) when the repository has any, else `refs/heads/*`: werf looks only at what was pushed,
and a mirror clone keeps branches in refs/heads. Tags are `refs/tags/*` dated by the tagger
(annotated) or the tagged commit (lightweight); tags of trees or blobs carry no commit and are
skipped.

Fail closed: a shallow clone, a repository with no branch at all, or a git source that is
enabled but not configured (`config.git_section_problem`) raise `GitError`; the snapshot is then
incomplete and no plan made from it deletes anything.

The commit graph is read with `git rev-list --parents --timestamp` when the git CLI is
installed (faster than libgit2's walker, ~1.3 s against ~2.5 s for 200,000 commits, and
several times faster again with the commit-graph file we keep in cache clones; see
benchmarks/bench_git.py), else with pygit2's walker; refs and tags are always read with pygit2.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pygit2

from tasks.config.models import GitConfig, RegsweepConfig, git_section_problem, git_url_problem
from tasks.common.errors import GitError
from tasks.common.redact import redact as redact_secrets
from tasks.common.progress import reporter
from tasks.store.schemas import GIT_COMMITS, GIT_REFS, TS
from tasks.store.store import Store

#: The remote of our own cache clones (git.remote names a remote of a clone at git.path).
CACHE_REMOTE = "origin"

_UNSHALLOW_HINT = ("it is a shallow clone: commits beyond its depth look unreachable, so history-based "
                   "keep rules would let images of live branches be deleted. Fix: run `git fetch --unshallow` "
                   "in it (CI checkouts: fetch-depth 0), or set git.url and let regsweep keep its own full clone")


def extract(config: RegsweepConfig, store: Store, now: datetime) -> dict[str, pa.Table]:
    """The `git_refs` and `git_commits` tables of a snapshot."""
    del now  # ref and commit dates are absolute; rules compare them with the snapshot time later
    return read_repository(config.git, store)


def read_repository(git: GitConfig | None, store: Store) -> dict[str, pa.Table]:
    """Read branches, tags and every commit reachable from them into GIT_REFS and GIT_COMMITS."""
    problem = git_section_problem(git, full_keys=True)
    if problem:
        raise GitError(git.path if git is not None and git.path else "(not configured)", problem)
    if git.url:
        # parse_config and flow parameters refused such a URL already; a config built otherwise
        # (model_construct) must not get past the source either.
        problem = git_url_problem(git.url, allow_insecure=git.allowInsecureTransport)
        if problem:
            raise GitError(redact(git.url), f"git.url {problem}")
    progress = reporter()
    label = git.path or redact(git.url)
    progress.start("git", f"git {label}: reading", None)
    if git.path:
        repo = open_repository(git.path)
    else:
        repo = sync_cache(git.url, cache_dir(git, store))
    refs = read_refs(repo, git.remote if git.path else CACHE_REMOTE, label)
    commits = read_commits(repo, sorted(set(refs.column("commit").to_pylist())), label)
    progress.finish("git", f"git {label}: {refs.num_rows} refs, {commits.num_rows} commits")
    return {"git_refs": refs, "git_commits": commits}


# -- opening ------------------------------------------------------------------------------------

def open_repository(path: str) -> pygit2.Repository:
    """Open the clone at exactly `path` (no search upwards); refuse shallow clones."""
    p = Path(path).expanduser()
    if not p.exists():
        raise GitError(path, "no such directory (git.path must be a clone of the repository)")
    try:
        repo = pygit2.Repository(str(p), flags=pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    except pygit2.GitError as e:
        raise GitError(path, f"not a git repository ({e})") from None
    if repo.is_shallow:
        raise GitError(path, _UNSHALLOW_HINT)
    return repo


def redact(url: str) -> str:
    """The URL fit for messages and logs: a password, a user name that is not an ssh account
    (a token used as user name: https://ghp_x@github.com/...), the query and the fragment are ***."""
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return "(git.url, not a valid URL)"
    netloc = parts.netloc
    if "@" in netloc:
        host = netloc.rsplit("@", 1)[1]
        if password is not None:
            netloc = f"{username}:***@{host}" if "ssh" in parts.scheme else f"***@{host}"
        elif "ssh" not in parts.scheme:
            netloc = f"***@{host}"
    if "://" in url and (netloc != parts.netloc or parts.query or parts.fragment):
        url = urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "",
                          "***" if parts.fragment else ""))
    return redact_secrets(url)


def cache_dir(git: GitConfig, store: Store) -> Path:
    """Where `git.url` is cloned: git.cache, else <store>/git-cache for a local store."""
    if git.cache:
        return Path(git.cache).expanduser()
    if not store.local:
        raise GitError(redact(git.url or ""), f"git.cache must be set: the store {store.url} is not a local path")
    return Path(store.root) / "git-cache"


def _cache_name(url: str) -> str:
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))[:40]
    return f"{tail or 'repo'}-{hashlib.sha256(url.encode()).hexdigest()[:12]}.git"


def sync_cache(url: str, cache: Path, remote: str = CACHE_REMOTE) -> pygit2.Repository:
    """Clone `url` bare into the cache on first use, else fetch it with prune; returns the repository."""
    shown = redact(url)
    # The cache's config would keep credentials on disk, next to the snapshots. The transport
    # (http://, git://) was the configuration's to allow.
    problem = git_url_problem(url, allow_insecure=True)
    if problem:
        raise GitError(shown, f"git.url {problem}")
    target = cache / _cache_name(url)
    refspecs = [f"+refs/heads/*:refs/remotes/{remote}/*", "+refs/tags/*:refs/tags/*"]
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GitError(shown, f"cannot create the cache directory {cache}: {e.strerror}") from None
    if target.exists():
        try:
            repo = pygit2.Repository(str(target), flags=pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
            _fetch(repo, remote)
        except (pygit2.GitError, KeyError) as e:
            raise GitError(shown, f"cannot fetch into the cache {target} (delete it to clone afresh): {e}") from None
    else:
        # Clone aside and rename, so an interrupted first clone is never mistaken for a cache.
        staging = Path(tempfile.mkdtemp(prefix=".clone-", dir=cache))
        try:
            repo = pygit2.init_repository(str(staging), bare=True)
            repo.remotes.create(remote, url, refspecs[0])
            repo.remotes.add_fetch(remote, refspecs[1])
            _fetch(repo, remote)
            staging.rename(target)
        except (pygit2.GitError, OSError) as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise GitError(shown, f"cannot clone into the cache {target}: {e}") from None
        repo = pygit2.Repository(str(target), flags=pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    _write_commit_graph(repo)
    return repo


def _fetch(repo: pygit2.Repository, remote: str) -> None:
    repo.remotes[remote].fetch(prune=pygit2.enums.FetchPrune.PRUNE)


def _git_env() -> dict[str, str]:
    # GIT_DIR & co. from the caller's environment must not redirect us to another repository;
    # replace refs are ignored, as libgit2 (our ref reader) ignores them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_NO_REPLACE_OBJECTS="1", GIT_TERMINAL_PROMPT="0")
    return env


def _write_commit_graph(repo: pygit2.Repository) -> None:
    """Keep a commit-graph file in our own cache: it makes rev-list several times faster."""
    if shutil.which("git"):
        subprocess.run(["git", f"--git-dir={repo.path}", "commit-graph", "write", "--reachable", "--split",
                        "--no-progress"], env=_git_env(), capture_output=True)  # best effort: only speed


# -- refs ---------------------------------------------------------------------------------------

@dataclass
class _Refs:
    name: list[str]
    kind: list[str]
    commit: list[str]
    date: list[int]          # microseconds since the epoch, UTC
    annotated: list[bool]

    def add(self, name: str, kind: str, commit: pygit2.Commit, seconds: int, annotated: bool) -> None:
        self.name.append(name)
        self.kind.append(kind)
        self.commit.append(str(commit.id))
        self.date.append(seconds * 1_000_000)
        self.annotated.append(annotated)


def _peel_commit(obj: pygit2.Object) -> pygit2.Commit | None:
    try:
        return obj.peel(pygit2.Commit)
    except (pygit2.InvalidSpecError, ValueError, pygit2.GitError):
        return None  # a tag of a tree or a blob


def _ref_object(repo: pygit2.Repository, ref_name: str, label: str) -> pygit2.Object:
    """What a ref points at; a dangling ref is an incomplete repository, not an absent branch."""
    try:
        return repo[repo.references[ref_name].resolve().target]
    except (KeyError, pygit2.GitError) as e:
        raise GitError(label, f"{ref_name} cannot be resolved ({e}); run `git fsck` / `git fetch` in it") from None


def read_refs(repo: pygit2.Repository, remote: str, label: str) -> pa.Table:
    """Branches (remote-tracking when present, else local) and tags as a GIT_REFS table."""
    names = list(repo.references)
    remote_prefix = f"refs/remotes/{remote}/"
    remote_branches = [n for n in names if n.startswith(remote_prefix) and n != remote_prefix + "HEAD"]
    if remote_branches:
        branches = [(n, n[len(remote_prefix):]) for n in remote_branches]
    else:
        branches = [(n, n[len("refs/heads/"):]) for n in names if n.startswith("refs/heads/")]
    if not branches:
        raise GitError(label, f"no branches: neither refs/remotes/{remote}/* nor refs/heads/* exist "
                       "(git history rules need the repository's branches)")
    out = _Refs([], [], [], [], [])
    for ref_name, name in sorted(branches, key=lambda b: b[1]):
        commit = _peel_commit(_ref_object(repo, ref_name, label))
        if commit is not None:
            out.add(name, "branch", commit, commit.commit_time, False)
    for ref_name in sorted(n for n in names if n.startswith("refs/tags/")):
        obj = _ref_object(repo, ref_name, label)
        commit = _peel_commit(obj)
        if commit is None:
            continue
        if isinstance(obj, pygit2.Tag):
            # A tag without a tagger (very old git) is dated like a lightweight tag.
            when = obj.tagger.time if obj.tagger is not None else commit.commit_time
            out.add(ref_name[len("refs/tags/"):], "tag", commit, when, True)
        else:
            out.add(ref_name[len("refs/tags/"):], "tag", commit, commit.commit_time, False)
    return pa.Table.from_arrays(
        [pa.array(out.name, pa.string()), pa.array(out.kind, pa.string()), pa.array(out.commit, pa.string()),
         pa.array(out.date, pa.int64()).cast(TS), pa.array(out.annotated, pa.bool_())],
        schema=GIT_REFS)


# -- commits ------------------------------------------------------------------------------------

def read_commits(repo: pygit2.Repository, tips: list[str], label: str, *, use_cli: bool | None = None) -> pa.Table:
    """Every commit reachable from `tips` with its committer time and parents (GIT_COMMITS)."""
    if not tips:
        return GIT_COMMITS.empty_table()
    if use_cli is None:
        use_cli = shutil.which("git") is not None
    return _commits_cli(repo, tips, label) if use_cli else _commits_pygit2(repo, tips, label)


def _commits_cli(repo: pygit2.Repository, tips: list[str], label: str) -> pa.Table:
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    # Lines "<committer epoch> <sha> <parent sha>..." are streamed through Arrow's CSV reader in
    # blocks and split there, so neither the whole output nor a Python object per commit is held.
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(["git", f"--git-dir={repo.path}", "rev-list", "--parents", "--timestamp", "--stdin"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, env=_git_env())
        try:
            # rev-list reads all of stdin before it writes anything, so this cannot deadlock.
            proc.stdin.write(("\n".join(tips) + "\n").encode())
            proc.stdin.close()
            batches = []
            try:
                reader = pcsv.open_csv(
                    proc.stdout,
                    read_options=pcsv.ReadOptions(column_names=["line"], block_size=1 << 20, use_threads=False),
                    parse_options=pcsv.ParseOptions(delimiter="\x01", quote_char=False, escape_char=False),
                    convert_options=pcsv.ConvertOptions(column_types={"line": pa.string()}))
                for batch in reader:
                    fields = pc.split_pattern(batch.column(0), " ")
                    seconds = pc.list_element(fields, 0).cast(pa.int64())
                    batches.append(pa.record_batch(
                        [pc.list_element(fields, 1),
                         pc.multiply(seconds, pa.scalar(1_000_000, pa.int64())).cast(TS),
                         pc.list_slice(fields, 2).cast(pa.list_(pa.string()))],
                        schema=GIT_COMMITS))
            except pa.ArrowInvalid as e:
                if "Empty CSV file" not in str(e):
                    raise GitError(label, f"unexpected git rev-list output: {e}") from None
        finally:
            proc.stdout.close()
            code = proc.wait()
        if code:
            errors.seek(0)
            detail = "; ".join(errors.read().decode(errors="replace").split("\n")).strip("; ")
            raise GitError(label, f"git rev-list failed: {detail}")
    return pa.Table.from_batches(batches, schema=GIT_COMMITS)


def _commits_pygit2(repo: pygit2.Repository, tips: list[str], label: str) -> pa.Table:
    shas: list[str] = []
    times: list[int] = []
    offsets: list[int] = [0]
    parents: list[str] = []
    try:
        walker = repo.walk(None, pygit2.enums.SortMode.NONE)
        for tip in tips:
            walker.push(pygit2.Oid(hex=tip))
        for c in walker:
            shas.append(str(c.id))
            times.append(c.commit_time * 1_000_000)
            parents.extend(str(p) for p in c.parent_ids)
            offsets.append(len(parents))
    except (pygit2.GitError, KeyError) as e:
        raise GitError(label, f"cannot walk the history: {e}") from None
    return pa.Table.from_arrays(
        [pa.array(shas, pa.string()), pa.array(times, pa.int64()).cast(TS),
         pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(parents, pa.string()))],
        schema=GIT_COMMITS)
