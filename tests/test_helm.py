"""Helm source: release history stored by Helm's Secret and ConfigMap drivers, read through the real client."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import datetime, timezone

import pytest
import yaml

from tasks.sources.kubernetes import helm
from tasks.config.models import parse_config
from tasks.common.errors import HelmError
from tasks.store.store import Store
from testbed.kube import encode_release, helm_configmap, helm_release, helm_secret, manifest, pod_spec, workload
from tests.support.kube import kube_env  # noqa: F401 (fixtures)

TOKEN = "helm-sekret-token-77"


def make_config(tmp_path, kubeconfig, keep=0, **kube):
    return parse_config({"store": str(tmp_path / "store"), "registry": {"url": "https://registry.example.com"},
                         "kubernetes": {"kubeconfig": str(kubeconfig), **kube}, "helm": {"keepRevisions": keep}})


def rows_of(config) -> list[dict]:
    return helm.extract(config, Store(config.store), datetime.now(timezone.utc))["helm"].to_pylist()


def app_manifest(tag: str) -> str:
    return manifest(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"}, "spec": {"ports": [{"port": 80}]}},
        workload("Deployment", "shop", "app", [f"registry.example.com/shop/app:{tag}"],
                 init=["registry.example.com/shop/migrate:1"]),
    )


@pytest.fixture
def token_cluster(kube_env):
    """One server requiring a bearer token, and a kubeconfig whose current context points at it."""
    server = kube_env.server(token=TOKEN)
    return server, kube_env.kubeconfig({"prod": (server, TOKEN)})


@pytest.mark.unit
def test_encoder_matches_helms_storage_format():
    """data.release of a Secret is base64 of Helm's base64 string of the gzipped JSON."""
    rel = helm_release("app", "shop", 3, "kind: X\n")
    secret, cm = helm_secret(rel), helm_configmap(rel)
    helm_string = base64.b64decode(secret["data"]["release"]).decode()
    assert helm_string == cm["data"]["release"]
    raw = base64.b64decode(helm_string)
    assert raw[:3] == b"\x1f\x8b\x08"
    assert json.loads(gzip.decompress(raw))["version"] == 3
    assert secret["type"] == "helm.sh/release.v1" and secret["metadata"]["name"] == "sh.helm.release.v1.app.v3"
    assert secret["metadata"]["labels"] == {"name": "app", "owner": "helm", "status": "deployed", "version": "3",
                                            "createdAt": "1790000000"}
    assert cm["metadata"]["name"] == "app.v3"


