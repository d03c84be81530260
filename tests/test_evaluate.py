"""regsweep's own keep rules, evaluated as the pure function of snapshot tables that a plan is.

Registry, workload and Helm tables are written here as the extractors write them (same columns,
same meaning); git tables always come from real repositories (tests/test_evaluate_git.py).
`Snap`, the small builder both modules use, is in tests/support/snapshots.py.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pandas as pd
import pytest

from tasks.config.models import parse_config
from tasks.plan.evaluate import plan_rows
from tasks.store.schemas import SOURCE_TABLES
from tests.support.configs import config
from tests.support.snapshots import EVALUATION, NOW, OLD, REGISTRY, Snap, decisions, digest, plan_of, reasons

pytestmark = pytest.mark.unit   # pure functions: no server, registry, cluster, git repository or flow

H = "registry.example.com"


# --- rule 1: in use -------------------------------------------------------------------------

def test_in_use_matches_by_tag_digest_image_id_alias_and_default_port():
    s = Snap()
    by_tag = s.image("team/api", "v1", created=OLD)
    by_ref_digest = s.image("team/api", "v2", created=OLD)
    by_image_id = s.image("team/api", "v3", created=OLD)
    by_alias = s.image("team/web", "v1", created=OLD)
    by_port = s.image("team/web", "v2", created=OLD)
    unused = s.image("team/web", "v3", created=OLD)
    other_registry = s.image("team/web", "v4", created=OLD)
    s.workload(f"{H}/team/api:v1", name="by-tag")
    s.workload(f"{H}/team/api@{by_ref_digest}", name="by-digest")
    # the tag moved since the pod started; the pod runs what its imageID says
    s.workload(f"{H}/team/api:moved", image_id=f"docker-pullable://{H}/team/api@{by_image_id}", kind="Pod", name="p")
    s.workload(f"reg.internal:5000/team/web:v1", name="by-alias")
    s.workload(f"{H}:443/team/web:v2", name="by-port", container_type="initContainers", container="init")
    s.workload("docker.io/team/web:v4", name="elsewhere")
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    d = decisions(plan)
    assert d[("team/api", "v1")] == d[("team/api", "v2")] == d[("team/api", "v3")] == "keep"
    assert d[("team/web", "v1")] == d[("team/web", "v2")] == "keep"
    assert d[("team/web", "v3")] == "delete"
    assert reasons(plan, "team/api", "v1") == ["in use: prod/default/Deployment/by-tag container app"]
    assert reasons(plan, "team/api", "v3") == ["in use: prod/default/Pod/p container app"]
    assert reasons(plan, "team/web", "v2") == ["in use: prod/default/Deployment/by-port init container init"]
    # another registry's image of the same name keeps ours, saying so (tests/test_safety.py)
    assert reasons(plan, "team/web", "v4") == [
        f"in use: prod/default/Deployment/elsewhere container app, by name: host docker.io is not {REGISTRY} "
        "(add it to registry.aliases if it is)"]
    assert "not in use in any scanned workload" in reasons(plan, "team/web", "v3")
    assert "unlinked (unlinkedImages: delete)" in reasons(plan, "team/web", "v3")
    del by_tag, by_alias, by_port, unused, other_registry


def test_finished_jobs_do_not_keep_their_images_running_ones_do():
    s = Snap()
    s.image("team/batch", "done", created=OLD)
    s.image("team/batch", "running", created=OLD)
    s.workload(f"{H}/team/batch:done", kind="Job", name="migrate-1", finished=True)
    s.workload(f"{H}/team/batch:running", kind="Job", name="migrate-2")
    s.workload(f"{H}/team/batch:done", kind="CronJob", name="nightly", context="staging")  # a template: kept
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    assert reasons(plan, "team/batch", "done") == ["in use: staging/default/CronJob/nightly container app"]
    s2 = Snap()
    s2.image("team/batch", "done", created=OLD)
    s2.workload(f"{H}/team/batch:done", kind="Job", name="migrate-1", finished=True)
    assert decisions(plan_of(s2, config(EVALUATION, cleanup={"unlinkedImages": "delete"})))[("team/batch", "done")] == "delete"


def test_disabled_kubernetes_policy_keeps_nothing_in_use():
    s = Snap()
    s.image("team/api", "v1", created=OLD)
    s.skipped.add("kubernetes")
    cfg = config(EVALUATION, cleanup={"unlinkedImages": "delete", "disableKubernetesBasedPolicy": True})
    plan = plan_of(s, cfg)
    assert decisions(plan)[("team/api", "v1")] == "delete"
    assert not any("in use" in r for r in reasons(plan, "team/api", "v1"))


# --- rule 2: helm ---------------------------------------------------------------------------

def test_every_recorded_helm_revision_keeps_its_images():
    s = Snap()
    for i in range(1, 5):
        s.image("team/web", f"1.{i}", created=OLD)
    s.helm(f"{H}/team/web:1.1", revision=1, status="superseded")
    s.helm(f"{H}/team/web:1.2", revision=2, status="superseded")
    s.helm(f"{H}/team/web:1.3", revision=3, status="deployed")
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    d = decisions(plan)
    assert [d[("team/web", f"1.{i}")] for i in range(1, 5)] == ["keep", "keep", "keep", "delete"]
    assert reasons(plan, "team/web", "1.2") == ["helm: prod/default/web revision 2 (superseded)"]
    assert "in no stored Helm revision" in reasons(plan, "team/web", "1.4")


def test_helm_disabled_keeps_nothing_by_helm():
    s = Snap()
    s.image("team/web", "1.1", created=OLD)
    s.helm(f"{H}/team/web:1.1")
    s.skipped.add("helm")
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}, helm={"enabled": False}))
    assert decisions(plan)[("team/web", "1.1")] == "delete"


# --- rules 4 and 5: fresh, unlinked -----------------------------------------------------------

def test_fresh_images_are_kept_within_the_window_judged_at_snapshot_time():
    s = Snap()
    s.image("team/api", "new", created=NOW - timedelta(minutes=35))
    s.image("team/api", "old", created=NOW - timedelta(hours=3))
    s.image("team/api", "unknown", created=None)
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    assert decisions(plan) == {("team/api", "new"): "keep", ("team/api", "old"): "delete",
                               ("team/api", "unknown"): "delete"}
    assert reasons(plan, "team/api", "new") == ["built 35m ago (< 2h)"]
    assert "built 3h ago (not within 2h)" in reasons(plan, "team/api", "old")
    assert "build time unknown" in reasons(plan, "team/api", "unknown")
    # disabled: nothing is fresh
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete", "disableBuiltWithinLastNHoursPolicy": True}))
    assert decisions(plan)[("team/api", "new")] == "delete"


def test_unlinked_images_are_kept_unless_configured_to_delete():
    s = Snap()
    s.image("team/api", "unlinked", created=OLD)
    s.image("team/api", "linked", created=OLD, revision="a" * 40)
    keep = plan_of(s)
    assert decisions(keep) == {("team/api", "unlinked"): "keep", ("team/api", "linked"): "delete"}
    assert reasons(keep, "team/api", "unlinked") == [
        "unlinked: no revision annotation, label or tag pattern links it to a commit"]
    delete = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    assert decisions(delete)[("team/api", "unlinked")] == "delete"


def test_an_index_is_linked_through_its_platforms():
    s = Snap()
    amd = s.image("team/api", created=OLD, revision="b" * 40, link_source="label")
    idx = s.index("team/api", "multi", platforms=[(amd, "linux/amd64")], created=None)
    plan = plan_of(s)   # unlinkedImages: keep — yet the index is linked by its platform's label
    assert decisions(plan)[("team/api", "multi")] == "delete"
    untagged = plan[plan.tag.isna()]
    assert list(untagged.digest) == [amd] and list(untagged.action) == ["delete"]
    assert f"platform of deleted index {idx}" in list(untagged.iloc[0]["reasons"])


# --- rule 6: relatives ------------------------------------------------------------------------

def test_a_multi_platform_index_with_one_fresh_platform_is_kept_whole():
    s = Snap()
    amd = s.image("team/api", created=NOW - timedelta(minutes=10))
    arm = s.image("team/api", created=OLD)
    idx = s.index("team/api", "v1", platforms=[(amd, "linux/amd64"), (arm, "linux/arm64")])
    other_arm = s.image("team/api", created=OLD)
    s.index("team/api", "v0", platforms=[(other_arm, "linux/arm64")], created=None)
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    d = decisions(plan)
    assert d[("team/api", "v1")] == "keep" and d[("team/api", "v0")] == "delete"
    assert reasons(plan, "team/api", "v1") == [f"index of kept platform {amd} (linux/amd64)"]
    # platforms of the kept index are not planned; those of the deleted one go with it
    untagged = plan[plan.tag.isna()]
    assert list(untagged.digest) == [other_arm]
    assert idx not in set(untagged.digest)


def test_a_platform_in_use_by_digest_keeps_its_index_and_siblings():
    s = Snap()
    amd = s.image("team/api", created=OLD)
    arm = s.image("team/api", created=OLD)
    s.index("team/api", "v1", platforms=[(amd, "linux/amd64"), (arm, "linux/arm64")], created=OLD)
    s.workload(f"{H}/team/api:v1", image_id=f"containerd://{H}/team/api@{arm}", kind="Pod", name="p")
    s.rows["workloads"][-1]["image"] = f"{H}/team/api@{arm}"
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    assert decisions(plan)[("team/api", "v1")] == "keep"
    assert plan.tag.isna().sum() == 0   # nothing untagged is deleted


def test_fallback_referrers_tag_and_signatures_follow_their_subject():
    s = Snap()
    kept = s.image("team/api", "v1", created=OLD)
    gone = s.image("team/api", "v0", created=OLD)
    s.workload(f"{H}/team/api:v1")
    sig_k = s.manifest("team/api", kind="artifact", subject=kept)
    sig_g = s.manifest("team/api", kind="artifact", subject=gone)
    ref_k = s.manifest("team/api", "sha256-" + kept.split(":")[1], kind="referrers-index")
    ref_g = s.manifest("team/api", "sha256-" + gone.split(":")[1], kind="referrers-index")
    for ri, sig in ((ref_k, sig_k), (ref_g, sig_g)):
        s.rows["children"].append(dict(repository="team/api", index_digest=ri, child_digest=sig, platform=None))
    cosign = s.image("team/api", "sha256-" + gone.split(":")[1] + ".sig", created=NOW)  # fresh, but follows v0
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    d = decisions(plan)
    assert d[("team/api", "v1")] == "keep" and d[("team/api", "v0")] == "delete"
    assert d[("team/api", "sha256-" + kept.split(":")[1])] == "keep"
    assert d[("team/api", "sha256-" + gone.split(":")[1])] == "delete"
    assert d[("team/api", "sha256-" + gone.split(":")[1] + ".sig")] == "delete"
    assert reasons(plan, "team/api", "sha256-" + kept.split(":")[1]) == [f"referrer of kept {kept}"]
    assert f"referrer of deleted {gone}" in reasons(plan, "team/api", "sha256-" + gone.split(":")[1])
    untagged = plan[plan.tag.isna()]
    assert set(untagged.digest) == {sig_g} and set(untagged.action) == {"delete"}
    del cosign


def test_referrer_of_a_subject_the_snapshot_does_not_know_is_kept():
    s = Snap()
    missing = digest("not in snapshot")
    s.manifest("team/api", "sha256-" + missing.split(":")[1], kind="referrers-index", created=OLD)
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    assert reasons(plan, "team/api", "sha256-" + missing.split(":")[1]) == [f"subject {missing} not in snapshot: kept"]


def test_unknown_media_types_and_missing_manifests_are_kept():
    s = Snap()
    s.manifest("team/api", "helm-chart", kind="unknown", media_type="application/vnd.cncf.helm.config.v1+json")
    s.tag("team/api", "dangling", digest("never read"))
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    assert reasons(plan, "team/api", "helm-chart") == [
        "unknown media type application/vnd.cncf.helm.config.v1+json: kept"]
    assert reasons(plan, "team/api", "dangling") == ["manifest not in snapshot: kept"]


# --- digest-level decisions -------------------------------------------------------------------

def test_a_digest_with_a_kept_tag_and_a_would_be_deleted_tag_keeps_both():
    s = Snap()
    d = s.image("team/api", "prod", "sha-old", "build-17", created=OLD)
    s.workload(f"{H}/team/api:prod")
    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    assert set(decisions(plan).values()) == {"keep"}
    assert all(r == ["in use: prod/default/Deployment/api container app"] for r in plan.reasons)
    assert set(plan.digest) == {d}


def test_gone_tags_are_not_planned():
    s = Snap()
    s.image("team/api", "v1", created=OLD)
    s.tag("team/api", "vanished", None, gone=True)
    assert set(decisions(plan_of(s))) == {("team/api", "v1")}


def test_many_reasons_of_one_rule_are_capped_and_counted():
    s = Snap()
    s.image("team/api", "v1", created=OLD)
    for i in range(9):
        s.workload(f"{H}/team/api:v1", kind="Pod", name=f"api-{i}")
    rs = reasons(plan_of(s), "team/api", "v1")
    assert rs[:5] == [f"in use: prod/default/Pod/api-{i} container app" for i in range(5)]
    assert rs[5:] == ["… and 4 more", "unlinked: no revision annotation, label or tag pattern links it to a commit"]


# --- safety: incomplete snapshots -------------------------------------------------------------

@pytest.mark.parametrize("how", ["failed", "skipped-but-enabled", "disabled-source-failed"])
def test_incomplete_snapshot_plans_no_deletion_and_says_why(how):
    s = Snap()
    s.image("team/api", "old", created=OLD)
    s.image("team/api", "older", created=OLD)
    cfg = parse_config(config(EVALUATION, cleanup={"unlinkedImages": "delete"}))
    if how == "failed":
        s.failed["kubernetes"] = "kubernetes (context prod, kind Pod): 500 Internal Server Error"
        want = "snapshot incomplete: kubernetes failed: kubernetes (context prod, kind Pod): 500 Internal Server Error"
    elif how == "skipped-but-enabled":
        s.skipped.add("helm")
        want = "snapshot incomplete: helm was skipped but this policy needs it"
    else:
        s.failed["helm"] = "helm release prod/default/web: bad gzip"
        cfg = parse_config(config(EVALUATION, cleanup={"unlinkedImages": "delete"}, helm={"enabled": False}))
        want = "snapshot incomplete: helm failed: helm release prod/default/web: bad gzip"
    plan = plan_rows(s.tables(), s.meta(), cfg).frame
    assert set(plan.action) == {"keep"} and len(plan) == 2
    assert all(list(r) == [want] for r in plan.reasons)


# --- determinism ------------------------------------------------------------------------------

def _busy_snapshot() -> Snap:
    s = Snap()
    rnd = random.Random(7)
    for i in range(60):
        repo = f"team/app{i % 4}"
        d = s.image(repo, f"t{i}", created=NOW - timedelta(minutes=rnd.randint(1, 5000)),
                    revision=None if i % 3 else f"{i:040x}")
        if i % 7 == 0:
            s.workload(f"{H}/{repo}@{d}", name=f"w{i}")
        if i % 11 == 0:
            s.helm(f"{H}/{repo}:t{i}", revision=i)
    return s


def test_replay_same_snapshot_and_policy_gives_the_identical_plan():
    s = _busy_snapshot()
    a, b = plan_of(s), plan_of(s)
    pd.testing.assert_frame_equal(a, b)
    assert {"keep", "delete"} <= set(a.action)
    # "now" is the snapshot's: evaluating later changes nothing
    meta = s.meta()
    c = plan_rows(s.tables(), dict(meta), parse_config(EVALUATION)).frame
    pd.testing.assert_frame_equal(a, c)


def test_replay_through_the_store_gives_the_identical_plan(tmp_path):
    from tasks.plan.make import make_plan
    from tasks.snapshot.take import SourceStatus
    from tasks.store.store import Store

    s = _busy_snapshot()
    cfg = parse_config(config(EVALUATION, store=tmp_path / "store"))
    store = Store(cfg.store)
    staging = store.snapshots.staging_dir("snap-1")
    statuses = {}
    for source, schemas in SOURCE_TABLES.items():
        if source == "git":
            statuses[source] = SourceStatus("skipped").to_json()
            continue
        store.snapshots.write_source_tables(staging, {k: s.tables()[k] for k in schemas}, schemas)
        statuses[source] = SourceStatus("ok").to_json()
    store.snapshots.publish("snap-1", {"created_at": NOW.isoformat(), "complete": True, "registry": REGISTRY,
                                      "sources": statuses})
    first, second = make_plan(cfg, "snap-1"), make_plan(cfg, "latest")
    assert first.plan_id != second.plan_id
    a, b = store.plans.table(first.plan_id), store.plans.table(second.plan_id)
    assert a.equals(b) and a.num_rows == 60
    assert first.meta["policy"] == second.meta["policy"] == cfg.cleanup.digest()
    assert first.meta["snapshot_id"] == "snap-1" and first.meta["complete"] is True
    # and the stored plan is what evaluating the tables in memory gives
    import pyarrow as pa

    from tasks.store.schemas import PLAN
    assert a.to_pylist() == pa.Table.from_pandas(plan_of(s, cfg), schema=PLAN, preserve_index=False).to_pylist()
