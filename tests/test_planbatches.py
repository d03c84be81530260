"""A plan evaluated in batches of repositories is the plan evaluated whole, row for row.

make_plan evaluates a stored snapshot one batch of whole repositories at a time (tasks/plan/batches.py),
sharing the git history across batches. Here one snapshot with every rule in play — git policies
over a real repository, in-use workloads (by tag, digest, imageID, another host), Helm revisions,
multi-platform indexes, signatures and `sha256-` fallback tags, unknown and missing manifests, a
digest shared by two repositories — is planned whole (tasks.plan.evaluate.plan_rows) and in batches of
one repository, through the store, with its tables sorted by repository or not.
"""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pytest

from tasks.sources import git as git_source
from tasks.config.models import parse_config
from tasks.plan.evaluate import decide, plan_rows
from tasks.plan.make import make_plan
from tasks.plan.render import deletion_rows
from tasks.plan.batches import plan_batches
from tasks.plan.inputs import read_frames, read_tables
from tasks.store.schemas import PLAN, SOURCE_TABLES
from tasks.snapshot.take import SourceStatus
from tasks.store.store import Store
from tasks.plan.decision_cache import cache_current_decision, policy_key, read_current
from tests.support.snapshots import NOW, OLD, REGISTRY, Snap, digest
from tests.support.gitrepo import git_repo  # noqa: F401 (fixtures)

H = "registry.example.com"
REPOS = ["team/web", "alpha/x", "team/api", "zeta/db", "team/worker"]   # not in sorted order
SORT_KEYS = {"tags": ["repository", "tag"], "manifests": ["repository", "digest"],
             "children": ["repository", "index_digest", "child_digest"],
             "links": ["repository", "digest", "commit", "source"]}


# What the plan of build()'s snapshot sums up to in plan.json, written out (sorted or not, its
# digests differ from run to run, its counts do not): every manifest is 1,000 bytes, and each repository
# has three untagged rows (the old index's two platforms, the deleted image's signature).
SUMMARY = {"rows": 136, "tags": 121, "keep": 68, "delete": 68, "digests_deleted": 68, "image_bytes_deleted": 58_000,
           "repositories": {
               "alpha/x": {"tags": 26, "keep": 14, "delete": 15, "image_bytes_deleted": 13_000},
               "team/api": {"tags": 23, "keep": 14, "delete": 12, "image_bytes_deleted": 10_000},
               "team/web": {"tags": 24, "keep": 14, "delete": 13, "image_bytes_deleted": 11_000},
               "team/worker": {"tags": 25, "keep": 13, "delete": 15, "image_bytes_deleted": 13_000},
               "zeta/db": {"tags": 23, "keep": 13, "delete": 13, "image_bytes_deleted": 11_000}}}


def h(n: float):
    return NOW - timedelta(hours=n)


