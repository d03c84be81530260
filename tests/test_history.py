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
    staging = store.snapshots.staging_dir(sid)
    if n_tags is not None:
        tags = [{"repository": f"team/r{i % 3}", "tag": f"t{i}", "digest": f"sha256:{i:064x}", "gone": False}
                for i in range(n_tags)]
        manifests = [{"repository": t["repository"], "digest": t["digest"], "media_type": "application/vnd.oci.image.manifest.v1+json",
                      "kind": "image", "artifact_type": None, "size": 1000, "created": when, "revision": None, "subject": None}
                     for t in tags]
        store.snapshots.write_source_tables(staging, {"tags": tags, "manifests": manifests, "children": [], "links": []},
                                  {"tags": TAGS, "manifests": MANIFESTS, "children": CHILDREN, "links": LINKS})
    store.snapshots.publish(sid, {"created_at": when.isoformat(), "complete": complete, "registry": "http://r",
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


def test_minutes_of_history_give_no_growth_rate_or_projection(tmp_path):
    """Six snapshots two minutes apart: a rate per day from them would be noise (-15 GB/day)."""
    from tasks.history.growth import growth_report, render_text, to_json

    store = Store(str(tmp_path))
    for i, n in enumerate((60, 40, 60, 20, 60, 10)):
        _publish(store, T0 + timedelta(minutes=2 * i), n)
    report = growth_report(store, workers=1)
    text = render_text(report)
    assert "not enough history yet (10 minutes between the first and the last snapshot" in text
    assert "/day" not in text and "projection:" not in text and "bytes_per_day" not in text
    totals = to_json(report)["totals"]
    assert totals["enough_history"] is False
    assert totals["bytes_per_day"] is None and totals["bytes_in_30d"] is None and totals["tags"] == 10
    assert "top 3 repositories by size" in text


def test_a_day_of_history_gives_rates_and_projections(tmp_path):
    from tasks.history.growth import growth_report, render_text, to_json

    store = Store(str(tmp_path))
    for day, n in enumerate((10, 20, 30)):
        _publish(store, T0 + timedelta(days=day), n)
    report = growth_report(store, workers=1)
    totals = to_json(report)["totals"]
    assert totals["enough_history"] is True
    assert totals["bytes_per_day"] == 10_000 and totals["tags_per_day"] == 10
    assert totals["bytes_in_30d"] == 30_000 + 30 * 10_000
    assert "growth over 2.0 days" in render_text(report) and "top 3 repositories by growth" in render_text(report)


def test_the_growth_chart_names_the_repositories_it_shows_in_units_that_fit(tmp_path):
    from tasks.history.charts import byte_unit, growth_figure
    from tasks.history.growth import growth_report

    store = Store(str(tmp_path))
    for day, n in enumerate((5, 8)):
        _publish(store, T0 + timedelta(days=day), n)
    fig = growth_figure(growth_report(store, workers=1), top=10)
    top, bottom = fig.axes
    assert top.get_title() == "Top 3 repositories by growth" and len(top.lines) == 3   # 3 exist, 10 asked
    assert top.get_ylabel() == "image kB per repository" and bottom.get_ylabel() == "kB"   # 8 images of 1,000 B
    assert byte_unit([22_500_000]) == (1e6, "MB") and byte_unit([512]) == (1.0, "B")
