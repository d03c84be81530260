"""Git keep policies on real repositories (pygit2, controlled dates) read by the real git source.

The first group reproduces behaviours from werf's own cleanup tests; the rest are regsweep's:
merges, content-based digests on several commits, abbreviated and vanished commits, policy
order independence and the reasons a plan gives.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pandas as pd
import pytest

from tasks.sources import git as git_source
from tasks.config.models import parse_config
from tasks.plan.evaluate import plan_rows
from tasks.store.store import Store
from tests.support.gitrepo import RepoBuilder
from tests.support.snapshots import NOW, OLD, REGISTRY, Snap, decisions, reasons
from tests.support.gitrepo import git_repo  # noqa: F401 (fixtures)

h = lambda n: NOW - timedelta(hours=n)  # noqa: E731


def cfg(repo: RepoBuilder, policies, **cleanup):
    return parse_config({"registry": {"url": REGISTRY}, "git": {"path": str(repo.path)},
                         "helm": {"enabled": False},
                         "cleanup": {"keepPolicies": policies, "disableKubernetesBasedPolicy": True,
                                     "disableBuiltWithinLastNHoursPolicy": True, **cleanup}})


def plan(repo: RepoBuilder, snap: Snap, policies, **cleanup):
    c = cfg(repo, policies, **cleanup)
    snap.git = {k: v.to_pandas() for k, v in git_source.extract(c, Store(str(repo.path.parent / "store")), NOW).items()}
    snap.skipped |= {"kubernetes", "helm"}
    return plan_rows(snap.tables(), snap.meta(), c).frame


def kept(p) -> set[str]:
    return {t for (_, t), a in decisions(p).items() if a == "keep"}


# --- werf's behaviours ------------------------------------------------------------------------

def test_limit_in_keeps_a_branch_active_within_it(git_repo):
    s = Snap()
    for name, age in (("old", 13), ("recent", 11)):
        s.image("app", name, created=OLD, revision=git_repo.commit(name, h(age)))
    p = plan(git_repo, s, [{"references": {"branch": "/.*/", "limit": {"in": "12h"}}}])
    assert kept(p) == {"recent"}
    assert reasons(p, "app", "recent") == ["git: branch recent, image 1 of 1"]
    assert reasons(p, "app", "old") == [
        "git: commit " + s.rows["links"][0]["commit"][:7] + " reached only by unselected references "
        "(branch old: outside the limit of branch /.*/ (limit in 12h))"]


@pytest.mark.parametrize("operator, want", [("Or", {"b11", "b0"}), ("And", {"b0"})])
def test_limit_last_and_in_combine_by_operator(git_repo, operator, want):
    s = Snap()
    for age in (13, 11, 0):
        s.image("app", f"b{age}", created=OLD, revision=git_repo.commit(f"b{age}", h(age)))
    p = plan(git_repo, s, [{"references": {"branch": "/.*/", "limit": {"in": "12h", "last": 1, "operator": operator}}}])
    assert kept(p) == want


@pytest.mark.parametrize("operator, want", [("Or", {"c11", "c0"}), ("And", {"c0"})])
def test_images_per_reference_last_and_in_combine_by_operator(git_repo, operator, want):
    s = Snap()
    for age in (13, 11, 0):
        s.image("app", f"c{age}", created=OLD, revision=git_repo.commit("main", h(age)))
    p = plan(git_repo, s, [{"references": {"branch": "main"},
                            "imagesPerReference": {"in": "12h", "last": 1, "operator": operator}}])
    assert kept(p) == want
    if operator == "Or":
        assert reasons(p, "app", "c11") == ["git: branch main, commit within 12h (imagesPerReference.in)"]
    else:
        assert reasons(p, "app", "c11") == ["git: branch main selected, image beyond imagesPerReference.last 1"]


def test_two_images_on_one_commit_count_as_one(git_repo):
    s = Snap()
    s.image("app", "before", created=OLD, revision=git_repo.commit("main", h(5)))
    head = git_repo.commit("main", h(1))
    s.image("app", "server", created=OLD, revision=head)
    s.image("app", "worker", created=OLD, revision=head)
    p = plan(git_repo, s, [{"references": {"branch": "main"}, "imagesPerReference": {"last": 1}}])
    assert kept(p) == {"server", "worker"}
    assert reasons(p, "app", "worker") == ["git: branch main, image 1 of 1"]


def test_a_tag_keeps_only_the_image_of_its_own_commit(git_repo):
    s = Snap()
    c0 = git_repo.commit("main", h(30))
    c1 = git_repo.commit("main", h(20))
    c2 = git_repo.commit("main", h(10))
    for name, c in (("c0", c0), ("c1", c1), ("c2", c2)):
        s.image("app", name, created=OLD, revision=c)
    git_repo.tag("v1.2", c1, when=h(15), annotated=True)
    p = plan(git_repo, s, [{"references": {"tag": "/^v.*/"}}])
    assert kept(p) == {"c1"}
    assert reasons(p, "app", "c1") == ["git: tag v1.2"]


def test_images_per_reference_last_zero_keeps_nothing(git_repo):
    s = Snap()
    s.image("app", "head", created=OLD, revision=git_repo.commit("main", h(1)))
    p = plan(git_repo, s, [{"references": {"branch": "main"}, "imagesPerReference": {"last": 0}}])
    assert kept(p) == set()
    assert reasons(p, "app", "head") == ["git: branch main selected, imagesPerReference.last 0"]


# --- regsweep's own ---------------------------------------------------------------------------

def test_history_walks_every_parent_of_a_merge_per_repository(git_repo):
    s = Snap()
    base = git_repo.commit("main", h(50))
    s.image("api", "base", created=OLD, revision=base)
    feat = git_repo.commit("feature", h(40), parents=[base])
    s.image("api", "feature", created=OLD, revision=feat)
    s.image("web", "feature", created=OLD, revision=feat)
    git_repo.merge("main", "feature", h(30))
    git_repo.delete_branch("feature")
    s.image("web", "newest", created=OLD, revision=git_repo.commit("main", h(1)))
    p = plan(git_repo, s, [{"references": {"branch": "main"}, "imagesPerReference": {"last": 1}}])
    # per repository: api's newest reachable image is on the merged feature commit
    assert decisions(p) == {("api", "base"): "delete", ("api", "feature"): "keep",
                            ("web", "feature"): "delete", ("web", "newest"): "keep"}


def test_a_digest_built_on_several_commits_ranks_by_its_newest(git_repo):
    s = Snap()
    c1 = git_repo.commit("main", h(30))
    c2 = git_repo.commit("main", h(20))
    c3 = git_repo.commit("main", h(10))
    s.image("app", "mid", created=OLD, revision=c2)
    s.image("app", "same", created=OLD, revision=c1, links=[c3])   # rebuilt identically on c3
    p = plan(git_repo, s, [{"references": {"branch": "main"}, "imagesPerReference": {"last": 1}}])
    assert kept(p) == {"same"}
    p = plan(git_repo, s, [{"references": {"branch": "main"}, "imagesPerReference": {"last": 2}}])
    assert kept(p) == {"same", "mid"}   # two slots: c3 (same) and c2 (mid); c1 ranks nothing new


def test_abbreviated_links_resolve_and_vanished_commits_are_linked_but_unreachable(git_repo):
    s = Snap()
    head = git_repo.commit("main", h(2))
    s.image("app", f"sha-{head[:7]}", created=OLD, links=[head[:7]], link_source="tag-pattern")
    s.image("app", "amended", created=OLD, revision="0123456789abcdef0123456789abcdef01234567")
    p = plan(git_repo, s, [{"references": {"branch": "main"}}])   # unlinkedImages: keep (default)
    assert decisions(p) == {("app", f"sha-{head[:7]}"): "keep", ("app", "amended"): "delete"}
    assert reasons(p, "app", "amended") == [
        "git: commit 0123456 not in the repository (amended, force-pushed away or never pushed)"]


def test_default_policies_are_werfs(git_repo):
    s = Snap()
    main = [git_repo.commit("main", h(200 - i)) for i in range(12)]
    for i, c in enumerate(main):
        s.image("app", f"main-{i}", created=OLD, revision=c)
    stale = git_repo.commit("stale", h(24 * 30), parents=[main[0]])
    s.image("app", "stale", created=OLD, revision=stale)
    p = plan(git_repo, s, None)
    # main keeps its 10 newest (policy 3); the 168h branch policy adds nothing older; stale is out
    assert kept(p) == {f"main-{i}" for i in range(2, 12)}
    assert reasons(p, "app", "main-11") == ["git: branch main, image 1 of 10"]


def test_policy_order_does_not_change_the_plan(git_repo):
    s = Snap()
    rnd = random.Random(3)
    prev = None
    for i in range(30):
        branch = "main" if i % 3 else f"feat-{i}"
        prev = git_repo.commit(branch, h(60 - i), parents=[prev] if prev and branch != "main" else None)
        if branch == "main":
            prev = git_repo.head("main")
        s.image(f"team/app{i % 3}", f"t{i}", created=OLD, revision=prev if rnd.random() < 0.8 else None)
    git_repo.tag("v1", git_repo.head("main"), when=h(5), annotated=True)
    policies = [
        {"references": {"branch": "main"}, "imagesPerReference": {"last": 3}},
        {"references": {"branch": "/feat-.*/", "limit": {"last": 2}}, "imagesPerReference": {"last": 1, "in": "30h", "operator": "Or"}},
        {"references": {"branch": "/.*/", "limit": {"in": "40h"}}, "imagesPerReference": {"last": 1}},
        {"references": {"tag": "/v.*/"}},
    ]
    base = plan(git_repo, s, policies)
    assert {"keep", "delete"} <= set(base.action)
    for seed in range(3):
        shuffled = policies[:]
        random.Random(seed).shuffle(shuffled)
        pd.testing.assert_frame_equal(plan(git_repo, s, shuffled), base)
