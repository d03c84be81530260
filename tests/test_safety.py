"""Safety audit: inputs, partial reads and spellings that must never lead to a deletion.

Each test here was written against a hole found in an audit (it failed before the fix next to
it in the history). Real components throughout: a real Distribution registry, real git
repositories, the loopback Kubernetes API server and Helm's storage encoding; evaluation-only
cases build snapshot tables as the extractors write them (tests/support/snapshots.py's `Snap`).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tasks.sources import git as git_source
from tasks.sources.kubernetes import helm
from tasks.config.models import load_config, parse_config
from tasks.common.errors import PlanRefused, SweepLocked, SweepNotApproved
from tasks.plan.evaluate import plan_rows
from tasks.common.units import utcnow
from tasks.store.store import Store
from tasks.sweep.lock import sweep_lock
from tests.support.gitrepo import RepoBuilder
from testbed import push_artifact, push_index, tag_manifest
from testbed.kube import helm_release, helm_secret, manifest, workload
from tests.support.configs import SWEEP, config
from tests.support.snapshots import EVALUATION, NOW, OLD, REGISTRY, Snap, decisions, plan_of, reasons
from tests.support.sweeps import make_plan, old, plan_of as stored_plan_of, status, take_snapshot
from tests.support.gitrepo import git_repo  # noqa: F401 (fixtures)
from tests.support.kube import kube_env  # noqa: F401 (fixtures)
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)
from tests.support.sweeps import sweep  # noqa: F401 (fixtures)

h = lambda n: NOW - timedelta(hours=n)  # noqa: E731


def git_plan(repo: RepoBuilder, snap: Snap, policies, **cleanup):
    """Evaluate `snap` with the real git source reading `repo` (kubernetes and helm off)."""
    c = parse_config({"registry": {"url": REGISTRY}, "git": {"path": str(repo.path)}, "helm": {"enabled": False},
                      "cleanup": {"keepPolicies": policies, "disableKubernetesBasedPolicy": True,
                                  "disableBuiltWithinLastNHoursPolicy": True, **cleanup}})
    snap.git = {k: v.to_pandas() for k, v in git_source.extract(c, Store(str(repo.path.parent / "store")), NOW).items()}
    snap.skipped |= {"kubernetes", "helm"}
    return plan_rows(snap.tables(), snap.meta(), c).frame


# --------------------------------------------------------------------------- git links


def test_an_ambiguous_abbreviated_commit_keeps_its_image(git_repo):
    """A tag-pattern abbreviation naming several commits may name the one a kept branch reaches."""
    seen: dict[str, str] = {}
    i = 0
    while True:   # dates are fixed, so the same commits (and the same collision) every run
        sha = git_repo.commit("main", h(2000) + timedelta(minutes=i))
        i += 1
        if sha[:4] in seen:
            break
        seen[sha[:4]] = sha
    prefix = sha[:4]    # the head of main, and an older commit, both start with it
    s = Snap()
    s.image("app", f"sha-{prefix}", created=OLD, links=[prefix], link_source="tag-pattern")
    s.image("app", "gone", created=OLD, revision="0123456789abcdef0123456789abcdef01234567")

    p = git_plan(git_repo, s, [{"references": {"branch": "main"}}])

    assert decisions(p) == {("app", f"sha-{prefix}"): "keep", ("app", "gone"): "delete"}
    assert reasons(p, "app", f"sha-{prefix}") == [
        f"git: abbreviated commit {prefix} is ambiguous in the repository: kept"]


@pytest.mark.parametrize("revision", ["main", "unknown", " ", "${GIT_COMMIT}", "v1.2.3", "ab1"])
def test_a_revision_that_is_not_a_commit_id_leaves_the_image_unlinked(git_repo, revision):
    """`org.opencontainers.image.revision: main` names no commit: the image is unlinked, not
    "linked to a commit that is gone", so the default `unlinkedImages: keep` keeps it."""
    git_repo.commit("main", h(3))
    s = Snap()
    s.image("app", "odd", created=OLD, revision=revision)

    p = git_plan(git_repo, s, [{"references": {"branch": "main"}}])

    assert decisions(p) == {("app", "odd"): "keep"}
    assert reasons(p, "app", "odd") == [
        "unlinked: no revision annotation, label or tag pattern links it to a commit"]


# --------------------------------------------------------------------------- image reference spellings


@pytest.mark.unit
def test_in_use_reference_spelled_with_another_host_keeps_the_same_named_image():
    """An IP for a host name, a forgotten alias, Docker Hub's implicit host: the repository and
    tag are ours, so the image is kept, and the reason says which host to add to the aliases."""
    s = Snap()
    by_ip = s.image("team/api", "v1", created=OLD)
    s.image("team/api", "v2", created=OLD)
    pinned = s.image("team/api", "v3", created=OLD)
    hub = s.image("library/nginx", "1.25", created=OLD)
    running = s.image("team/web", "v9", created=OLD)
    unused = s.image("team/web", "v8", created=OLD)
    s.workload("10.0.0.5/team/api:v1", name="by-ip")
    s.helm("registry.internal/team/api:v2", revision=3, status="superseded")
    s.workload(f"10.0.0.5/team/api@{pinned}", name="pinned")
    s.workload("nginx:1.25", name="proxy")
    # a pod whose spec spells the host oddly: the digest it runs is ours under the same name
    s.workload("10.0.0.5/team/web:moved", kind="Pod", name="p", image_id=f"docker-pullable://10.0.0.5/team/web@{running}")

    plan = plan_of(s, config(EVALUATION, cleanup={"unlinkedImages": "delete"}))

    d = decisions(plan)
    assert d[("team/api", "v1")] == d[("team/api", "v2")] == d[("team/api", "v3")] == "keep"
    assert d[("library/nginx", "1.25")] == d[("team/web", "v9")] == "keep"
    assert d[("team/web", "v8")] == "delete"
    assert reasons(plan, "team/api", "v1") == [
        "in use: prod/default/Deployment/by-ip container app, by name: host 10.0.0.5 is not "
        f"{REGISTRY} (add it to registry.aliases if it is)"]
    assert reasons(plan, "team/api", "v2") == [
        "helm: prod/default/web revision 3 (superseded), by name: host registry.internal is not "
        f"{REGISTRY} (add it to registry.aliases if it is)"]
    assert reasons(plan, "library/nginx", "1.25")[0].startswith("in use: prod/default/Deployment/proxy container app, "
                                                               "by name: host docker.io is not")
    del by_ip, hub, unused


def test_fresh_cluster_scan_protects_an_image_deployed_under_another_host_spelling(
        sweep, registry, registry_client, unique_repo, tmp_path, kube_env):
    c, repo = registry_client, unique_repo
    port = registry.host.rsplit(":", 1)[1]
    used, pinned, unused = old(c, repo, "v1"), old(c, repo, "v2"), old(c, repo, "v3")
    server = kube_env.server()
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo],
                             kubeconfig=kube_env.kubeconfig({"prod": (server, None)}), write=tmp_path))
    plan = stored_plan_of(cfg)   # nothing deployed yet: all three are planned away
    # deployed after planning, by a spelling the configuration does not list as an alias
    server.add(workload("Deployment", "shop", "web", [f"localhost:{port}/{repo}:v1"]),
               workload("Deployment", "shop", "pinned", [f"localhost:{port}/{repo}@{pinned}"]))

    report = sweep(cfg, plan, approve=True)

    assert status(c, repo, used) == 200 and status(c, repo, pinned) == 200
    assert status(c, repo, unused) == 404
    why = {o["digest"]: o["detail"] for o in report["outcomes"] if o["status"] == "skipped"}
    assert "in use by Deployment shop/web in context prod" in why[used]
    assert "in use by Deployment shop/pinned in context prod" in why[pinned]


# --------------------------------------------------------------------------- helm


def test_keep_revisions_never_drops_the_deployed_revision(kube_env, tmp_path):
    """Like Helm's own --history-max, which always keeps the last deployed release: after two
    failed upgrades the deployed revision is the one a rollback needs."""
    server = kube_env.server()
    kubeconfig = kube_env.kubeconfig({"prod": (server, None)})
    app = lambda tag: manifest(workload("Deployment", "shop", "app", [f"registry.example.com/shop/app:{tag}"]))  # noqa: E731
    server.add(helm_secret(helm_release("web", "shop", 1, app("1"), status="superseded")),
               helm_secret(helm_release("web", "shop", 2, app("2"), status="deployed")),
               helm_secret(helm_release("web", "shop", 3, app("3"), status="failed")),
               helm_secret(helm_release("web", "shop", 4, app("4"), status="failed")))
    cfg = parse_config({"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
                        "kubernetes": {"kubeconfig": str(kubeconfig)}, "helm": {"keepRevisions": 1}})

    rows = helm.extract(cfg, Store(cfg.store), utcnow())["helm"].to_pylist()

    assert {(r["revision"], r["status"], r["image"]) for r in rows} == {
        (4, "failed", "registry.example.com/shop/app:4"),
        (2, "deployed", "registry.example.com/shop/app:2")}


# --------------------------------------------------------------------------- snapshot completeness


@pytest.mark.unit
def test_an_enabled_source_with_a_status_other_than_ok_deletes_nothing():
    s = Snap()
    s.image("team/api", "old", created=OLD)
    meta = s.meta()
    meta["sources"]["kubernetes"]["status"] = "partial"   # written by some other tool or version

    plan = plan_rows(s.tables(), meta, parse_config(config(EVALUATION, cleanup={"unlinkedImages": "delete"}))).frame

    assert list(plan.action) == ["keep"]
    assert list(plan.reasons[0]) == ["snapshot incomplete: kubernetes has status 'partial', not ok"]


@pytest.mark.unit
def test_a_table_shorter_than_its_snapshot_says_deletes_nothing():
    s = Snap()
    s.image("team/api", "old", created=OLD)
    s.image("team/api", "older", created=OLD)
    s.workload(f"registry.example.com/team/api:old")
    meta = s.meta()
    meta["sources"]["kubernetes"]["tables"] = {"workloads": 2}   # one row went missing on the way

    plan = plan_rows(s.tables(), meta, parse_config(config(EVALUATION, cleanup={"unlinkedImages": "delete"}))).frame

    assert set(plan.action) == {"keep"}
    assert list(plan.reasons[0]) == ["snapshot incomplete: kubernetes table workloads has 1 rows, "
                                     "the snapshot recorded 2"]


@pytest.mark.unit
def test_a_snapshot_of_another_registry_deletes_nothing():
    """Two configurations sharing a store: `plan --snapshot latest` may pick the other registry's
    snapshot, whose tags say nothing about what this registry's images are used for."""
    s = Snap()
    s.image("team/api", "old", created=OLD)
    meta = s.meta()
    meta["registry"] = "https://mirror.example.com"

    plan = plan_rows(s.tables(), meta, parse_config(config(EVALUATION, cleanup={"unlinkedImages": "delete"}))).frame

    assert list(plan.action) == ["keep"]
    assert list(plan.reasons[0]) == [f"snapshot incomplete: it is of registry https://mirror.example.com, not {REGISTRY}"]


