"""Git source against real repositories written with pygit2 (tests/support/gitrepo.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pygit2
import pytest
from pydantic import ValidationError

from tasks.sources import git
from tasks.config.models import RegsweepConfig, parse_config
from tasks.common.errors import ConfigError, GitError
from tasks.store.schemas import GIT_COMMITS, GIT_REFS
from tasks.snapshot.take import run_source
from tasks.store.store import Store
from tests.support.configs import config
from tests.support.gitrepo import RepoBuilder, shallow_clone
from tests.support.gitrepo import git_repo  # noqa: F401 (fixtures)

UTC = timezone.utc
CEST = timezone(timedelta(hours=2))
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=30)


REGISTRY = "http://127.0.0.1:5000"   # never contacted: the git source reads no registry


def git_config(tmp_path: Path, **git_section):
    """A parsed configuration with this `git:` section (the registry is never contacted)."""
    return parse_config(config(store=tmp_path / "store", url=REGISTRY, git=git_section))


def extract(tmp_path: Path, **git_section) -> tuple[dict, dict]:
    """Run the source; return ({name: (kind, commit, date, annotated)}, {sha: (committed, parents)})."""
    cfg = parse_config(config(store=tmp_path / "store", url=REGISTRY, git=git_section))
    tables = git.extract(cfg, Store(cfg.store), NOW)
    assert tables["git_refs"].schema == GIT_REFS
    assert tables["git_commits"].schema == GIT_COMMITS
    refs = {(r["kind"], r["name"]): (r["commit"], r["date"], r["annotated"])
            for r in tables["git_refs"].to_pylist()}
    commits = {r["commit"]: (r["committed"], r["parents"]) for r in tables["git_commits"].to_pylist()}
    assert len(commits) == tables["git_commits"].num_rows  # each commit once
    return refs, commits


def test_branches_are_the_remote_tracking_refs_local_and_unpushed_work_is_ignored(git_repo, tmp_path):
    main1 = git_repo.commit("main", T0)
    feat = git_repo.commit("feature/login", T0 + timedelta(hours=1), parents=[main1])
    main2 = git_repo.commit("main", T0 + timedelta(hours=2))
    local_only = git_repo.commit("wip", T0 + timedelta(hours=3), parents=[main2], push=False)
    unpushed = git_repo.commit("main", T0 + timedelta(hours=4), push=False)
    # origin/HEAD is a symbolic ref every clone has; it is not a branch.
    git_repo.repo.references.create("refs/remotes/origin/HEAD", "refs/remotes/origin/main")

    refs, commits = extract(tmp_path, path=str(git_repo.path))

    assert refs == {("branch", "main"): (main2, T0 + timedelta(hours=2), False),
                    ("branch", "feature/login"): (feat, T0 + timedelta(hours=1), False)}
    assert set(commits) == {main1, feat, main2}
    assert local_only not in commits and unpushed not in commits


def test_without_remote_tracking_refs_local_branches_are_used(tmp_path):
    repo = RepoBuilder(tmp_path / "repo", remote=None)
    a = repo.commit("main", T0)
    b = repo.commit("release", T0 + timedelta(minutes=5), parents=[a])

    refs, commits = extract(tmp_path, path=str(repo.path))

    assert refs == {("branch", "main"): (a, T0, False), ("branch", "release"): (b, T0 + timedelta(minutes=5), False)}
    assert commits == {a: (T0, []), b: (T0 + timedelta(minutes=5), [a])}


def test_the_configured_remote_names_the_branches(tmp_path):
    repo = RepoBuilder(tmp_path / "repo", remote="upstream")
    a = repo.commit("main", T0)
    repo.commit("local", T0 + timedelta(minutes=1), push=False)

    refs, _ = extract(tmp_path, path=str(repo.path), remote="upstream")

    assert refs == {("branch", "main"): (a, T0, False)}


def test_tag_dates_annotated_by_tagger_lightweight_by_commit_and_non_commit_tags_skipped(git_repo, tmp_path):
    old = git_repo.commit("main", datetime(2025, 1, 10, 9, 30, 15, tzinfo=CEST))
    head = git_repo.commit("main", T0)
    git_repo.tag("v1.0.0", old, when=datetime(2025, 2, 1, 8, 0, 1, tzinfo=CEST), annotated=True)
    git_repo.tag("v1.0.1-light", old)
    git_repo.tag("blob-tag", git_repo.blob("not a commit"))
    git_repo.tag("tree-tag", str(git_repo.repo[head].tree_id), when=T0, annotated=True)

    refs, commits = extract(tmp_path, path=str(git_repo.path))

    assert refs[("tag", "v1.0.0")] == (old, datetime(2025, 2, 1, 6, 0, 1, tzinfo=UTC), True)
    assert refs[("tag", "v1.0.1-light")] == (old, datetime(2025, 1, 10, 7, 30, 15, tzinfo=UTC), False)
    assert ("tag", "blob-tag") not in refs and ("tag", "tree-tag") not in refs
    assert commits[old] == (datetime(2025, 1, 10, 7, 30, 15, tzinfo=UTC), [])


def test_commits_only_reachable_from_a_tag_are_in_the_graph(git_repo, tmp_path):
    base = git_repo.commit("main", T0)
    hotfix = git_repo.commit("hotfix", T0 + timedelta(hours=1), parents=[base])
    orphaned = git_repo.commit("abandoned", T0 + timedelta(hours=2), parents=[base])
    git_repo.tag("v0.9.1", hotfix, when=T0 + timedelta(hours=5), annotated=True)
    git_repo.delete_branch("hotfix")
    git_repo.delete_branch("abandoned")

    refs, commits = extract(tmp_path, path=str(git_repo.path))

    assert refs[("tag", "v0.9.1")] == (hotfix, T0 + timedelta(hours=5), True)
    assert ("branch", "hotfix") not in refs
    assert set(commits) == {base, hotfix}
    assert orphaned not in commits


def _graph(repo: RepoBuilder) -> dict[str, str]:
    """main ── a ─ b ─────── m1 ─ m2(merge release) ; feature forks at a, merged at m1;
    release forks at b with two commits; topic forks at feature's first commit."""
    c = {}
    c["a"] = repo.commit("main", T0)
    c["b"] = repo.commit("main", T0 + timedelta(hours=1))
    c["f1"] = repo.commit("feature", T0 + timedelta(hours=2), parents=[c["a"]])
    c["f2"] = repo.commit("feature", T0 + timedelta(hours=3))
    c["t1"] = repo.commit("topic", T0 + timedelta(hours=4), parents=[c["f1"]])
    c["r1"] = repo.commit("release", T0 + timedelta(hours=5), parents=[c["b"]])
    c["r2"] = repo.commit("release", T0 + timedelta(hours=6))
    c["m1"] = repo.merge("main", "feature", T0 + timedelta(hours=7))
    c["m2"] = repo.merge("main", "release", T0 + timedelta(hours=8))
    repo.tag("v1", c["r1"], when=T0 + timedelta(hours=9), annotated=True)
    return c


