"""Hostile Helm release records: anyone who may create a Secret can store one (security review,
finding 4). Each is served by the loopback API server, encoded as Helm encodes releases, and read
through the real client; each must fail the Helm source with one line naming the release and
revision, the snapshot must be published incomplete, and no plan from it may delete anything.
"""

from __future__ import annotations

import base64
import gzip
import json
import tracemalloc
import zlib
from datetime import datetime, timezone

import pytest
import yaml

from tasks.common.errors import HelmError
from tasks.config.models import parse_config
from tasks.snapshot.take import run_source
from tasks.sources.kubernetes import helm
from tasks.store.store import Store
from testbed.kube import helm_configmap, helm_release, helm_secret, manifest, workload
from tests.support.sweeps import old, status
from tests.support.kube import kube_env  # noqa: F401 (fixtures)
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)

TOKEN = "hostile-helm-kube-token-31"
MIB = 2**20
CAP = 8 * MIB   # helm.maxReleaseBytes in these tests: big enough to matter, small enough to be quick


def app_manifest(tag: str) -> str:
    return manifest(workload("Deployment", "shop", "app", [f"registry.example.com/shop/app:{tag}"]))


def release_json_of_size(n: int, image: str = "r.io/exact:1") -> bytes:
    """A valid release whose JSON is exactly `n` bytes (its manifest padded with a YAML comment)."""
    rel = helm_release("big", "shop", 1, "")
    body = f"kind: Pod\nspec:\n  containers:\n  - name: c\n    image: {image}\n# "
    bare = len(json.dumps({**rel, "manifest": body}, separators=(",", ":")).encode())
    rel["manifest"] = body + "x" * (n - bare)
    raw = json.dumps(rel, separators=(",", ":")).encode()
    assert len(raw) == n
    return raw


def gzip_payload(raw: bytes) -> str:
    """Helm's storage string for these bytes: base64(gzip(...))."""
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode()