# --------------------------------------------------------------------------- sweep


def test_a_plan_from_a_snapshot_dated_in_the_future_is_refused(sweep, registry, registry_client, unique_repo, tmp_path):
    """A clock running ahead makes "now" wrong for the fresh rule and makes the plan never expire."""
    c, repo = registry_client, unique_repo
    d = old(c, repo, "a")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = make_plan(cfg, take_snapshot(cfg, now=utcnow() + timedelta(hours=1)))   # taken by a clock 1h ahead

    with pytest.raises(PlanRefused, match=r"taken in the future, 1.0h from now: a clock is wrong"):
        sweep(cfg, plan, approve=True)
    assert status(c, repo, d) == 200


@pytest.mark.unit
def test_one_lock_for_every_spelling_of_the_registry_url(tmp_path):
    """The sweep accepts a plan whatever the case of the registry host: the lock must agree."""
    store = Store(str(tmp_path / "store"))
    with sweep_lock(store, "https://registry.example.com:5000", "p1"):
        with pytest.raises(SweepLocked, match="another sweep of https://Registry.Example.COM:5000 is running"):
            with sweep_lock(store, "https://Registry.Example.COM:5000", "p2"):
                pass



def test_an_untagged_index_in_use_by_digest_keeps_a_platform_it_shares_with_a_deleted_index(
        sweep, registry, registry_client, unique_repo, tmp_path, kube_env):
    """Reproducible builds give two releases the same arm64 manifest; the running release is
    pinned by digest and its index is no longer tagged, so the snapshot never read it. Deleting
    the old release's index must not take the shared platform manifest with it."""
    c, repo = registry_client, unique_repo
    shared, old_arm, new_arm = old(c, repo, None), old(c, repo, None), old(c, repo, None)
    plat = lambda arch: {"os": "linux", "architecture": arch}  # noqa: E731
    old_index = push_index(c, repo, "v1", [(shared, plat("amd64")), (old_arm, plat("arm64"))])
    running = push_index(c, repo, None, [(shared, plat("amd64")), (new_arm, plat("arm64"))])
    server = kube_env.server()
    server.add(workload("Deployment", "shop", "web", [f"{registry.host}/{repo}@{running}"]))
    for recheck in (False, True):   # from the snapshot's own workloads, and from the fresh scan
        cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], sweep={"recheckCluster": recheck},
                                 kubeconfig=kube_env.kubeconfig({"prod": (server, None)}),
                                 write=tmp_path / f"regsweep-{recheck}.yaml"))
        report = sweep(cfg, stored_plan_of(cfg), dry_run=True)
        why = {o["digest"]: o["detail"] for o in report["outcomes"] if o["status"] == "skipped"}
        assert why == {shared: f"listed by index {running}, which the snapshot did not read"}, recheck

    report = sweep(cfg, stored_plan_of(cfg), approve=True)

    assert status(c, repo, old_index) == 404 and status(c, repo, old_arm) == 404
    assert status(c, repo, running) == 200 and status(c, repo, shared) == 200 and status(c, repo, new_arm) == 200
    assert report["deleted"] == 2 and report["failed"] == 0