def test_secret_driver_every_revision_with_status_chart_and_date(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    for rev, status in ((1, "superseded"), (2, "failed"), (3, "deployed")):
        server.add(helm_secret(helm_release("app", "shop", rev, app_manifest(f"v{rev}"), status=status,
                                            chart="shop-app", chart_version=f"0.{rev}.0", app_version=f"{rev}.0",
                                            last_deployed=f"2026-11-0{rev}T10:00:00.123456789+01:00")))
    rows = rows_of(make_config(tmp_path, kubeconfig))
    got = {(r["revision"], r["status"], r["image"]) for r in rows}
    assert got == {(rev, st, img) for rev, st in ((1, "superseded"), (2, "failed"), (3, "deployed"))
                   for img in (f"registry.example.com/shop/app:v{rev}", "registry.example.com/shop/migrate:1")}
    r3 = next(r for r in rows if r["revision"] == 3)
    assert (r3["context"], r3["namespace"], r3["release"], r3["driver"]) == ("prod", "shop", "app", "secret")
    assert (r3["chart"], r3["app_version"]) == ("shop-app-0.3.0", "3.0")
    assert r3["last_deployed"] == datetime(2026, 11, 3, 9, 0, 0, 123456, tzinfo=timezone.utc)
    assert all(q.get("labelSelector") == "owner=helm" for q in server.list_requests("secrets"))


def test_configmap_driver_and_uncompressed_payloads(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(helm_configmap(helm_release("cm-app", "tools", 1, app_manifest("cm1"), status="superseded")),
               helm_configmap(helm_release("cm-app", "tools", 2, app_manifest("cm2")), compress=False),
               helm_secret(helm_release("old", "tools", 1, app_manifest("plain")), compress=False))
    rows = rows_of(make_config(tmp_path, kubeconfig))
    assert {(r["release"], r["revision"], r["driver"], r["image"]) for r in rows if "/app:" in r["image"]} == {
        ("cm-app", 1, "configmap", "registry.example.com/shop/app:cm1"),
        ("cm-app", 2, "configmap", "registry.example.com/shop/app:cm2"),
        ("old", 1, "secret", "registry.example.com/shop/app:plain"),
    }


def test_images_anywhere_in_the_manifest_including_custom_resources_and_hooks(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    rollout = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "r"},
               "spec": {"template": {"spec": pod_spec(["r.io/rollout:1"], init=["r.io/rollout-init:1"])}}}
    pipeline = {"apiVersion": "example.com/v1", "kind": "Pipeline", "metadata": {"name": "p"},
                "spec": {"stages": [{"name": "build", "pod": {"spec": {"ephemeralContainers": [
                    {"name": "dbg", "image": "r.io/stage-debug:1"}]}}}]}}
    not_a_container = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                       "data": {"image": "r.io/just-a-string:1", "containers": "r.io/also-not:1"}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod_spec(["r.io/pod:1"])}
    flow_style = '{"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": ' \
                 '{"containers": [{"name": "j", "image": "r.io/json-job:1"}]}}}}\n'
    anchors = ("apiVersion: example.com/v1\nkind: Fleet\nmetadata: {name: f}\n"
               "x-common: &common {image: r.io/merged:1, imagePullPolicy: Always}\n"
               "x-spec: &spec\n  containers:\n  - name: a\n    image: r.io/anchored:1\n"
               "spec:\n  groups:\n  - template: {spec: *spec}\n  - template:\n      spec:\n"
               "        containers:\n        - <<: *common\n          name: b\n"
               "        initContainers: [{name: c, image: !custom-tag 'r.io/tagged:1'}]\n")
    m = manifest(rollout, pipeline, not_a_container, pod, flow_style, anchors,
                 workload("StatefulSet", "x", "s", ["r.io/sts:1"]), workload("CronJob", "x", "c", ["r.io/cron:1"]))
    hook = {"name": "db-migrate", "kind": "Job", "path": "templates/hook.yaml", "events": ["pre-upgrade"],
            "manifest": yaml.safe_dump(workload("Job", "x", "migrate", ["r.io/hook:1"]))}
    server.add(helm_secret(helm_release("big", "x", 1, m, hooks=[hook])))
    images = {r["image"] for r in rows_of(make_config(tmp_path, kubeconfig))}
    assert images == {"r.io/rollout:1", "r.io/rollout-init:1", "r.io/stage-debug:1", "r.io/pod:1",
                      "r.io/json-job:1", "r.io/sts:1", "r.io/cron:1", "r.io/hook:1",
                      "r.io/merged:1", "r.io/anchored:1", "r.io/tagged:1"}