def build(git_repo, tmp_path, sort: bool):
    """A busy multi-repository snapshot in a store; returns (config, snapshot id, repositories)."""
    main = [git_repo.commit("main", h(200 - 10 * i)) for i in range(8)]
    feat = [git_repo.commit("feature/x", h(100 - 10 * i), parents=[main[3]] if i == 0 else None) for i in range(3)]
    git_repo.tag("v1.0.0", main[2], when=h(150), annotated=True)
    git_repo.merge("main", "feature/x", h(20))
    cfg = parse_config({
        "store": str(tmp_path / "store"),
        "registry": {"url": REGISTRY, "aliases": ["registry.example.com:443"]},
        "git": {"path": str(git_repo.path)},
        "cleanup": {"keepImagesBuiltWithinLastNHours": 2, "keepPolicies": [
            {"references": {"branch": "main"}, "imagesPerReference": {"last": 2}},
            {"references": {"branch": "/^feature/.*/"}, "imagesPerReference": {"last": 1}},
            {"references": {"tag": "/.*/", "limit": {"last": 1}}},
        ]},
    })
    s = Snap()
    shared = digest("in two repositories")
    # rounds over the repositories: every table's rows interleave them
    for i, c in enumerate(main + feat):
        for r, repo in enumerate(REPOS):
            if (i + r) % 3 == 0:
                continue
            s.image(repo, f"sha-{c[:7]}", created=OLD, revision=c)
            s.image(repo, f"b{i}", created=OLD, links=[c[:8]], link_source="tag-pattern")
    for r, repo in enumerate(REPOS):
        s.image(repo, "fresh", created=h(1))
        s.image(repo, "old-unlinked", created=OLD)
        a, b = digest(), digest()
        s.image(repo, created=OLD, d=a, revision=main[r])
        s.image(repo, created=OLD, d=b)
        idx = s.index(repo, "multi", created=OLD, platforms=[(a, "linux/amd64"), (b, "linux/arm64")])
        kept_sig = s.manifest(repo, kind="artifact", subject=idx)
        c, d = digest(), digest()
        s.image(repo, created=OLD, d=c)
        s.image(repo, created=OLD, d=d)
        s.index(repo, "multi-old", created=OLD, revision=main[0], platforms=[(c, "linux/amd64"), (d, None)])
        s.manifest(repo, "sha256-" + idx.split(":")[1], kind="referrers-index", created=OLD)
        gone = s.image(repo, "gone-signed", created=OLD, revision=main[1])
        s.manifest(repo, kind="artifact", subject=gone)
        s.image(repo, "sha256-" + gone.split(":")[1] + ".sig", created=h(1))
        s.manifest(repo, "chart", kind="unknown", media_type="application/vnd.cncf.helm.config.v1+json")
        s.tag(repo, "dangling", digest())
        s.tag(repo, "deleted-meanwhile", None, gone=True)
        if r < 2:
            s.image(repo, "common", created=OLD, d=shared)
        s.workload(f"{H}/{repo}:sha-{main[0][:7]}", name=f"tag-{r}")
        s.workload(f"{H}/{repo}@{b}", name=f"platform-{r}", kind="Pod")
        s.workload(f"{H}/{repo}:moved", image_id=f"docker-pullable://{H}/{repo}@{kept_sig}", name=f"id-{r}")
        s.workload(f"docker.io/{repo}:b1", name=f"elsewhere-{r}")
        s.workload(f"{H}/{repo}:b2", kind="Job", name=f"done-{r}", finished=True)
        s.helm(f"{H}/{repo}:b3", release=f"rel{r}", revision=r + 1)
    s.workload(f"{H}/not/in-snapshot:v1", name="stranger")
    store = Store(cfg.store)
    s.git = {k: v.to_pandas() for k, v in git_source.extract(cfg, store, NOW).items()}
    staging = store.snapshots.staging_dir("snap-1")
    tables = s.tables()
    statuses = {}
    for source, schemas in SOURCE_TABLES.items():
        written = {k: tables[k].sort_values(SORT_KEYS[k], ignore_index=True) if sort and k in SORT_KEYS else tables[k]
                   for k in schemas}
        counts = store.snapshots.write_source_tables(staging, written, schemas)
        statuses[source] = SourceStatus("ok", rows=counts[next(iter(schemas))], tables=counts).to_json()
    store.snapshots.publish("snap-1", {"created_at": NOW.isoformat(), "complete": True, "registry": REGISTRY,
                                      "sources": statuses})
    return cfg, "snap-1"


@pytest.mark.parametrize("sort", [True, False], ids=["sorted-tables", "unsorted-tables"])
def test_a_plan_in_batches_of_one_repository_is_the_whole_plan(git_repo, tmp_path, sort):
    cfg, sid = build(git_repo, tmp_path, sort)
    store = Store(cfg.store)
    tables, meta = read_frames(store, sid), store.snapshots.meta(sid)
    whole = plan_rows(tables, meta, cfg).frame
    texts = [t for r in whole.reasons for t in r]
    # every rule and relation is in play, kept and deleted alike
    for what in ("git: branch main", "git: branch feature/x", "git: tag v1.0.0", "in use: ", "by name: host docker.io",
                 "helm: ", "built ", "index of kept platform", "platform of deleted index", "referrer of kept",
                 "referrer of deleted", "unknown media type", "manifest not in snapshot", "unlinked"):
        assert any(what in t for t in texts), what
    assert {"keep", "delete"} == set(whole.action) and whole.repository.nunique() == len(REPOS)

    assert sum(1 for _ in plan_batches(read_tables(store, sid), meta, cfg, batch_rows=1)) == len(REPOS)
    want = pa.Table.from_pandas(whole, schema=PLAN, preserve_index=False).to_pylist()
    for batch_rows in (1, 10**6):
        result = make_plan(cfg, sid, batch_rows=batch_rows)
        if batch_rows == 1:   # making a plan caches nothing: the plan flow's next step does
            assert read_current(store, sid, policy_key(cfg)) is None
        assert cache_current_decision(cfg, result)
        assert store.plans.table(result.plan_id).to_pylist() == want
        assert result.meta["complete"] is True
        got = {k: result.meta[k] for k in SUMMARY}   # (plan_bytes adds true bytes per repository)
        got["repositories"] = {r: {k: v[k] for k in SUMMARY["repositories"].get(r, v)} for r, v in got["repositories"].items()}
        assert got == SUMMARY
        assert result.deletions == deletion_rows(whole)
        # the what-if's entry the plan flow writes from its batches is the decide-only whole evaluation's
        decided = decide(tables, meta, cfg)
        cached = read_current(store, sid, policy_key(cfg))
        assert cached is not None and cached[0].delete == decided.delete == result.meta["delete"]
        key = ["repository", "digest"]
        assert cached[1].sort_by([(k, "ascending") for k in key]).to_pylist() == \
            decided.needed.sort_by([(k, "ascending") for k in key]).to_pylist() != []