def test_commit_graph_of_several_branches_with_merges_has_exact_parents_and_dates(git_repo, tmp_path):
    c = _graph(git_repo)

    refs, commits = extract(tmp_path, path=str(git_repo.path))

    assert {name for kind, name in refs if kind == "branch"} == {"main", "feature", "topic", "release"}
    assert refs[("branch", "main")] == (c["m2"], T0 + timedelta(hours=8), False)
    assert refs[("branch", "topic")] == (c["t1"], T0 + timedelta(hours=4), False)
    hours = {"a": 0, "b": 1, "f1": 2, "f2": 3, "t1": 4, "r1": 5, "r2": 6, "m1": 7, "m2": 8}
    parents = {"a": [], "b": ["a"], "f1": ["a"], "f2": ["f1"], "t1": ["f1"], "r1": ["b"], "r2": ["r1"],
               "m1": ["b", "f2"], "m2": ["m1", "r2"]}
    assert commits == {c[k]: (T0 + timedelta(hours=hours[k]), [c[p] for p in parents[k]]) for k in hours}


def test_commits_of_merged_then_deleted_branches_are_reached_through_second_parents(git_repo, tmp_path):
    c = _graph(git_repo)
    git_repo.delete_branch("feature")
    git_repo.delete_branch("release")
    git_repo.delete_branch("topic")
    git_repo.repo.references.delete("refs/tags/v1")

    refs, commits = extract(tmp_path, path=str(git_repo.path))

    assert set(refs) == {("branch", "main")}
    assert set(commits) == {c[k] for k in ("a", "b", "f1", "f2", "r1", "r2", "m1", "m2")}
    assert commits[c["m1"]][1] == [c["b"], c["f2"]]


