"""The store publishes whole snapshots only, and reads back what was written, typed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from tasks.common.errors import StoreError
from tasks.store.schemas import TAGS
from tasks.store.store import Store, new_id


@pytest.mark.unit
def test_ids_sort_by_time():
    t0 = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=timezone.utc)
    ids = [new_id(t0 + timedelta(milliseconds=ms)) for ms in (0, 1, 999, 1000, 86_400_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@pytest.mark.unit
def test_snapshot_invisible_until_published(tmp_path):
    store = Store(str(tmp_path / "store"))
    sid = new_id()
    staging = store.snapshots.staging_dir(sid)
    store.snapshots.write_source_tables(staging, {"tags": [{"repository": "a", "tag": "1", "digest": "sha256:aa", "gone": False}]},
                              {"tags": TAGS})
    assert store.snapshots.list() == []
    with pytest.raises(StoreError, match="no snapshots yet"):
        store.snapshots.resolve("latest")
    store.snapshots.publish(sid, {"created_at": "2026-01-01T00:00:00+00:00", "complete": True})
    assert store.snapshots.list() == [sid] and store.snapshots.resolve("latest") == sid
    t = store.snapshots.table(sid, "tags")
    assert t.schema.equals(TAGS, check_metadata=False)
    assert t.to_pylist() == [{"repository": "a", "tag": "1", "digest": "sha256:aa", "gone": False}]
    assert store.snapshots.table(sid, "workloads") is None  # a skipped or failed source has no table
    with pytest.raises(StoreError, match="no snapshot 'nope'"):
        store.snapshots.resolve("nope")


@pytest.mark.unit
def test_tables_are_cast_to_their_schema(tmp_path):
    store = Store(str(tmp_path))
    sid = new_id()
    staging = store.snapshots.staging_dir(sid)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, KeyError)):
        store.snapshots.write_source_tables(staging, {"tags": [{"repository": "a", "tag": 1, "digest": None, "gone": "x"}]},
                                  {"tags": TAGS})


@pytest.mark.unit
def test_append_only_log_reads_back_in_order(tmp_path):
    store = Store(str(tmp_path))
    schema = pa.schema([("n", pa.int64())])
    for n in range(3):
        store.append_rows("journal/p1", pa.table({"n": [n]}, schema=schema))
    assert store.read_rows("journal/p1", schema)["n"].to_pylist() == [0, 1, 2]
    assert store.read_rows("journal/none", schema).num_rows == 0


@pytest.mark.unit
def test_fsspec_memory_store_round_trip():
    store = Store("memory://regsweep-test-" + new_id())
    sid = new_id()
    staging = store.snapshots.staging_dir(sid)
    store.snapshots.write_source_tables(staging, {"tags": []}, {"tags": TAGS})
    assert store.snapshots.list() == []  # no snapshot.json yet: not published
    store.snapshots.publish(sid, {"created_at": "x", "complete": True})
    assert store.snapshots.list() == [sid]
    assert store.snapshots.table(sid, "tags").num_rows == 0


@pytest.mark.unit
def test_a_durable_append_leaves_only_published_files(tmp_path):
    store = Store(str(tmp_path))
    schema = pa.schema([("n", pa.int64())])
    for n in range(3):
        store.append_rows("journal/p1", pa.table({"n": [n]}, schema=schema))
    names = sorted(p.name for p in (tmp_path / "journal" / "p1").iterdir())
    assert len(names) == 3 and all(n.endswith(".parquet") and not n.startswith(".") for n in names)


@pytest.mark.unit
def test_a_store_root_that_is_a_file_fails_naming_the_path(tmp_path):
    root = tmp_path / "store"
    root.write_text("not a directory")
    store = Store(str(root))
    schema = pa.schema([("n", pa.int64())])
    table = pa.table({"n": [1]}, schema=schema)
    calls = [  # (call, what the message says it could not do, and to which path)
        (lambda: store.snapshots.staging_dir("s1"), f"create {root}/snapshots/.staging-s1"),
        (lambda: store.write_json(f"{root}/plans/p1/plan.json", {}), f"create {root}/plans/p1"),
        (lambda: store.write_table(f"{root}/cache/c.parquet", table), f"create {root}/cache"),
        (lambda: store.append_rows("journal/p1", table), f"write {root}/journal/p1/"),
        (lambda: store.read_json(f"{root}/plans/p1/plan.json"), f"read {root}/plans/p1/plan.json"),
    ]
    for call, failed in calls:
        with pytest.raises(StoreError) as exc:
            call()
        assert str(exc.value).startswith(f"store {root}: cannot {failed}"), str(exc.value)
        assert "\n" not in str(exc.value)
    # Reading what is not there is no error: a store that holds nothing yet.
    assert store.plans.list() == [] and store.read_rows("journal/p1", schema).num_rows == 0
    assert root.read_text() == "not a directory"



def test_reading_parquet_never_aborts_the_interpreter_at_exit(tmp_path):
    """Arrow must read from memory it owns: through a Python file object, 6-17 % of short-lived
    processes reading a plan aborted at exit ("terminate called without an active exception",
    exit -6) on the development machine. benchmarks/repro_exit_abort.py shows both paths."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "repro_exit_abort.py"
    spec = importlib.util.spec_from_file_location("repro_exit_abort", script)
    repro = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repro)
    path = repro.write_sample(tmp_path)
    assert Store(str(tmp_path)).read_table(str(path), filters=[("repository", "in", ["r1"])]).num_rows == 4
    # 24 runs: a path that aborts 6 % of the time or more fails here with probability > 77 %.
    assert repro.run("store", path, runs=24, parallel=4) == []
