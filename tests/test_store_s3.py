"""The store on an object store (moto's S3 server on loopback), through the same code as a local one."""

from __future__ import annotations

import json

import yaml

from testbed import push_image
from tasks.store.schemas import TAGS
from tasks.store.store import Store, new_id
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)
from tests.support.s3 import s3_store  # noqa: F401 (fixtures)


def test_snapshot_on_s3_is_invisible_until_published_and_reads_back_typed(s3_store):
    store = Store(s3_store)
    sid = new_id()
    staging = store.snapshots.staging_dir(sid)
    row = {"repository": "a", "tag": "1", "digest": "sha256:" + "a" * 64, "gone": False}
    store.snapshots.write_source_tables(staging, {"tags": [row]}, {"tags": TAGS})
    assert store.snapshots.list() == []  # tables written, snapshot.json not yet: not published
    store.snapshots.publish(sid, {"created_at": "2026-01-01T00:00:00+00:00", "complete": True})
    assert store.snapshots.list() == [sid]
    t = store.snapshots.table(sid, "tags")
    assert t.schema.equals(TAGS, check_metadata=False) and t.to_pylist() == [row]
    assert Store(s3_store).snapshots.resolve("latest") == sid  # a second process sees the same


def test_cli_snapshot_and_plan_with_an_s3_store(run_cli, registry, registry_client, unique_repo, tmp_path, s3_store,
                                                s3_env):
    digest = push_image(registry_client, unique_repo, "v1")
    cfg = tmp_path / "regsweep.yaml"
    cfg.write_text(yaml.safe_dump({
        "store": s3_store, "registry": {"url": registry.url, "repositories": [unique_repo]},
        "helm": {"enabled": False},
        "cleanup": {"disableKubernetesBasedPolicy": True, "disableGitHistoryBasedPolicy": True},
    }))
    r = run_cli("snapshot", "--config", cfg, env=s3_env)
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip().splitlines()[-1]
    out = tmp_path / "plan.json"
    r = run_cli("plan", "--config", cfg, "--snapshot", sid, "--json", out, env=s3_env)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [(x["repository"], x["tag"], x["digest"], x["action"]) for x in rows] == [
        (unique_repo, "v1", digest, "keep")]
    store = Store(s3_store)
    assert store.snapshots.list() == [sid]
    assert store.snapshots.table(sid, "tags").column("digest").to_pylist() == [digest]
    assert store.plans.meta(r.stdout.strip().splitlines()[-1])["snapshot_id"] == sid
