"""werf's own git-history cleanup cases, replayed as a table against regsweep's plan.

Each row is one `It(...)` of werf's cleanup specs (or, marked so, a case from werf's docs and
code), written as data: the git history at cleanup time (commits with committer dates relative
to the snapshot, what `origin` holds, the local branches), the images (tags, the commits werf's
image metadata links them to, build times), the werf keep policies, and what werf keeps. Where
regsweep deliberately differs, `regsweep_differs` says why and `regsweep_keeps` what regsweep
keeps instead; the test then also checks that the two really differ.

Every row runs the real pieces: a real repository written with pygit2 (tests/support/gitrepo.py),
read by the real git source (tasks/sources/git.py, `git.path` mode: branches are
`refs/remotes/origin/*`, as werf reads them), a snapshot built with `Snap` as the extractors
write it, and the real plan evaluation (tasks/plan/evaluate.py). It asserts the keep/delete set
and that every tag's reasons name the reference and the policy rule (limit, imagesPerReference)
that decided it.

Source of the cases (read, not copied; werf is Apache-2.0): github.com/werf/werf at 73d8d4ac9935
(2026-08-20):
- SPEC = test/legacy_e2e/suites/cleanup/cleanup_test.go (before werf#7301:
  integration/suites/cleanup/cleanup_test.go), Describe("cleanup command") / "[implementation]";
- its fixtures test/legacy_e2e/suites/cleanup/_fixtures/git_history_based_policy/werf.yaml (the keep
  policy sets chosen by CLEANUP_POLICY_SET_NUMBER, "set N" below; `disableBuiltWithinLastNHoursPolicy:
  true`) and _fixtures/cleanup/werf.yaml (no keepPolicies: werf's defaults; the 2-hour rule on).

How werf's spec steps become rows: `git commit --amend` of the initial commit (werf's
setLastCommitCommitterWhen) makes a new root commit with the chosen committer date; `git push`
moves `origin/<branch>`; an unpushed commit exists only locally (regsweep reads the commits
reachable from origin's branches and tags, so to it such a commit is "not in the repository");
`werf build` makes one image linked to HEAD (werf counts stages, 4 per build in these fixtures;
a row has one image per build); builds happen "now" (5 minutes before the snapshot).

Covered in part: SPEC "should remove custom tag ..." and "images metadata cleanup" check werf's own
metadata records too (custom-tag records; per-commit image metadata pruned 3 -> 1), which regsweep
does not have (it stores nothing in the registry); their rows check the images' fate only.

werf specs skipped (not git-history decisions on images, or werf's own storage):
- test/legacy_e2e/suites/cleanup/purge_test.go, host_purge_test.go, test/e2e/cleanup/purge_report_test.go:
  `werf purge` / host cleanup (delete everything, local storage);
- test/legacy_e2e/suites/cleanup_after_converge/cleanup_test.go: Kubernetes-based policy and
  import-checksum relations between artifact stages (werf's stage imports);
- pkg/cleaning/cleanup_test.go, pkg/cleaning/stage_manager/manager_test.go,
  pkg/storage/repo_stages_storage_cleanup_test.go: rejected-stage deletion order, reports, storage errors;
- cmd/werf/cleanup/option_keep_list_test.go, cmd/werf/common/cleanup_report_test.go: flag parsing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pygit2
import pytest

from tasks.common.units import parse_duration
from tasks.config.models import parse_config
from tasks.plan.evaluate import plan_rows
from tasks.sources import git as git_source
from tasks.store.store import Store
from tests.support.gitrepo import RepoBuilder
from tests.support.snapshots import NOW, REGISTRY, Snap, decisions
from tests.support.gitrepo import git_repo  # noqa: F401 (fixtures)

SPEC = "test/legacy_e2e/suites/cleanup/cleanup_test.go"
DOCS = "docs/pages_en/usage/cleanup/cr_cleanup.md"
SCAN = "pkg/cleaning/git_history_based_cleanup/reference_to_scan.go"
CONFIG = "pkg/config/meta_cleanup.go"
REPO = "image"   # werf.yaml's `image: image`


def ago(duration: str) -> datetime:
    return NOW - parse_duration(duration)


# ------------------------------------------------------------------ the table's vocabulary

@dataclass(frozen=True)
class C:
    """A commit: committer date `age` before the snapshot; `parent` None makes a root commit."""

    label: str
    age: str
    parent: str | None = None


@dataclass(frozen=True)
class Image:
    """One `werf build`: a digest tagged `tag` (and `also`, werf's custom tags), linked to `commits`."""

    tag: str
    commits: tuple[str, ...]
    also: tuple[str, ...] = ()
    built: str = "5m"

    @property
    def tags(self) -> tuple[str, ...]:
        return (self.tag, *self.also)


# werf's cleanupBeforeEachBase: `git init`, "Initial commit", `git checkout -b test_branch`; nothing pushed.
BASE = (C("init", "10m"),)
BASE_LOCAL = {"master": "init", "test_branch": "init"}

# keep policy sets of _fixtures/git_history_based_policy/werf.yaml
SET = {
    1: [{"references": {"branch": "test"}, "imagesPerReference": {"last": -1}}],
    2: [{"references": {"branch": "test"}, "imagesPerReference": {"last": 0}}],
    3: [{"references": {"branch": "test"}, "imagesPerReference": {"in": "24h"}}],
    4: [{"references": {"branch": "test", "limit": {"in": "12h"}}}],
    5: [{"references": {"branch": "/.*/", "limit": {"in": "12h", "last": 1, "operator": "Or"}}}],
    6: [{"references": {"branch": "/.*/", "limit": {"in": "12h", "last": 1, "operator": "And"}}}],
    7: [{"references": {"branch": "test"}, "imagesPerReference": {"in": "12h", "last": 1, "operator": "Or"}}],
    8: [{"references": {"branch": "test"}, "imagesPerReference": {"in": "12h", "last": 1, "operator": "And"}}],
    9: [{"references": {"branch": "/.*/"}, "imagesPerReference": {"last": 1}}],
}


@dataclass(frozen=True)
class Case:
    id: str
    source: str                        # werf file and It(...) title (or docs/code section) to check it against
    commits: tuple[C, ...]
    origin: dict[str, str]             # refs/remotes/origin/<branch> -> commit label (what was pushed)
    images: tuple[Image, ...]
    policies: list | None              # werf.yaml keepPolicies; None = absent (werf's defaults)
    werf_keeps: frozenset[str]         # tags werf keeps; every other tag is deleted
    why: dict[str, str]                # tag -> text one of its plan reasons must contain
    local: dict[str, str] = field(default_factory=dict)   # refs/heads beyond BASE_LOCAL and origin
    fresh: bool = False                # the 2-hour rule is on (fixture `cleanup`); off in git_history_based_policy
    regsweep_differs: str | None = None
    regsweep_keeps: frozenset[str] | None = None
    note: str = ""

    @property
    def expected(self) -> frozenset[str]:
        return self.werf_keeps if self.regsweep_differs is None else self.regsweep_keeps


def keeps(*tags: str) -> frozenset[str]:
    return frozenset(tags)


NOT_PUSHED = "not in the repository (amended, force-pushed away or never pushed)"

# The three branches of Context("references.limit.*"): test1 13 h, test2 11 h, test3 now, each an
# amend of the previous head (so three root commits), one build each.
LIMIT_COMMITS = (*BASE, C("t1", "13h"), C("t2", "11h"), C("t3", "1m"))
LIMIT_ORIGIN = {"test1": "t1", "test2": "t2", "test3": "t3"}
LIMIT_IMAGES = (Image("build1", ("t1",)), Image("build2", ("t2",)), Image("build3", ("t3",)))

# Context("imagesPerReference.*"): on branch test, the initial commit amended to 13 h, then commits
# at 11 h and now; a build after each; test pushed.
IPR_COMMITS = (*BASE, C("c13", "13h"), C("c11", "11h", "c13"), C("c0", "1m", "c11"))
IPR_IMAGES = (Image("build1", ("c13",)), Image("build2", ("c11",)), Image("build3", ("c0",)))

DESCRIBE = f'{SPEC}: Describe("git history based policy")'

# werf's docs example: main with six images, one per commit, 10 h to 5 h old
MAIN_COMMITS = (*BASE, *(C(f"m{i}", f"{10 - i}h", "init" if i == 0 else f"m{i - 1}") for i in range(6)))
MAIN_IMAGES = tuple(Image(f"m{i}", (f"m{i}",)) for i in range(6))
MAIN_WHY = {"m0": "git: branch main selected, image beyond imagesPerReference.last 5",
            **{f"m{i}": f"git: branch main, image {6 - i} of 5" for i in range(1, 6)}}

CASES = [
    # ---- Describe("default"): fixture `cleanup`, werf's default policies, 2-hour rule on
    Case("empty-registry", f'{SPEC}: Describe("default") It("should work properly with non-existent/empty repo")',
         BASE, {}, (), None, keeps(), {}, fresh=True,
         note="nothing in the registry, nothing pushed: the plan is empty, not an error"),
    Case("default-built-within-2h",
         f'{SPEC}: Describe("default") It("should not remove unused stages that was built within 2 hours")',
         (*BASE, C("c2", "5m", "init")), {"test_branch": "init"},
         (Image("build1", ("init",)), Image("build2", ("c2",))), None, keeps("build1", "build2"),
         {"build1": "git: branch test_branch, image 1 of 2", "build2": "built 5m ago (< 2h)"},
         local={"test_branch": "c2"}, fresh=True,
         note="build2's commit was never pushed: only the 2-hour rule keeps it"),

    # ---- Describe("git history based policy"): fixture git_history_based_policy, 2-hour rule off
    Case("unused-removed", f'{DESCRIBE} It("should remove unused stages")',
         (*BASE, C("c2", "5m", "init")), {"test_branch": "init"},
         (Image("build1", ("init",)), Image("build2", ("c2",))), None, keeps("build1"),
         {"build1": "git: branch test_branch, image 1 of 2", "build2": NOT_PUSHED},
         local={"test_branch": "c2"}),
    Case("used-kept", f'{DESCRIBE} It("should not remove used stages")',
         BASE, {"test_branch": "init"}, (Image("build1", ("init",)),), None, keeps("build1"),
         {"build1": "git: branch test_branch, image 1 of 2"}),
    Case("remote-only-pushed", f'{DESCRIBE} It("should work only with remote references") (set 1), before the delete',
         BASE, {"test": "init"}, (Image("build1", ("init",)),), SET[1], keeps("build1"),
         {"build1": "git: branch test, every image (imagesPerReference.last -1)"}),
    Case("remote-only-deleted",
         f'{DESCRIBE} It("should work only with remote references") (set 1), after `git push origin --delete test`',
         BASE, {}, (Image("build1", ("init",)),), SET[1], keeps(),
         {"build1": "git: branch test, every image (imagesPerReference.last -1)"},
         local={"test": "init"},
         regsweep_differs="origin has no branch left, so regsweep reads refs/heads/* (the layout of a mirror "
                          "clone; tasks/sources/git.py read_refs) and the local branch test still selects the "
                          "image; werf reads only refs/remotes/origin/* and deletes it. Fails towards keeping.",
         regsweep_keeps=keeps("build1")),
    Case("remote-only-deleted-other-pushed",
         f'{DESCRIBE} It("should work only with remote references") (set 1), variant: test_branch stays pushed',
         BASE, {"test_branch": "init"}, (Image("build1", ("init",)),), SET[1], keeps(),
         {"build1": "branch test_branch: matches no keep policy"},
         local={"test": "init"},
         note="with any branch on origin, a local-only branch keeps nothing, as in werf; "
              "the literal `test` does not match test_branch (anchored)"),
    Case("untracked-branch", f'{DESCRIBE} It("should remove image from untracked branch") (set 1)',
         BASE, {"some_branch": "init"}, (Image("build1", ("init",)),), SET[1], keeps(),
         {"build1": "branch some_branch: matches no keep policy"}, local={"some_branch": "init"}),
    Case("two-images-one-commit",
         f'{DESCRIBE} It("should keep several images that are related to one commit regardless of the keep '
         f'policies (imagesPerReference.last=1)") (set 9)',
         BASE, {"test": "init"}, (Image("build1", ("init",)), Image("build2", ("init",))), SET[9],
         keeps("build1", "build2"),
         {"build1": "git: branch test, image 1 of 1", "build2": "git: branch test, image 1 of 1"}),
    Case("ipr-last-0", f'{DESCRIBE} It("should remove image by imagesPerReference.last") (set 2)',
         BASE, {"test": "init"}, (Image("build1", ("init",)),), SET[2], keeps(),
         {"build1": "git: branch test selected, imagesPerReference.last 0"}),
    Case("ipr-in-25h", f'{DESCRIBE} It("should remove image by imagesPerReference.in") (set 3), head 25 h old',
         (*BASE, C("a25", "25h")), {"test": "a25"}, (Image("build1", ("a25",)),), SET[3], keeps(),
         {"build1": "git: branch test selected, commit {a25} older than imagesPerReference.in 24h"},
         local={"test_branch": "a25", "test": "a25"}),
    Case("ipr-in-23h",
         f'{DESCRIBE} It("should remove image by imagesPerReference.in") (set 3), amended to 23 h and force-pushed',
         (*BASE, C("a23", "23h")), {"test": "a23"}, (Image("build2", ("a23",)),), SET[3], keeps("build2"),
         {"build2": "git: branch test, image 1 of 1"},
         local={"test_branch": "a23", "test": "a23"}),
    Case("limit-in-13h", f'{DESCRIBE} It("should remove image by references.limit.in") (set 4), head 13 h old',
         (*BASE, C("a13", "13h")), {"test": "a13"}, (Image("build1", ("a13",)),), SET[4], keeps(),
         {"build1": "branch test: outside the limit of branch test (limit in 12h)"},
         local={"test_branch": "a13", "test": "a13"}),
    Case("limit-in-11h",
         f'{DESCRIBE} It("should remove image by references.limit.in") (set 4), amended to 11 h and force-pushed',
         (*BASE, C("a11", "11h")), {"test": "a11"}, (Image("build2", ("a11",)),), SET[4], keeps("build2"),
         {"build2": "git: branch test, image 1 of 1"},
         local={"test_branch": "a11", "test": "a11"}),
    Case("limit-in-or-last",
         f'{DESCRIBE} Context("references.limit.*") It("should remove image by references.limit.in OR '
         f'references.limit.last") (set 5)',
         LIMIT_COMMITS, LIMIT_ORIGIN, LIMIT_IMAGES, SET[5], keeps("build2", "build3"),
         {"build1": "branch test1: outside the limit of branch /.*/ (limit last 1, in 12h, Or)",
          "build2": "git: branch test2, image 1 of 1", "build3": "git: branch test3, image 1 of 1"}),
    Case("limit-in-and-last",
         f'{DESCRIBE} Context("references.limit.*") It("should remove image by references.limit.in AND '
         f'references.limit.last") (set 6)',
         LIMIT_COMMITS, LIMIT_ORIGIN, LIMIT_IMAGES, SET[6], keeps("build3"),
         {"build1": "branch test1: outside the limit of branch /.*/ (limit last 1, in 12h, And)",
          "build2": "branch test2: outside the limit of branch /.*/ (limit last 1, in 12h, And)",
          "build3": "git: branch test3, image 1 of 1"}),
    Case("ipr-in-or-last",
         f'{DESCRIBE} Context("imagesPerReference.*") It("should remove image by imagesPerReference.in OR '
         f'imagesPerReference.last") (set 7)',
         IPR_COMMITS, {"test": "c0"}, IPR_IMAGES, SET[7], keeps("build2", "build3"),
         {"build1": "git: branch test selected, image beyond imagesPerReference.last 1",
          "build2": "git: branch test, commit within 12h (imagesPerReference.in)",
          "build3": "git: branch test, image 1 of 1"},
         local={"test": "c0"}),
    Case("ipr-in-and-last",
         f'{DESCRIBE} Context("imagesPerReference.*") It("should remove image by imagesPerReference.in AND '
         f'imagesPerReference.last") (set 8)',
         IPR_COMMITS, {"test": "c0"}, IPR_IMAGES, SET[8], keeps("build3"),
         {"build1": "git: branch test selected, commit {c13} older than imagesPerReference.in 12h",
          "build2": "git: branch test selected, image beyond imagesPerReference.last 1",
          "build3": "git: branch test, image 1 of 1"},
         local={"test": "c0"}),
    Case("one-digest-one-branch",
         f'{DESCRIBE} When("one content digest") It("should keep image metadata only for the latest commit '
         f'(one branch)")',
         (*BASE, C("c1", "8m", "init"), C("c2", "7m", "c1"), C("c3", "6m", "c2")), {"test_branch": "c3"},
         (Image("stage", ("c1", "c2", "c3")),), None, keeps("stage"),
         {"stage": "git: branch test_branch, image 1 of 2"},
         local={"test_branch": "c3"},
         note="three builds of identical content: one digest linked to three commits, one slot; werf also "
              "prunes two of its three per-commit metadata records, which regsweep does not have"),
    Case("one-digest-several-branches",
         f'{DESCRIBE} When("one content digest") It("should keep all image metadata (several branches)")',
         (*BASE, C("c1", "8m", "init"), C("c2", "7m", "c1"), C("c3", "6m", "c2")),
         {"test_0": "c1", "test_1": "c2", "test_2": "c3"},
         (Image("stage", ("c1", "c2", "c3")),), None, keeps("stage"),
         {"stage": "git: branch test_0, image 1 of 2"},
         local={"test_branch": "c1", "test_0": "c2", "test_1": "c3", "test_2": "c3"}),
    Case("custom-tags",
         f'{DESCRIBE} Context("custom tags") It("should remove custom tag associated with the deleted stage")',
         (*BASE, C("c2", "5m", "init")), {"test_branch": "init"},
         (Image("build1", ("init",), also=("tag1",)), Image("build2", ("c2",), also=("tag2",))), None,
         keeps("build1", "tag1"),
         {"build1": "git: branch test_branch, image 1 of 2", "tag1": "git: branch test_branch, image 1 of 2",
          "build2": NOT_PUSHED, "tag2": NOT_PUSHED},
         local={"test_branch": "c2"},
         note="werf deletes a custom tag with its stage; regsweep decides per digest, so every tag of a "
              "digest goes the same way"),

    # ---- werf's docs and code: the order of keepPolicies
    Case("policy-order-specific-last",
         f'{DOCS}: "Priority for a specific reference"; {SCAN}: applyImagesPerReference (the last policy '
         f'selecting a reference sets its imagesPerReference)',
         MAIN_COMMITS, {"main": "m5"}, MAIN_IMAGES,
         [{"references": {"branch": "main"}, "imagesPerReference": {"last": 5}},
          {"references": {"branch": "/.*/"}, "imagesPerReference": {"last": 1}}],
         keeps("m5"),
         MAIN_WHY,
         regsweep_differs="werf lets the last policy that selects main (/.*/, last 1) decide its "
                          "imagesPerReference; regsweep keeps the union of all policies (last 5 wins), so the "
                          "order of keepPolicies never changes a plan (docs/how-it-decides.md)",
         regsweep_keeps=keeps("m1", "m2", "m3", "m4", "m5")),
    Case("policy-order-general-first",
         f'{DOCS}: "Priority for a specific reference" (its own order: general first, then main)',
         MAIN_COMMITS, {"main": "m5"}, MAIN_IMAGES,
         [{"references": {"branch": "/.*/"}, "imagesPerReference": {"last": 1}},
          {"references": {"branch": "main"}, "imagesPerReference": {"last": 5}}],
         keeps("m1", "m2", "m3", "m4", "m5"),
         MAIN_WHY),
    Case("ipr-in-without-last",
         f'{CONFIG}: defaultImagesPerReferenceLast = 1 (werf v2.10.0, commit a63718507: "change default from '
         f'unlimited to one image per reference"); policy set 3 with two images inside `in`',
         (*BASE, C("a23", "23h"), C("a10", "10h", "a23")), {"test": "a10"},
         (Image("build1", ("a23",)), Image("build2", ("a10",))), SET[3], keeps("build2"),
         {"build1": "git: branch test selected, image beyond imagesPerReference.last 1",
          "build2": "git: branch test, image 1 of 1"},
         local={"test": "a10"}),
]


# ------------------------------------------------------------------ running a row

def write_history(repo: RepoBuilder, case: Case) -> dict[str, str]:
    """The row's commits, origin's branches and the local branches, in a real repository."""
    sha: dict[str, str] = {}
    for c in case.commits:
        parents = [sha[c.parent]] if c.parent else []
        sha[c.label] = repo.commit(f"wip/{c.label}", ago(c.age), parents=parents, push=False)
        repo.repo.references.delete(f"refs/heads/wip/{c.label}")
    local = {**BASE_LOCAL, **case.origin, **case.local}
    for branch, label in local.items():
        repo.repo.references.create(f"refs/heads/{branch}", pygit2.Oid(hex=sha[label]), force=True)
    for branch, label in case.origin.items():
        repo.repo.references.create(f"refs/remotes/origin/{branch}", pygit2.Oid(hex=sha[label]), force=True)
    repo.repo.set_head("refs/heads/test_branch")
    return sha


def plan_case(repo: RepoBuilder, case: Case):
    sha = write_history(repo, case)
    snap = Snap()
    for im in case.images:
        first, *more = (sha[c] for c in im.commits)
        snap.image(REPO, *im.tags, created=ago(im.built), revision=first, links=more)
    cleanup = {"disableKubernetesBasedPolicy": True, "disableBuiltWithinLastNHoursPolicy": not case.fresh}
    if case.policies is not None:
        cleanup["keepPolicies"] = case.policies
    config = parse_config({"registry": {"url": REGISTRY}, "git": {"path": str(repo.path)},
                           "helm": {"enabled": False}, "cleanup": cleanup})
    tables = git_source.extract(config, Store(str(repo.path.parent / "store")), NOW)
    snap.git = {name: table.to_pandas() for name, table in tables.items()}
    snap.skipped |= {"kubernetes", "helm"}
    return plan_rows(snap.tables(), snap.meta(), config).frame, sha


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_werf_case(git_repo, case: Case):
    plan, sha = plan_case(git_repo, case)
    every_tag = {t for im in case.images for t in im.tags}
    got = decisions(plan)
    assert set(got) == {(REPO, t) for t in every_tag}, "every tag is planned exactly once"
    kept = {t for (_, t), action in got.items() if action == "keep"}
    assert kept == case.expected, f"{case.source}: kept {sorted(kept)}, expected {sorted(case.expected)}"
    if case.regsweep_differs:
        assert case.regsweep_keeps != case.werf_keeps, "a row that says regsweep differs must differ"
    # every tag's reasons say which reference and which policy decided it
    assert set(case.why) == every_tag, "the table explains every tag"
    short = {label: s[:7] for label, s in sha.items()}
    for tag, text in case.why.items():
        row = plan[plan.tag == tag].iloc[0]
        want = text.format(**short)
        assert any(want in r for r in row["reasons"]), f"{tag}: {want!r} not in {list(row['reasons'])}"


def test_the_table_covers_werfs_behaviours_and_cites_each_case():
    """The behaviours the team's werf notes list as worth reproducing are rows; each row is cited once."""
    ids = {c.id for c in CASES}
    assert {"limit-in-13h", "limit-in-11h", "limit-in-or-last", "limit-in-and-last", "ipr-in-or-last",
            "ipr-in-and-last", "two-images-one-commit"} <= ids
    assert len(ids) == len(CASES)
    assert len({c.source for c in CASES}) == len(CASES)
    for c in CASES:
        assert c.source.startswith((SPEC, DOCS, SCAN, CONFIG)), c.id
        assert (c.regsweep_differs is None) == (c.regsweep_keeps is None), c.id