def test_images_of_custom_resources_outside_container_lists_are_rollback_targets(kube_env, tmp_path):
    """Operators take their images from fields of their own: `spec.image` of a Prometheus, a
    Kafka's `spec.kafka.image`. Rolling back to a revision needs them as much as a Deployment's."""
    server = kube_env.server()
    kubeconfig = kube_env.kubeconfig({"prod": (server, None)})
    prometheus = {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus", "metadata": {"name": "p"},
                  "spec": {"image": "registry.example.com/mon/prometheus:v2.53", "replicas": 2}}
    kafka = {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "Kafka", "metadata": {"name": "k"},
             "spec": {"kafka": {"image": "registry.example.com/data/kafka:3.7", "replicas": 3},
                      "zookeeper": {"image": {"repository": "not/a/string"}}}}
    settings = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"},
                "data": {"image": "registry.example.com/just/text:1"}}
    server.add(helm_secret(helm_release("mon", "ops", 1, manifest(prometheus, kafka, settings))))
    cfg = parse_config({"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
                        "kubernetes": {"kubeconfig": str(kubeconfig)}})

    rows = helm.extract(cfg, Store(cfg.store), utcnow())["helm"].to_pylist()

    assert {r["image"] for r in rows} == {"registry.example.com/mon/prometheus:v2.53",
                                          "registry.example.com/data/kafka:3.7"}