def test_keep_revisions_keeps_the_newest_n_per_release(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    for rev in range(1, 6):
        server.add(helm_secret(helm_release("a", "ns1", rev, app_manifest(f"a{rev}"))))
    for rev in range(1, 3):
        server.add(helm_secret(helm_release("b", "ns1", rev, app_manifest(f"b{rev}"))))
    server.add(helm_configmap(helm_release("a", "ns2", 7, app_manifest("other-ns"))))
    kept = {(r["namespace"], r["release"], r["revision"]) for r in rows_of(make_config(tmp_path, kubeconfig, keep=2))}
    assert kept == {("ns1", "a", 5), ("ns1", "a", 4), ("ns1", "b", 2), ("ns1", "b", 1), ("ns2", "a", 7)}
    everything = {(r["release"], r["revision"]) for r in rows_of(make_config(tmp_path, kubeconfig, keep=0))}
    assert len(everything) == 8


def test_keep_revisions_skips_decoding_revisions_it_drops(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(helm_secret(helm_release("a", "n", 1, ""), payload="%%% corrupt but dropped %%%"),
               helm_secret(helm_release("a", "n", 2, app_manifest("two"))))
    assert {r["revision"] for r in rows_of(make_config(tmp_path, kubeconfig, keep=1))} == {2}


def test_only_helm_release_objects_are_read(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    server.add(helm_secret(helm_release("app", "n", 1, app_manifest("1"))))
    # not labelled owner=helm: a selector-honouring server never returns it (its payload would not decode)
    server.add({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "sh.helm.release.v1.fake.v1", "namespace": "n", "labels": {"owner": "me"}},
                "data": {"release": base64.b64encode(b"garbage").decode()}})
    # labelled owner=helm but not a release record
    server.add({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "tls", "namespace": "n", "labels": {"owner": "helm"}},
                "data": {"tls.crt": "eA=="}})
    assert {r["release"] for r in rows_of(make_config(tmp_path, kubeconfig))} == {"app"}


def test_many_revisions_across_pages_and_namespaces(token_cluster, tmp_path):
    server, kubeconfig = token_cluster
    for ns in ("a", "b"):
        for rev in range(1, 8):
            server.add(helm_secret(helm_release("app", ns, rev, app_manifest(f"{ns}{rev}"))))
    rows = rows_of(make_config(tmp_path, kubeconfig, pageSize=3, namespaces=["a", "b"]))
    assert {(r["namespace"], r["revision"]) for r in rows} == {(ns, rev) for ns in "ab" for rev in range(1, 8)}
    assert len(server.list_requests("secrets")) == 6   # 3 pages per namespace


@pytest.mark.parametrize("driver, payload, problem", [
    ("secret", "not base64 at all!", "not base64"),
    ("secret", base64.b64encode(b"\x1f\x8b\x08 truncated gzip").decode(), "corrupt gzip data"),
    ("configmap", base64.b64encode(gzip.compress(b"{not json")).decode(), "not release JSON"),
    ("configmap", base64.b64encode(gzip.compress(b'{"manifest": "spec:\\n  containers: [{image: r.io/x:1"}')).decode(),
     "rendered manifest is not valid YAML"),
])
def test_a_release_that_cannot_be_decoded_fails_naming_it(token_cluster, tmp_path, driver, payload, problem):
    server, kubeconfig = token_cluster
    server.add(helm_secret(helm_release("good", "shop", 1, app_manifest("1"))))
    rel = helm_release("payments", "shop", 4, "")
    server.add(helm_secret(rel, payload=payload) if driver == "secret" else helm_configmap(rel, payload=payload))
    with pytest.raises(HelmError) as e:
        rows_of(make_config(tmp_path, kubeconfig))
    assert (e.value.context, e.value.namespace, e.value.release) == ("prod", "shop", "payments")
    assert str(e.value).startswith("helm release prod/shop/payments: ")
    assert problem in str(e.value)
    assert TOKEN not in str(e.value)


def test_listing_failure_is_a_cluster_error_naming_the_kind(token_cluster, tmp_path):
    from tasks.common.errors import ClusterError

    server, kubeconfig = token_cluster
    server.forbid("configmaps", namespace="shop")
    with pytest.raises(ClusterError, match=r"context prod, namespace shop, kind ConfigMap\): listing configmaps "
                                           r"in namespace shop is forbidden"):
        rows_of(make_config(tmp_path, kubeconfig, namespaces=["shop"]))


@pytest.mark.unit
def test_encode_release_round_trips_through_the_decoder():
    rel = helm_release("x", "y", 9, "kind: Pod\n")
    for compress in (True, False):
        s = encode_release(rel, compress)
        assert helm.decode_payload(s, "configmap") == rel
        assert helm.decode_payload(base64.b64encode(s.encode()).decode(), "secret") == rel


def test_snapshot_cli_marks_the_snapshot_incomplete_when_helm_fails(kube_env, tmp_path, run_cli):
    server = kube_env.server(token=TOKEN)
    server.add(workload("Deployment", "shop", "app", ["registry.example.com/shop/app:v1"]),
               helm_secret(helm_release("good", "shop", 1, app_manifest("v1"))),
               helm_secret(helm_release("payments", "shop", 2, ""), payload="%%%"))
    kubeconfig = kube_env.kubeconfig({"prod": (server, TOKEN)})
    store = tmp_path / "store"
    cfg = tmp_path / "regsweep.yaml"
    cfg.write_text(yaml.safe_dump({"store": str(store), "registry": {"url": "https://registry.example.com"},
                                   "kubernetes": {"kubeconfig": str(kubeconfig)}}))
    res = run_cli("snapshot", "--config", cfg, "--sources", "kubernetes,helm")
    assert res.returncode == 1, res.stderr
    assert "helm release prod/shop/payments: secret sh.helm.release.v1.payments.v2: cannot decode" in res.stderr
    assert TOKEN not in res.stderr + res.stdout
    sid = res.stdout.strip().splitlines()[-1]
    meta = json.loads((store / "snapshots" / sid / "snapshot.json").read_text())
    assert meta["complete"] is False
    assert meta["sources"]["kubernetes"]["status"] == "ok" and meta["sources"]["kubernetes"]["rows"] == 1
    assert meta["sources"]["helm"]["status"] == "failed"
    assert "payments" in meta["sources"]["helm"]["error"]
    assert meta["sources"]["registry"]["status"] == "skipped"
    assert (store / "snapshots" / sid / "workloads.parquet").exists()
    assert not (store / "snapshots" / sid / "helm.parquet").exists()
    assert TOKEN not in (store / "snapshots" / sid / "snapshot.json").read_text()