def bomb_payload(decompressed: int) -> str:
    """base64(gzip) of `decompressed` bytes of one repeated character: a ~1000:1 gzip bomb."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk, left, parts = b"a" * MIB, decompressed, []
    while left:
        part = chunk[:min(left, MIB)]
        parts.append(comp.compress(part))
        left -= len(part)
    parts.append(comp.flush())
    return base64.b64encode(b"".join(parts)).decode()


def merge_bomb(levels: int) -> str:
    """Each level merges the one below twice: expanding it builds 2^levels entries from < 1 KB."""
    lines = ["apiVersion: v1", "kind: Pod", "metadata: {name: p}", "x0: &a0 {image: r.io/bomb:1}"]
    lines += [f"x{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}" for i in range(1, levels + 1)]
    lines.append(f"spec: {{containers: [{{name: c, <<: *a{levels}}}]}}")
    return "\n".join(lines) + "\n"


SELF_MERGE = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: &a {image: r.io/self:1, <<: *a}\n"


def config(tmp_path, kubeconfig, **helm_section):
    return parse_config({"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
                         "kubernetes": {"kubeconfig": str(kubeconfig)},
                         "helm": {"maxReleaseBytes": CAP, **helm_section}})


def rows_of(cfg) -> list[dict]:
    return helm.extract(cfg, Store(cfg.store), datetime.now(timezone.utc))["helm"].to_pylist()


@pytest.fixture
def one(kube_env):
    server = kube_env.server(token=TOKEN)
    server.add(helm_secret(helm_release("good", "shop", 1, app_manifest("v1"))))
    return server, kube_env.kubeconfig({"prod": (server, TOKEN)})


@pytest.mark.parametrize("decompressed", [CAP + 1, 16 * CAP], ids=["cap+1", "16x cap"])
def test_a_gzip_bomb_past_the_cap_fails_naming_the_release_in_bounded_memory(one, tmp_path, decompressed):
    server, kubeconfig = one
    cfg = config(tmp_path, kubeconfig)
    # The client imports its API modules on first use (tens of MB): paid before measuring.
    assert {r["release"] for r in rows_of(cfg)} == {"good"}
    server.add(helm_secret(helm_release("payments", "shop", 7, ""), payload=bomb_payload(decompressed)))

    tracemalloc.start()
    try:
        with pytest.raises(HelmError) as e:
            rows_of(cfg)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert str(e.value) == ("helm release prod/shop/payments: secret sh.helm.release.v1.payments.v7: cannot decode "
                            "stored release: larger than 8 MiB once decompressed (helm.maxReleaseBytes); a release "
                            "this large is not Helm's: check who created this object")
    assert (e.value.namespace, e.value.release) == ("shop", "payments")
    # Never more than the cap is decompressed: the peak is the cap's bytes and one copy of them
    # (zlib joins its output blocks), not all of it as a whole-buffer gzip.decompress would build.
    assert peak < 3 * CAP, f"peak traced memory {peak / MIB:.1f} MiB for a cap of {CAP / MIB:.0f} MiB"
    assert held < MIB   # and none of it is kept alive by the error


def test_a_release_of_exactly_the_cap_is_read(one, tmp_path):
    server, kubeconfig = one
    server.add(helm_configmap(helm_release("big", "shop", 1, ""), payload=gzip_payload(release_json_of_size(CAP))))
    images = {r["image"] for r in rows_of(config(tmp_path, kubeconfig))}
    assert images == {"registry.example.com/shop/app:v1", "r.io/exact:1"}


def test_the_cap_applies_to_uncompressed_records_too(one, tmp_path):
    server, kubeconfig = one
    raw = release_json_of_size(1024 * 1024 + 1)   # Helm reads a record without the gzip header as is
    server.add(helm_configmap(helm_release("plain", "shop", 2, ""), payload=base64.b64encode(raw).decode()))
    with pytest.raises(HelmError, match=r"^helm release prod/shop/plain: configmap plain\.v2: cannot decode stored "
                                        r"release: larger than 1 MiB once decompressed"):
        rows_of(config(tmp_path, kubeconfig, maxReleaseBytes=MIB))


def test_thirty_nested_merge_keys_in_under_a_kilobyte_are_refused(one, tmp_path):
    server, kubeconfig = one
    doc = merge_bomb(30)
    assert len(doc) < 1024
    server.add(helm_secret(helm_release("fleet", "ops", 3, doc)))
    with pytest.raises(HelmError) as e:
        rows_of(config(tmp_path, kubeconfig))
    assert str(e.value) == ("helm release prod/ops/fleet: secret sh.helm.release.v1.fleet.v3: rendered manifest "
                            "refused: YAML merge keys (<<) expand to more than 100,000 entries")


def test_a_mapping_merged_into_itself_is_refused_not_recursed_into(one, tmp_path):
    server, kubeconfig = one
    server.add(helm_secret(helm_release("loop", "ops", 2, SELF_MERGE)))
    with pytest.raises(HelmError, match=r"^helm release prod/ops/loop: secret sh\.helm\.release\.v1\.loop\.v2: "
                                        r"rendered manifest refused: a YAML merge key \(<<\) merges a mapping "
                                        r"into itself$"):
        rows_of(config(tmp_path, kubeconfig))


def test_merge_keys_that_stay_small_are_still_read_once_each(one, tmp_path):
    """The bound does not cost real charts their images: shared anchors merged many times over."""
    server, kubeconfig = one
    doc = merge_bomb(12).replace("r.io/bomb:1", "r.io/merged:1")   # 4,096 entries when expanded
    doc += ("---\nkind: Deployment\nx: &base {image: r.io/base:1, imagePullPolicy: Always}\n"
            "spec: {template: {spec: {containers: [{<<: *base, name: a}, {<<: *base, name: b, image: r.io/own:2}]}}}\n")
    server.add(helm_secret(helm_release("charts", "ops", 1, doc)))
    images = {r["image"] for r in rows_of(config(tmp_path, kubeconfig)) if r["release"] == "charts"}
    # An override and the merged value are both kept: over-keeping is the safe side.
    assert images == {"r.io/merged:1", "r.io/base:1", "r.io/own:2"}


def test_a_revision_whose_name_hides_its_number_is_named_by_revision(one, tmp_path):
    server, kubeconfig = one
    bad = helm_configmap(helm_release("odd", "shop", 5, ""), payload="%%%")
    bad["metadata"]["name"] = "renamed-by-hand"
    server.add(bad)
    with pytest.raises(HelmError, match=r"^helm release prod/shop/odd: configmap renamed-by-hand \(revision 5\): "
                                        r"cannot decode stored release: not base64"):
        rows_of(config(tmp_path, kubeconfig))


@pytest.mark.parametrize("hostile", ["gzip bomb", "merge-key bomb", "self merge"])
def test_run_source_publishes_the_failure_instead_of_raising(one, tmp_path, hostile):
    server, kubeconfig = one
    rel = helm_release("evil", "shop", 9, {"gzip bomb": "", "merge-key bomb": merge_bomb(30),
                                           "self merge": SELF_MERGE}[hostile])
    server.add(helm_secret(rel, payload=bomb_payload(CAP + 1) if hostile == "gzip bomb" else None))
    staging = tmp_path / "staging"
    staging.mkdir()

    st = run_source("helm", config(tmp_path, kubeconfig), str(staging), datetime.now(timezone.utc))

    assert st.status == "failed"
    assert st.error.startswith("helm release prod/shop/evil: secret sh.helm.release.v1.evil.v9: ")
    assert "\n" not in st.error and "Traceback" not in st.error
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("hostile", ["gzip bomb", "merge-key bomb", "self merge"])
def test_snapshot_of_a_hostile_release_is_published_incomplete_and_its_plan_deletes_nothing(
        hostile, kube_env, registry, registry_client, unique_repo, tmp_path, run_cli):
    repo = unique_repo
    digest = old(registry_client, repo, "v1")   # built in 2024, referenced by nothing: a complete plan deletes it
    server = kube_env.server(token=TOKEN)
    server.add(helm_secret(helm_release("good", "shop", 1, app_manifest("v1"))))
    rel = helm_release("evil", "shop", 9, {"gzip bomb": "", "merge-key bomb": merge_bomb(30),
                                           "self merge": SELF_MERGE}[hostile])
    server.add(helm_secret(rel, payload=bomb_payload(CAP + 1) if hostile == "gzip bomb" else None))
    kubeconfig = kube_env.kubeconfig({"prod": (server, TOKEN)})
    store = tmp_path / "store"
    cfg = tmp_path / "regsweep.yaml"
    cfg.write_text(yaml.safe_dump({
        "store": str(store), "registry": {"url": registry.url, "repositories": [repo]},
        "kubernetes": {"kubeconfig": str(kubeconfig)}, "helm": {"maxReleaseBytes": CAP},
        "cleanup": {"disableGitHistoryBasedPolicy": True, "keepImagesBuiltWithinLastNHours": 2,
                    "unlinkedImages": "delete"}}))

    snap = run_cli("snapshot", "--config", cfg)

    assert snap.returncode == 1, snap.stderr
    assert "Traceback" not in snap.stderr
    errors = [line for line in snap.stderr.splitlines() if line.startswith("regsweep: error: helm")]
    assert len(errors) == 1 and errors[0].startswith(
        "regsweep: error: helm release prod/shop/evil: secret sh.helm.release.v1.evil.v9: "), snap.stderr
    sid = snap.stdout.strip().splitlines()[-1]
    meta = json.loads((store / "snapshots" / sid / "snapshot.json").read_text())
    assert meta["complete"] is False
    assert {k: v["status"] for k, v in meta["sources"].items()} == {
        "registry": "ok", "kubernetes": "ok", "helm": "failed", "git": "skipped"}
    assert meta["sources"]["helm"]["error"] == errors[0].removeprefix("regsweep: error: ")

    plan = run_cli("plan", "--config", cfg, "--snapshot", sid, "--json", tmp_path / "plan.json")
    assert plan.returncode == 0, plan.stderr
    rows = json.loads((tmp_path / "plan.json").read_text())
    assert [(r["digest"], r["action"]) for r in rows] == [(digest, "keep")]
    assert rows[0]["reasons"][0].startswith("snapshot incomplete: helm failed: helm release prod/shop/evil: ")
    assert status(registry_client, repo, digest) == 200
