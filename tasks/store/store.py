"""The snapshot and plan store: a local directory or any fsspec URL.

Layout (every table readable by pandas, pyarrow, DuckDB and Spark):

    <store>/snapshots/<id>/snapshot.json      written last: its presence publishes the snapshot
    <store>/snapshots/<id>/<table>.parquet    one per table of each source that succeeded; a directory
                                              of part-NNNNN.parquet files when a scan ran in batches
    <store>/plans/<id>/plan.json, plan.parquet
    <store>/cache/<name>.parquet              caches: manifests by digest (tasks/sources/blobcache.py), first
                                              sightings of untimed digests (tasks/plan/history_rules.py)
    <store>/journal/<plan id>/<n>.parquet     sweep journal, append-only (tasks/sweep/journal.py)
    <store>/locks/sweep-<registry>.lock       one sweep per registry (tasks/sweep/lock.py)

On a local disk a snapshot is written into a hidden staging directory and renamed into place;
on object stores, where rename is a copy, `snapshot.json` written after every table is the
commit marker. Either way readers only ever see published snapshots.

Every I/O failure is a StoreError naming the path; a file that is not there is the one
exception readers see as FileNotFoundError (callers decide what a missing file means).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tasks.common.errors import StoreError
from tasks.common.units import utcnow

ID_FORMAT = "%Y%m%dT%H%M%S"


def new_id(now: datetime | None = None) -> str:
    """An id that sorts by time: 20261129T085500.123Z-1a2b."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{now.strftime(ID_FORMAT)}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(2)}"


@dataclass
class SourceStatus:
    """What snapshot.json records per source."""

    status: str                       # ok | failed | skipped
    rows: int = 0
    seconds: float = 0.0
    error: str | None = None
    tables: dict[str, int] = field(default_factory=dict)
    # what the source noticed (tasks/common/notes.py): {"warnings": {count, messages}, "retries": {count, messages}}
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status, "rows": self.rows, "seconds": round(self.seconds, 3)}
        if self.error:
            d["error"] = self.error
        if self.tables:
            d["tables"] = self.tables
        d.update(self.notes)
        return d


def conform(table: pa.Table | list[dict] | Any, schema: pa.Schema) -> pa.Table:
    """Cast rows, a pandas frame or a table to `schema` exactly (column order and types)."""
    if isinstance(table, list):
        return pa.Table.from_pylist(table, schema=schema)
    if not isinstance(table, pa.Table):  # a pandas DataFrame
        # A column with no value at all is float NaN to pandas: nulls of the schema's type here.
        empty = {f.name: [None] * len(table) for f in schema if f.name in table.columns
                 and table[f.name].dtype.kind == "f" and not pa.types.is_floating(f.type) and table[f.name].isna().all()}
        return pa.Table.from_pandas(table.assign(**empty) if empty else table, schema=schema, preserve_index=False)
    return table.select(schema.names).cast(schema)