def test_up_front_approval_counts_platforms_and_referrers_that_go_with_a_manifest(
        sweep, registry, registry_client, unique_repo, tmp_path):
    """--max-deletions bounds every DELETE the sweep would send, not only the tags a plan lists."""
    c, repo = registry_client, unique_repo
    amd, arm = old(c, repo, None), old(c, repo, None)
    plat = lambda arch: {"os": "linux", "architecture": arch}  # noqa: E731
    index = push_index(c, repo, "v1", [(amd, plat("amd64")), (arm, plat("arm64"))])
    signature = push_artifact(c, repo, subject=index, artifact_type="application/vnd.dev.cosign.simplesigning.v1+json")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = stored_plan_of(cfg)   # one tag planned away; with it go 2 platforms, a signature, its fallback index

    with pytest.raises(SweepNotApproved, match="would delete 5 manifests/tags .* more than the 4"):
        sweep(cfg, plan, approve=True, max_deletions=4)
    assert all(status(c, repo, d) == 200 for d in (index, amd, arm, signature))

    assert sweep(cfg, plan, approve=True, max_deletions=5)["deleted"] == 5
    assert all(status(c, repo, d) == 404 for d in (index, amd, arm, signature))


def test_a_cosign_signature_tag_stays_with_a_subject_the_sweep_keeps(sweep, registry, registry_client, unique_repo, tmp_path):
    """cosign's `sha256-<hex>.sig` tag belongs to its subject as the OCI fallback tag does: an image
    promoted after planning keeps its signature (else admission policies refuse to run it)."""
    c, repo = registry_client, unique_repo
    image = old(c, repo, "build-7")
    sig_tag = f"sha256-{str(image).split(':')[1]}.sig"
    signature = old(c, repo, sig_tag)
    other = old(c, repo, "build-6")
    cfg = load_config(config(SWEEP, url=registry.url, repositories=[repo], write=tmp_path))
    plan = stored_plan_of(cfg)   # the image, its signature and build-6 are planned away
    tag_manifest(c, repo, image, "release-1.0")   # promoted after planning

    report = sweep(cfg, plan, approve=True)

    assert status(c, repo, image) == 200 and status(c, repo, signature) == 200 and status(c, repo, sig_tag) == 200
    assert status(c, repo, other) == 404
    why = {o["digest"]: o["detail"] for o in report["outcomes"] if o["status"] == "skipped"}
    assert why[signature] == f"{image}, which it belongs to, was not deleted"
