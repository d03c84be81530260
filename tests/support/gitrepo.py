"""Real git repositories with controlled dates, built with pygit2 (no git CLI, no mocks).

`RepoBuilder` writes commits, merges and tags straight into a non-bare repository with the
committer, author and tagger times a test chooses, so that rules judged on dates (branch head
dates, tag dates, `imagesPerReference.in`) can be checked to the second. Branches are written
both as `refs/heads/<b>` and, like a clone that has fetched, as `refs/remotes/<remote>/<b>`.

Git keeps whole seconds: a `when` with microseconds is refused rather than silently truncated,
so a test's expected dates always round-trip exactly.
"""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from pathlib import Path

import pygit2
import pytest

__all__ = ["RepoBuilder", "git_repo", "shallow_clone", "git_cli"]

_NAME, _EMAIL = "regsweep test", "test@example.invalid"


def _signature(when: datetime) -> pygit2.Signature:
    if when.tzinfo is None:
        raise ValueError(f"{when!r} has no timezone; git dates must be aware")
    if when.microsecond:
        raise ValueError(f"{when!r} has microseconds; git keeps whole seconds")
    offset = int(when.utcoffset().total_seconds() // 60)
    return pygit2.Signature(_NAME, _EMAIL, int(when.timestamp()), offset)


class RepoBuilder:
    """A non-bare repository at `path` whose history a test writes commit by commit."""

    def __init__(self, path: Path, *, remote: str | None = "origin"):
        self.path = Path(path)
        self.remote = remote
        self.repo = pygit2.init_repository(str(self.path), bare=False)
        if remote and remote not in self.repo.remotes.names():
            # The URL is never fetched; it only makes the remote exist as in a real clone.
            self.repo.remotes.create(remote, self.path.resolve().as_uri())
        self._count = 0

    # -- objects --------------------------------------------------------------------------------
    def blob(self, data: str | bytes) -> str:
        """Write a blob (e.g. to tag a non-commit object); returns its sha."""
        return str(self.repo.create_blob(data.encode() if isinstance(data, str) else data))

    def _tree(self, base: pygit2.Tree | None, files: dict) -> pygit2.Oid:
        """`base` with `files` ({"dir/name": str | bytes | None}) written; None removes a path."""
        nested: dict[str, dict] = {}
        tb = self.repo.TreeBuilder(base) if base is not None else self.repo.TreeBuilder()
        for name, content in files.items():
            head, sep, rest = name.partition("/")
            if sep:
                nested.setdefault(head, {})[rest] = content
            elif content is None:
                if tb.get(head) is not None:
                    tb.remove(head)
            else:
                data = content.encode() if isinstance(content, str) else content
                tb.insert(head, self.repo.create_blob(data), pygit2.GIT_FILEMODE_BLOB)
        for head, sub in nested.items():
            entry = base[head] if base is not None and head in base else None
            sub_base = self.repo[entry.id] if entry is not None and entry.type_str == "tree" else None
            tb.insert(head, self._tree(sub_base, sub), pygit2.GIT_FILEMODE_TREE)
        return tb.write()

    # -- refs -----------------------------------------------------------------------------------
    def head(self, branch: str) -> str | None:
        """The sha `refs/heads/<branch>` points at, or None."""
        ref = self.repo.references.get(f"refs/heads/{branch}")
        return str(ref.target) if ref is not None else None

    def _set_branch(self, branch: str, sha: str, push: bool) -> None:
        oid = pygit2.Oid(hex=sha)
        self.repo.references.create(f"refs/heads/{branch}", oid, force=True)
        if push and self.remote:
            self.repo.references.create(f"refs/remotes/{self.remote}/{branch}", oid, force=True)
        if self.repo.head_is_unborn:
            # Make HEAD name a real branch, as in any clone (git clone follows it).
            self.repo.set_head(f"refs/heads/{branch}")

    def commit(self, branch: str, when: datetime, *, message: str = "",
               parents: list[str] | None = None, files: dict | None = None, push: bool = True,
               author_when: datetime | None = None) -> str:
        """Commit on `branch` with committer time `when` (author time too, unless `author_when`).

        parents default to the branch's current head (none for a new branch); files are
        written on top of the first parent's tree. push=False leaves the remote-tracking ref
        alone (a local-only branch or an unpushed commit).
        """
        if parents is None:
            current = self.head(branch)
            parents = [current] if current else []
        base = self.repo[parents[0]].peel(pygit2.Tree) if parents else None
        tree = self._tree(base, files or {}) if (files or base is None) else base.id
        self._count += 1
        sig = _signature(when)
        author = _signature(author_when) if author_when is not None else sig
        oid = self.repo.create_commit(None, author, sig, message or f"commit {self._count} on {branch}\n",
                                      tree, [pygit2.Oid(hex=p) for p in parents])
        sha = str(oid)
        self._set_branch(branch, sha, push)
        return sha

    def merge(self, branch: str, other: str, when: datetime, *, push: bool = True) -> str:
        """A merge commit of `other`'s head into `branch`: two parents, branch's head first."""
        ours, theirs = self.head(branch), self.head(other)
        if ours is None or theirs is None:
            raise ValueError(f"cannot merge {other!r} into {branch!r}: both branches must exist")
        return self.commit(branch, when, message=f"Merge branch '{other}' into {branch}\n",
                           parents=[ours, theirs], push=push)

    def tag(self, name: str, target: str, *, when: datetime | None = None, annotated: bool = False,
            message: str = "") -> None:
        """Tag any object; annotated tags carry tagger time `when`."""
        obj = self.repo[target]
        if annotated:
            if when is None:
                raise ValueError("an annotated tag needs `when` (its tagger date)")
            self.repo.create_tag(name, obj.id, obj.type, _signature(when), message or f"tag {name}\n")
        else:
            self.repo.references.create(f"refs/tags/{name}", obj.id, force=True)

    def delete_branch(self, branch: str) -> None:
        """Remove the branch locally and from the remote-tracking refs (a deleted remote branch)."""
        for name in (f"refs/heads/{branch}", f"refs/remotes/{self.remote}/{branch}" if self.remote else None):
            if name and self.repo.references.get(name) is not None:
                self.repo.references.delete(name)


def git_cli(*args: str, cwd: Path | None = None) -> str:
    """Run the git CLI (only for what pygit2 cannot do, e.g. shallow clones); returns stdout."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def shallow_clone(source: Path, dest: Path, depth: int = 1) -> Path:
    """`git clone --depth N` of a builder repository (every branch), as CI systems make them."""
    git_cli("clone", "--quiet", f"--depth={depth}", "--no-single-branch",
            Path(source).resolve().as_uri(), str(dest))
    return Path(dest)


@pytest.fixture
def git_repo(tmp_path: Path) -> RepoBuilder:
    """An empty repository with an `origin` remote, written to by the test."""
    return RepoBuilder(tmp_path / "repo")