class Store:
    """Snapshots, plans, caches and journals under one root."""

    def __init__(self, url: str):
        self.url = url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise StoreError(f"store {url}: {e}") from None
        self.root = self.root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self._appended = itertools.count(1)   # orders appends within one clock tick
        self._durable_dirs: set[str] = set()  # local log directories whose entry is already fsynced

    # -- paths ------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _fail(self, doing: str, path: str, e: BaseException) -> StoreError:
        return StoreError(f"store {self.url}: cannot {doing} {path}: {e}")

    def _makedirs(self, path: str) -> None:
        try:
            self.fs.makedirs(path, exist_ok=True)
        except OSError as e:
            raise self._fail("create", path, e) from None

    # -- generic tables -----------------------------------------------------------------------
    def write_table(self, path: str, table: pa.Table) -> None:
        self._makedirs(path.rsplit("/", 1)[0])
        try:
            with self.fs.open(path, "wb") as f:
                pq.write_table(table, f, compression="zstd")
        except OSError as e:
            raise self._fail("write", path, e) from None

    def read_table(self, path: str, schema: pa.Schema | None = None, columns: list[str] | None = None,
                   filters: list | None = None) -> pa.Table:
        """A Parquet file (some columns, the row groups `filters` select) as a table; `path` may
        also be a directory of part files (`<table>.parquet/part-NNNNN.parquet`, written by the
        batches of a scaled-out scan), read as one dataset in part order.

        Arrow reads from memory it owns: the file's bytes are read here and copied into an
        Arrow buffer. Handed a Python file object (or Python-owned bytes), Arrow's scan threads
        release it after `read_table` returns, which takes the GIL; one doing so while the
        interpreter exits is ended mid-C++ frame and aborts the process ("terminate called
        without an active exception", exit -6) after its work is done.
        """
        try:
            owned = self._owned(path)
        except (FileNotFoundError, IsADirectoryError):
            owned = None
        except OSError as e:
            raise self._fail("read", path, e) from None
        # No file, or (on S3) the empty "directory" object of a prefix: a table in parts, if any.
        parts = self.table_parts(path) if owned is None or owned.size == 0 else []
        if owned is None and not parts:
            raise FileNotFoundError(path)
        try:
            if not parts:
                return pq.read_table(pa.BufferReader(owned), schema=schema, columns=columns, filters=filters)
            # Every part is read the same owned way; the dataset makes them one table.
            tables = [pq.read_table(pa.BufferReader(self._owned(p)), schema=schema) for p in parts]
            dataset = ds.dataset(tables, schema=schema or tables[0].schema)
            return dataset.to_table(columns=columns, filter=pq.filters_to_expression(filters) if filters else None)
        except (OSError, pa.ArrowInvalid) as e:
            raise self._fail("read", path, e) from None

    def _owned(self, path: str) -> pa.Buffer:
        if self.local:
            # read by Arrow itself into memory it owns: no Python bytes to copy (a third of the
            # time of reading a 10^6-tag snapshot's tables went to that copy)
            if os.path.isdir(path):
                raise IsADirectoryError(path)
            with pa.OSFile(path, "rb") as f:
                return f.read_buffer()
        with self.fs.open(path, "rb") as f:
            data = f.read()
        owned = pa.allocate_buffer(len(data))
        memoryview(owned).cast("B")[:] = data
        return owned

    def table_parts(self, path: str) -> list[str]:
        """The part files of a table written in parts, in order; [] when it is not one."""
        return sorted(p for p in self._list(path) or [] if p.rsplit("/", 1)[-1].startswith("part-")
                      and p.endswith(".parquet"))

    def write_json(self, path: str, data: Any) -> None:
        self._makedirs(path.rsplit("/", 1)[0])
        try:
            with self.fs.open(path, "w") as f:
                json.dump(data, f, indent=2, sort_keys=False, default=str)
        except OSError as e:
            raise self._fail("write", path, e) from None

    def read_json(self, path: str) -> Any:
        try:
            with self.fs.open(path, "r") as f:
                return json.load(f)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise self._fail("read", path, e) from None

    def _list(self, path: str) -> list[str] | None:
        """The entries under a directory (or prefix), None when there is none."""
        try:
            return self.fs.ls(path, detail=False) if self.fs.exists(path) else None
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._fail("list", path, e) from None

    def _publish(self, staging: str, final: str, marker: str, doc: dict[str, Any]) -> str:
        """Write the marker file last, then move a local staging directory into place; returns `final`."""
        self.write_json(f"{staging}/{marker}", doc)
        if staging != final:
            try:
                os.rename(staging, final)  # atomic on one local filesystem
            except OSError as e:
                raise self._fail("publish", final, e) from None
        return final

    # -- published collections (snapshots, plans) ----------------------------------------------
    def _published(self, kind: str, marker: str) -> list[str]:
        base = self.path(kind)
        ids = []
        for entry in self._list(base) or []:
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith(".") and self.fs.exists(f"{base}/{name}/{marker}"):
                ids.append(name)
        return sorted(ids)

    def _resolve(self, kind: str, marker: str, ref: str | None) -> str:
        ids = self._published(kind, marker)
        if ref in (None, "", "latest"):
            if not ids:
                raise StoreError(f"store {self.url}: no {kind} yet")
            return ids[-1]
        if ref in ids:
            return ref
        raise StoreError(f"store {self.url}: no {kind[:-1]} {ref!r}")

    # -- snapshots ----------------------------------------------------------------------------
    def list_snapshots(self) -> list[str]:
        return self._published("snapshots", "snapshot.json")

    def resolve_snapshot(self, ref: str | None = "latest") -> str:
        return self._resolve("snapshots", "snapshot.json", ref)

    def staging_dir(self, snapshot_id: str) -> str:
        """Where sources write a snapshot's tables before it is published."""
        path = self.path("snapshots", f".staging-{snapshot_id}") if self.local else self.path("snapshots", snapshot_id)
        self._makedirs(path)
        return path

    def write_source_tables(self, staging: str, tables: dict[str, pa.Table], schemas: dict[str, pa.Schema],
                            part: int | None = None) -> dict[str, int]:
        """Write a source's tables into `staging`: `<name>.parquet`, or with `part` one part file
        `<name>.parquet/part-NNNNN.parquet` of a table that several batches write."""
        counts = {}
        for name, schema in schemas.items():
            t = conform(tables[name], schema)
            path = f"{staging}/{name}.parquet" + (f"/part-{part:05d}.parquet" if part is not None else "")
            self.write_table(path, t)
            counts[name] = t.num_rows
        return counts

    def remove_tables(self, staging: str, names: Iterable[str]) -> None:
        """Remove tables (whole, or every part) from a staging area: a source that failed leaves none."""
        for name in names:
            path = f"{staging}/{name}.parquet"
            try:
                if self.fs.exists(path):
                    self.fs.rm(path, recursive=True)
            except OSError as e:
                raise self._fail("remove", path, e) from None

    def publish_snapshot(self, snapshot_id: str, meta: dict[str, Any]) -> str:
        """Write snapshot.json last and make the snapshot visible; returns its path."""
        return self._publish(self.staging_dir(snapshot_id), self.path("snapshots", snapshot_id), "snapshot.json",
                             {"id": snapshot_id, **meta})

    def snapshot_meta(self, snapshot_id: str) -> dict[str, Any]:
        return self.read_json(self.path("snapshots", snapshot_id, "snapshot.json"))

    def snapshot_table(self, snapshot_id: str, table: str, schema: pa.Schema | None = None,
                       columns: list[str] | None = None) -> pa.Table | None:
        """A snapshot's table (or some of its columns), or None when its source was skipped or failed."""
        try:
            return self.read_table(self.path("snapshots", snapshot_id, f"{table}.parquet"), schema, columns)
        except FileNotFoundError:
            return None

    # -- plans --------------------------------------------------------------------------------
    def list_plans(self) -> list[str]:
        return self._published("plans", "plan.json")

    def resolve_plan(self, ref: str | None = "latest") -> str:
        return self._resolve("plans", "plan.json", ref)

    def publish_plan(self, plan_id: str, table: pa.Table, meta: dict[str, Any]) -> str:
        with self.plan_writer(plan_id, table.schema) as writer:
            writer.write(table)
            return writer.publish(meta)

    def plan_writer(self, plan_id: str, schema: pa.Schema, dictionary: list[str] | None = None) -> "PlanWriter":
        """A plan's Parquet written batch by batch, published (plan.json last) by `publish`;
        `dictionary`: the only columns to dictionary-encode (all when None)."""
        return PlanWriter(self, plan_id, schema, dictionary)

    def plan_meta(self, plan_id: str) -> dict[str, Any]:
        return self.read_json(self.path("plans", plan_id, "plan.json"))

    def plan_table(self, plan_id: str) -> pa.Table:
        return self.read_table(self.path("plans", plan_id, "plan.parquet"))

    # -- caches -------------------------------------------------------------------------------
    def read_cache(self, name: str) -> pa.Table | None:
        try:
            return self.read_table(self.path("cache", f"{name}.parquet"))
        except (FileNotFoundError, StoreError):
            return None  # a cache that cannot be read is only a slower run

    def write_cache(self, name: str, table: pa.Table) -> None:
        tmp = self.path("cache", f".{name}.{uuid.uuid4().hex}.parquet")
        final = self.path("cache", f"{name}.parquet")
        self.write_table(tmp, table)
        try:
            self.fs.mv(tmp, final)
        except OSError as e:
            raise self._fail("write", final, e) from None

    # -- exclusive objects (the sweep lock) ----------------------------------------------------------
    @property
    def atomic_create(self) -> bool:
        """Whether `create_exclusive` is atomic here: a local disk (O_EXCL) or S3 (conditional writes)."""
        return self.local or self._s3

    @property
    def _s3(self) -> bool:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        return bool({"s3", "s3a"} & set(protocol))

    def create_exclusive(self, path: str, data: bytes) -> str | None:
        """Create `path` holding `data` only if it does not exist: FileExistsError if it does.

        On S3 this is one conditional PUT (If-None-Match: *), so of two writers exactly one wins;
        returns the object's ETag, which `delete_if` needs (None on a local disk, see tasks/sweep/lock.py).
        Other object stores have no such write: there the check and the write are two steps.
        """
        self._makedirs(path.rsplit("/", 1)[0])
        try:
            if self._s3:
                out = self.fs.pipe_file(path, data, mode="create")
                return (out or {}).get("ETag")
            if self.fs.exists(path):
                raise FileExistsError(path)
            self.fs.pipe_file(path, data)
            return None
        except FileExistsError:
            raise
        except OSError as e:
            raise self._fail("create", path, e) from None

    def read_versioned(self, path: str) -> tuple[bytes, str | None]:
        """An object's bytes and the ETag of that very version (S3); FileNotFoundError when absent."""
        self.fs.invalidate_cache(path)
        try:
            with self.fs.open(path, "rb") as f:
                # s3fs pins its reads to the ETag it saw at open: bytes and tag are of one version
                return f.read(), (getattr(f, "details", None) or {}).get("ETag")
        except FileNotFoundError:
            raise
        except OSError as e:
            raise self._fail("read", path, e) from None

    def delete_if(self, path: str, etag: str | None) -> bool:
        """Delete `path` only while it is still the version `etag` names (S3 If-Match); whether it was."""
        self.fs.invalidate_cache(path)
        try:
            if self._s3 and etag:
                bucket, key, _ = self.fs.split_path(path)
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
            else:
                self.fs.rm(path)
            return True
        except OSError:  # gone already, or replaced by another writer: theirs now
            return False

    # -- append-only logs (sweep journal) ---------------------------------------------------------
    def append_rows(self, log: str, table: pa.Table) -> None:
        """Append a batch as a new immutable file, durable when this returns; readers concatenate
        the files in name order (time, then this store's own count).

        On a local disk the file is written aside, fsynced, renamed into place and its directory
        fsynced (a new log's parent too), so it survives a crash or SIGKILL right after; on object
        stores the PUT returning is that point.
        """
        base = self.path(log)
        name = f"{utcnow().strftime('%Y%m%dT%H%M%S%f')}-{next(self._appended):06d}-{uuid.uuid4().hex[:6]}.parquet"
        if not self.local:
            self.write_table(f"{base}/{name}", table)
            return
        try:
            if base not in self._durable_dirs:
                os.makedirs(base, exist_ok=True)
                _fsync_dir(os.path.dirname(base))
                self._durable_dirs.add(base)
            tmp = f"{base}/.{name}.tmp"
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, f"{base}/{name}")
            _fsync_dir(base)
        except OSError as e:
            raise self._fail("write", f"{base}/{name}", e) from None

    def read_rows(self, log: str, schema: pa.Schema) -> pa.Table:
        """Every batch appended to `log`, in order (an empty table when there is none)."""
        files = sorted(p for p in self._list(self.path(log)) or [] if p.endswith(".parquet")
                       and not p.rsplit("/", 1)[-1].startswith("."))
        if not files:
            return schema.empty_table()
        return pa.concat_tables([self.read_table(p).cast(schema) for p in files])


