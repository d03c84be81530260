"""The store's primitives: Parquet tables, JSON files, listings, exclusive objects and append-only
logs under one root, a local directory or any fsspec URL.

Every I/O failure is a StoreError naming the path; something that is not there is the one
subclass `NotFound` (callers decide what a missing file means). Snapshots, plans and caches are
thin accessors over these (tasks/store/snapshots.py, plans.py, caches.py); `Store` joins them.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tasks.common.errors import NotFound, StoreError
from tasks.common.units import utcnow

ID_FORMAT = "%Y%m%dT%H%M%S"


def new_id(now: datetime | None = None) -> str:
    """An id that sorts by time: 20261129T085500.123Z-1a2b."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{now.strftime(ID_FORMAT)}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(2)}"


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


class Files:
    """Tables, JSON files, listings, exclusive objects and append-only logs under one root."""

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

    def fail(self, doing: str, path: str, e: BaseException) -> StoreError:
        """The StoreError for `doing` at `path` (the caller raises it)."""
        return StoreError(f"store {self.url}: cannot {doing} {path}: {e}")

    def makedirs(self, path: str) -> None:
        try:
            self.fs.makedirs(path, exist_ok=True)
        except OSError as e:
            raise self.fail("create", path, e) from None

    # -- generic tables -----------------------------------------------------------------------
    def write_table(self, path: str, table: pa.Table) -> None:
        self.makedirs(path.rsplit("/", 1)[0])
        try:
            with self.fs.open(path, "wb") as f:
                pq.write_table(table, f, compression="zstd")
        except OSError as e:
            raise self.fail("write", path, e) from None

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
            raise self.fail("read", path, e) from None
        # No file, or (on S3) the empty "directory" object of a prefix: a table in parts, if any.
        parts = self.table_parts(path) if owned is None or owned.size == 0 else []
        if owned is None and not parts:
            raise NotFound(path)
        try:
            if not parts:
                return pq.read_table(pa.BufferReader(owned), schema=schema, columns=columns, filters=filters)
            # Every part is read the same owned way; the dataset makes them one table.
            tables = [pq.read_table(pa.BufferReader(self._owned(p)), schema=schema) for p in parts]
            dataset = ds.dataset(tables, schema=schema or tables[0].schema)
            return dataset.to_table(columns=columns, filter=pq.filters_to_expression(filters) if filters else None)
        except (OSError, pa.ArrowInvalid) as e:
            raise self.fail("read", path, e) from None

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
        return sorted(p for p in self.list_dir(path) or [] if p.rsplit("/", 1)[-1].startswith("part-")
                      and p.endswith(".parquet"))

    def write_json(self, path: str, data: Any) -> None:
        self.makedirs(path.rsplit("/", 1)[0])
        try:
            with self.fs.open(path, "w") as f:
                json.dump(data, f, indent=2, sort_keys=False, default=str)
        except OSError as e:
            raise self.fail("write", path, e) from None

    def read_json(self, path: str) -> Any:
        try:
            with self.fs.open(path, "r") as f:
                return json.load(f)
        except FileNotFoundError:
            raise NotFound(path) from None
        except (OSError, ValueError) as e:
            raise self.fail("read", path, e) from None

    def list_dir(self, path: str) -> list[str] | None:
        """The entries under a directory (or prefix), None when there is none."""
        try:
            return self.fs.ls(path, detail=False) if self.fs.exists(path) else None
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self.fail("list", path, e) from None

    def publish_dir(self, staging: str, final: str, marker: str, doc: dict[str, Any]) -> str:
        """Write the marker file last, then move a local staging directory into place; returns `final`."""
        self.write_json(f"{staging}/{marker}", doc)
        if staging != final:
            try:
                os.rename(staging, final)  # atomic on one local filesystem
            except OSError as e:
                raise self.fail("publish", final, e) from None
        return final

    # -- published collections (snapshots, plans) ----------------------------------------------
    def published(self, kind: str, marker: str) -> list[str]:
        """The ids under `kind/` whose `marker` file is written (published), in order."""
        base = self.path(kind)
        ids = []
        for entry in self.list_dir(base) or []:
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith(".") and self.fs.exists(f"{base}/{name}/{marker}"):
                ids.append(name)
        return sorted(ids)

    def resolve(self, kind: str, marker: str, ref: str | None) -> str:
        """A published id: `ref` itself, or the newest for None / `latest`; NotFound otherwise."""
        ids = self.published(kind, marker)
        if ref in (None, "", "latest"):
            if not ids:
                raise NotFound(f"store {self.url}: no {kind} yet", what=kind[:-1])
            return ids[-1]
        if ref in ids:
            return ref
        raise NotFound(f"store {self.url}: no {kind[:-1]} {ref!r}", what=kind[:-1])

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
        self.makedirs(path.rsplit("/", 1)[0])
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
            raise self.fail("create", path, e) from None

    def read_versioned(self, path: str) -> tuple[bytes, str | None]:
        """An object's bytes and the ETag of that very version (S3); NotFound when absent."""
        self.fs.invalidate_cache(path)
        try:
            with self.fs.open(path, "rb") as f:
                # s3fs pins its reads to the ETag it saw at open: bytes and tag are of one version
                return f.read(), (getattr(f, "details", None) or {}).get("ETag")
        except FileNotFoundError:
            raise NotFound(path) from None
        except OSError as e:
            raise self.fail("read", path, e) from None

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
            raise self.fail("write", f"{base}/{name}", e) from None

    def read_rows(self, log: str, schema: pa.Schema) -> pa.Table:
        """Every batch appended to `log`, in order (an empty table when there is none)."""
        files = sorted(p for p in self.list_dir(self.path(log)) or [] if p.endswith(".parquet")
                       and not p.rsplit("/", 1)[-1].startswith("."))
        if not files:
            return schema.empty_table()
        return pa.concat_tables([self.read_table(p).cast(schema) for p in files])


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
