"""Growth history is read back from every published snapshot, incomplete ones included."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tasks.history.growth import growth
from tasks.store.schemas import CHILDREN, LINKS, MANIFESTS, TAGS
from tasks.store.store import Store, new_id

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _publish(store: Store, when: datetime, n_tags: int | None, complete: bool = True) -> str:
    sid = new_id(when)
    staging = store.staging_dir(sid)
    if n_tags is not None:
        tags = [{"repository": f"team/r{i % 3}", "tag": f"t{i}", "digest": f"sha256:{i:064x}", "gone": False}
                for i in range(n_tags)]
        manifests = [{"repository": t["repository"], "digest": t["digest"], "media_type": "application/vnd.oci.image.manifest.v1+json",
                      "kind": "image", "artifact_type": None, "size": 1000, "created": when, "revision": None, "subject": None}
                     for t in tags]
        store.write_source_tables(staging, {"tags": tags, "manifests": manifests, "children": [], "links": []},
                                  {"tags": TAGS, "manifests": MANIFESTS, "children": CHILDREN, "links": LINKS})
    store.publish_snapshot(sid, {"created_at": when.isoformat(), "complete": complete, "registry": "http://r",
                                 "sources": {}})
    return sid


@pytest.mark.unit
def test_growth_counts_each_snapshot_and_its_delta(tmp_path):
    store = Store(str(tmp_path))
    _publish(store, T0, 10)
    _publish(store, T0 + timedelta(days=1), None, complete=False)  # registry failed that day
    _publish(store, T0 + timedelta(days=2), 25)
    df = growth(store)
    assert df["tags"].tolist()[0] == 10 and df["tags"].isna().tolist() == [False, True, False]
    assert df["complete"].tolist() == [True, False, True]
    assert df["image_bytes"].tolist()[2] == 25_000
    assert df["unique_bytes"].isna().all()   # no BLOBS table: taken before regsweep recorded blobs
    assert df["added"].tolist()[2] == 15 and df["removed"].tolist()[2] == 0   # diffed across the gap
    assert df["repositories"].tolist()[2] == 3
    assert growth(store, since=T0 + timedelta(days=2))["tags"].tolist() == [25]


def test_history_command_prints_table_and_draws_chart(tmp_path, run_cli):
    store = tmp_path / "store"
    s = Store(str(store))
    for day, n in enumerate((5, 8, 13)):
        _publish(s, T0 + timedelta(days=day), n)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store: {store}\nregistry: {{url: http://127.0.0.1:1}}\n")
    chart = tmp_path / "growth.png"
    r = run_cli("history", "--config", cfg, "--since", "2026-11-02", "--chart", chart)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["snapshot", "created_at", "complete"]
    assert len(lines[:lines.index("")]) == 3 and "13" in lines[2].split()
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Traceback" not in r.stderr
    r = run_cli("history", "--config", cfg, "--since", "yesterday")
    assert r.returncode == 2 and "--since" in r.stderr