class PlanWriter:
    """plan.parquet written one batch (a row group or more) at a time into the plan's staging
    area, so a plan never has to be whole in memory; `publish` then makes it visible as
    `Store.publish_plan` does. Leaving the `with` block unpublished removes what was written."""

    def __init__(self, store: Store, plan_id: str, schema: pa.Schema, dictionary: list[str] | None = None):
        self.store, self.plan_id = store, plan_id
        self.final = store.path("plans", plan_id)
        self.staging = store.path("plans", f".staging-{plan_id}") if store.local else self.final
        path = f"{self.staging}/plan.parquet"
        store._makedirs(self.staging)
        try:
            self._file = store.fs.open(path, "wb")
            self._writer = pq.ParquetWriter(self._file, schema, compression="zstd",
                                            use_dictionary=True if dictionary is None else dictionary)
        except OSError as e:
            raise store._fail("write", path, e) from None
        self.rows = 0
        self.published: str | None = None

    def write(self, table: pa.Table) -> None:
        try:
            self._writer.write_table(table)
        except OSError as e:
            raise self.store._fail("write", f"{self.staging}/plan.parquet", e) from None
        self.rows += table.num_rows

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
                self._file.close()
            except OSError as e:
                raise self.store._fail("write", f"{self.staging}/plan.parquet", e) from None

    def publish(self, meta: dict[str, Any]) -> str:
        """Finish the file, write plan.json last and move the plan into place; returns its path."""
        self._close()
        self.published = self.store._publish(self.staging, self.final, "plan.json", {"id": self.plan_id, **meta})
        return self.published

    def __enter__(self) -> "PlanWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.published is None:
            try:
                self._close()
            except StoreError:
                pass   # the error that ended the block is the one to report
            try:
                self.store.fs.rm(self.staging, recursive=True)
            except OSError:
                pass   # an unpublished staging area is invisible to readers anyway


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_ids_since(ids: Iterable[str], since: datetime | None) -> list[str]:
    """Ids (which sort by time) at or after `since`."""
    if since is None:
        return list(ids)
    key = since.astimezone(timezone.utc).strftime(ID_FORMAT)
    return [i for i in ids if i[: len(key)] >= key]