def test_git_cli_and_libgit2_walker_read_the_same_graph(git_repo):
    _graph(git_repo)
    repo = git.open_repository(str(git_repo.path))
    tips = sorted(set(git.read_refs(repo, "origin", "test").column("commit").to_pylist()))

    cli = git.read_commits(repo, tips, "test", use_cli=True).sort_by("commit")
    walker = git.read_commits(repo, tips, "test", use_cli=False).sort_by("commit")

    assert cli.num_rows == 9
    assert cli.equals(walker)


def test_without_a_git_cli_the_source_still_works(git_repo, tmp_path, monkeypatch):
    c = _graph(git_repo)
    with_cli = extract(tmp_path, path=str(git_repo.path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # an image that ships no git binary

    assert extract(tmp_path, path=str(git_repo.path)) == with_cli
    assert len(with_cli[1]) == len(c)


def test_commit_date_is_the_committer_date_not_the_author_date(git_repo, tmp_path):
    # A rebased or cherry-picked commit keeps its old author date; rules judge the committer date.
    sha = git_repo.commit("main", T0, author_when=T0 - timedelta(days=40))

    refs, commits = extract(tmp_path, path=str(git_repo.path))

    assert refs[("branch", "main")] == (sha, T0, False)
    assert commits[sha] == (T0, [])


def test_shallow_clone_is_refused_with_how_to_fix_it(git_repo, tmp_path):
    for hour in range(3):
        git_repo.commit("main", T0 + timedelta(hours=hour))
    shallow = shallow_clone(git_repo.path, tmp_path / "ci-checkout")

    with pytest.raises(GitError) as err:
        extract(tmp_path, path=str(shallow))

    message = str(err.value)
    assert message.startswith(f"git {shallow}: it is a shallow clone")
    assert "history-based keep rules would let images of live branches be deleted" in message
    assert "git fetch --unshallow" in message


def test_missing_path_and_non_repository_name_the_path(tmp_path):
    missing = tmp_path / "no-such-checkout"
    with pytest.raises(GitError, match=f"^git {missing}: no such directory"):
        extract(tmp_path, path=str(missing))

    plain = tmp_path / "plain-dir"
    plain.mkdir()
    with pytest.raises(GitError, match=f"^git {plain}: not a git repository"):
        extract(tmp_path, path=str(plain))


def test_repository_without_branches_is_refused(tmp_path):
    pygit2.init_repository(str(tmp_path / "empty"))
    with pytest.raises(GitError, match="no branches: neither refs/remotes/origin/\\* nor refs/heads/\\* exist"):
        extract(tmp_path, path=str(tmp_path / "empty"))


def test_dangling_branch_ref_fails_instead_of_dropping_the_branch(git_repo, tmp_path):
    git_repo.commit("main", T0)
    git_repo.repo.references.create("refs/remotes/origin/release", "refs/remotes/origin/gone")

    with pytest.raises(GitError, match="refs/remotes/origin/release cannot be resolved"):
        extract(tmp_path, path=str(git_repo.path))


@pytest.mark.parametrize("use_cli", [True, False], ids=["git-cli", "libgit2"])
def test_missing_commit_in_history_fails_instead_of_cutting_the_graph(git_repo, tmp_path, use_cli):
    root = git_repo.commit("main", T0)
    git_repo.commit("main", T0 + timedelta(hours=1))
    git_repo.commit("main", T0 + timedelta(hours=2))
    # A damaged clone: the root commit's object is gone (loose objects live at objects/xx/yyyy...).
    (git_repo.path / ".git" / "objects" / root[:2] / root[2:]).unlink()
    repo = git.open_repository(str(git_repo.path))
    tips = git.read_refs(repo, "origin", "test").column("commit").to_pylist()

    with pytest.raises(GitError, match="^git test: (git rev-list failed|cannot walk the history)") as err:
        git.read_commits(repo, tips, "test", use_cli=use_cli)
    assert root in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.unit
def test_enabled_git_policies_without_a_git_section_fail_with_what_to_set(tmp_path):
    cfg = parse_config(config(store=tmp_path / "store", url=REGISTRY))
    with pytest.raises(GitError) as err:
        git.extract(cfg, Store(cfg.store), NOW)
    assert "set git.path (a clone) or git.url, or set cleanup.disableGitHistoryBasedPolicy: true" in str(err.value)


def test_path_and_url_together_are_refused(git_repo, tmp_path):
    section = {"path": str(git_repo.path), "url": git_repo.path.as_uri()}
    with pytest.raises(ConfigError, match="^git: set `path` or `url`, not both$"):
        parse_config(config(store=tmp_path / "store", url=REGISTRY, git=section))
    # Flow parameters from a deployment skip parse_config: the source refuses too.
    cfg = RegsweepConfig.model_validate({"store": str(tmp_path / "store"), "registry": {"url": "http://127.0.0.1:5000"},
                                         "git": section})
    with pytest.raises(GitError, match="set git.path or git.url, not both"):
        git.extract(cfg, Store(cfg.store), NOW)


def test_url_is_cloned_into_the_cache_then_fetched_with_prune(git_repo, tmp_path):
    main1 = git_repo.commit("main", T0)
    feat = git_repo.commit("feature", T0 + timedelta(hours=1), parents=[main1])
    git_repo.tag("v1", main1)
    git_repo.tag("v2-dropped", feat, when=T0 + timedelta(hours=2), annotated=True)
    url = git_repo.path.as_uri()
    cache = tmp_path / "cache"

    refs, commits = extract(tmp_path, url=url, cache=str(cache))
    assert set(refs) == {("branch", "main"), ("branch", "feature"), ("tag", "v1"), ("tag", "v2-dropped")}
    assert set(commits) == {main1, feat}
    [clone] = [p for p in cache.iterdir()]
    assert pygit2.Repository(str(clone)).is_bare

    main2 = git_repo.commit("main", T0 + timedelta(hours=3))
    git_repo.delete_branch("feature")
    git_repo.repo.references.delete("refs/tags/v2-dropped")

    refs, commits = extract(tmp_path, url=url, cache=str(cache))
    assert refs == {("branch", "main"): (main2, T0 + timedelta(hours=3), False),
                    ("tag", "v1"): (main1, T0, False)}
    assert set(commits) == {main1, main2}
    assert [p for p in cache.iterdir()] == [clone]  # the same cache, fetched, not a second clone


def test_url_cache_defaults_to_the_store(git_repo, tmp_path):
    sha = git_repo.commit("main", T0)

    # git.remote names a remote of a clone at git.path; the cache is regsweep's own clone.
    refs, _ = extract(tmp_path, url=git_repo.path.as_uri(), remote="upstream")

    assert refs == {("branch", "main"): (sha, T0, False)}
    assert len(list((tmp_path / "store" / "git-cache").glob("repo-*.git"))) == 1


def test_unreachable_url_fails_and_leaves_no_cache(tmp_path):
    url = (tmp_path / "gone.git").as_uri()
    with pytest.raises(GitError, match=f"^git {url}: cannot clone into the cache"):
        extract(tmp_path, url=url, cache=str(tmp_path / "cache"))
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("url", ["https://ci:s3cret-SENTINEL@git.example.invalid/team/app.git",
                                 "https://ghp_SENTINEL0123456789@github.com/team/app.git",
                                 "https://git.example.invalid/team/app.git?private_token=glpat-SENTINEL"])
def test_url_with_credentials_is_refused_at_load_without_showing_them(tmp_path, url):
    with pytest.raises(ConfigError) as err:
        git_config(tmp_path, url=url, cache=str(tmp_path / "c"))
    assert err.value.key == "git.url"
    assert "SENTINEL" not in str(err.value)
    # Flow parameters are validated by the same model, and pydantic's report quotes no input.
    with pytest.raises(ValidationError) as verr:
        RegsweepConfig.model_validate({"store": str(tmp_path / "store"), "registry": {"url": "http://127.0.0.1:5000"},
                                       "git": {"url": url}})
    assert "SENTINEL" not in str(verr.value)
    assert not (tmp_path / "c").exists()


def test_a_cache_sync_refuses_credentials_without_showing_them(tmp_path):
    """Callers that build no configuration (or bypass it) meet the same refusal in the source."""
    with pytest.raises(GitError) as err:
        git.sync_cache("https://ghp_SENTINEL0123456789@github.com/team/app.git", tmp_path / "c")
    assert str(err.value).startswith("git https://***@github.com/team/app.git: git.url must not contain credentials")
    assert "SENTINEL" not in str(err.value)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("scheme", ["http", "git"])
def test_unauthenticated_transports_need_an_explicit_allow(tmp_path, scheme):
    url = f"{scheme}://git.example.invalid/team/app.git"
    with pytest.raises(ConfigError, match=rf"^git.url: {scheme}:// fetches the history unauthenticated .* set "
                                          r"git.allowInsecureTransport: true$"):
        git_config(tmp_path, url=url)
    assert git_config(tmp_path, url=url, allowInsecureTransport=True).git.url == url


def test_ssh_account_names_and_local_paths_are_accepted(git_repo, tmp_path):
    for url in ("ssh://git@git.example.invalid/team/app.git", "git@github.com:team/app.git",
                git_repo.path.as_uri(), "https://git.example.invalid/team/app.git"):
        assert git_config(tmp_path, url=url).git.url == url


def test_run_source_writes_both_tables_with_exact_timestamps(git_repo, tmp_path):
    c = _graph(git_repo)
    cfg = parse_config(config(store=tmp_path / "store", url=REGISTRY, git={"path": str(git_repo.path)}))
    staging = tmp_path / "staging"
    staging.mkdir()

    status = run_source("git", cfg, str(staging), NOW)

    assert status.status == "ok"
    assert status.tables == {"git_refs": 5, "git_commits": 9}
    commits = pq.read_table(staging / "git_commits.parquet").to_pylist()
    assert {r["commit"]: r["committed"] for r in commits}[c["m2"]] == T0 + timedelta(hours=8)
    refs = pq.read_table(staging / "git_refs.parquet").to_pylist()
    assert {r["name"]: r["date"] for r in refs}["v1"] == T0 + timedelta(hours=9)


def test_run_source_marks_a_shallow_clone_failed_and_writes_no_table(git_repo, tmp_path):
    git_repo.commit("main", T0)
    git_repo.commit("main", T0 + timedelta(hours=1))
    shallow = shallow_clone(git_repo.path, tmp_path / "shallow")
    staging = tmp_path / "staging"
    staging.mkdir()

    cfg = parse_config(config(store=tmp_path / "store", url=REGISTRY, git={"path": str(shallow)}))
    status = run_source("git", cfg, str(staging), NOW)

    assert status.status == "failed"
    assert status.error.startswith(f"git {shallow}: it is a shallow clone")
    assert "git fetch --unshallow" in status.error
    assert list(staging.iterdir()) == []