def test_an_incomplete_snapshot_planned_in_batches_deletes_nothing(git_repo, tmp_path):
    cfg, sid = build(git_repo, tmp_path, sort=True)
    store = Store(cfg.store)
    # a table cut short after the snapshot was taken: only the whole table's count can tell
    path = store.path("snapshots", sid, "links.parquet")
    store.write_table(path, store.read_table(path).slice(0, 3))
    result = make_plan(cfg, sid, batch_rows=1)
    plan = store.plans.table(result.plan_id).to_pylist()
    assert result.meta["complete"] is False and result.meta["delete"] == 0
    assert {r["action"] for r in plan} == {"keep"}
    assert all(any("links has 3 rows" in t for t in r["reasons"]) for r in plan)
    tables, meta = read_frames(store, sid), store.snapshots.meta(sid)
    assert plan == pa.Table.from_pandas(plan_rows(tables, meta, cfg).frame, schema=PLAN, preserve_index=False).to_pylist()


def test_a_what_if_cache_that_cannot_be_written_leaves_the_plan_as_published(git_repo, tmp_path, caplog):
    cfg, sid = build(git_repo, tmp_path, sort=True)
    store = Store(cfg.store)
    result = make_plan(cfg, sid)
    (tmp_path / "store" / "cache").write_text("a file where the cache directory belongs")
    with caplog.at_level("WARNING", logger="regsweep.plan"):
        assert cache_current_decision(cfg, result) is False
    assert f"what-if cache of snapshot {sid} not written" in caplog.text
    assert store.plans.resolve("latest") == result.plan_id and read_current(store, sid, policy_key(cfg)) is None


@pytest.mark.unit
def test_commit_lookup_by_integer_keys_agrees_with_string_lookup():
    """Links resolve batch after batch through integer keys of the shas (tasks/plan/git/graph.py):
    full, abbreviated, ambiguous, absent, upper-case and malformed values resolve as by strings."""
    import random

    import pandas as pd

    from tasks.plan.git.graph import CommitGraph

    rnd = random.Random(3)
    hexd = "0123456789abcdef"
    shas = ["".join(rnd.choice(hexd) for _ in range(40)) for _ in range(3000)]
    # shas sharing their first 16 (and 20) digits: the key alone cannot tell them apart
    shas += [shas[0][:16] + "".join(rnd.choice(hexd) for _ in range(24)) for _ in range(3)]
    shas += [shas[1][:20] + "".join(rnd.choice(hexd) for _ in range(20)) for _ in range(2)]
    graph = CommitGraph(pd.DataFrame({"commit": shas, "committed": NOW, "parents": [[] for _ in shas]}))
    values = [s[:n] for s in rnd.sample(shas, 400) for n in (40, 7, 4, 12, 16, 17, 25)]
    values += [shas[0][:16], shas[0][:18], shas[1][:20], shas[1][:24], shas[-1], shas[0][:3], shas[2].upper()[:9],
               "zz" + shas[3][2:], shas[4] + "0", "main", "", "${GIT_COMMIT}", None, "deadbeef" * 5]
    values += ["".join(rnd.choice(hexd) for _ in range(n)) for n in (4, 5, 6, 8, 40) for _ in range(50)]
    uniq = pa.array([v.lower() for v in values if v is not None])
    assert graph._hex_keys() is not None
    by_keys, by_strings = graph._resolve_hex(uniq), graph._resolve_strings(uniq)
    assert by_keys.tolist() == by_strings.tolist()
    assert {-2, -1} <= set(by_keys.tolist()) and (by_keys >= 0).sum() > 2000
    got = graph.resolve(pa.array(values, pa.large_string()))
    assert got[values.index(shas[-1])] == graph.sha.tolist().index(shas[-1]) and got[values.index(None)] == -1
