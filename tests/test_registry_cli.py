"""`regsweep snapshot --sources registry` as a user runs it, against real registries."""

from __future__ import annotations

import socket

import pyarrow.parquet as pq

from testbed import push_image
from tests.support.configs import config
from tests.support.registry import REGISTRY_USER
from tests.support.registry import unique_repo  # noqa: F401 (fixtures)


def test_snapshot_registry_source(run_cli, registry, registry_client, unique_repo, tmp_path):
    d = push_image(registry_client, unique_repo, "v1")
    cfg = config(store="store", url=registry.url, repositories=[unique_repo], write=tmp_path)
    r = run_cli("snapshot", "--config", cfg, "--sources", "registry")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    sid = r.stdout.strip().splitlines()[-1]
    snap = tmp_path / "store" / "snapshots" / sid
    for table in ("tags", "manifests", "children", "links"):
        assert (snap / f"{table}.parquet").is_file(), table
    assert pq.read_table(snap / "tags.parquet").to_pylist() == [
        {"repository": unique_repo, "tag": "v1", "digest": d, "gone": False}]
    assert (tmp_path / "store" / "cache" / "registry-blobs.parquet").is_file()


def test_wrong_credentials_exit_2_with_one_line(run_cli, htpasswd_registry, tmp_path):
    cfg = config(store="store", url=htpasswd_registry.url,
                 registry={"allowInsecureCredentials": True,
                           "auth": {"username": REGISTRY_USER, "password_env": "REGSWEEP_PW"}}, write=tmp_path)
    r = run_cli("snapshot", "--config", cfg, "--sources", "registry", env={"REGSWEEP_PW": "wrong-horse-staple"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"regsweep: error: registry {htpasswd_registry.host}")
    assert "wrong-horse-staple" not in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_unreachable_registry_exit_1_without_traceback(run_cli, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config(store="store", url=f"http://127.0.0.1:{port}", write=tmp_path)
    r = run_cli("snapshot", "--config", cfg, "--sources", "registry")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"regsweep: error: registry 127.0.0.1:{port}: cannot connect" in r.stderr
    # Fail closed: the snapshot is published, marked incomplete, and has no registry tables.
    sid = r.stdout.strip().splitlines()[-1]
    snap = tmp_path / "store" / "snapshots" / sid
    assert (snap / "snapshot.json").is_file() and not (snap / "tags.parquet").exists()
    assert '"complete": false' in (snap / "snapshot.json").read_text()
