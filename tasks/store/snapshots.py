"""Snapshots in the store: staging, publishing, listing and reading them back.

    <store>/snapshots/<id>/snapshot.json      written last: its presence publishes the snapshot
    <store>/snapshots/<id>/<table>.parquet    one per table of each source that succeeded; a directory
                                              of part-NNNNN.parquet files when a scan ran in batches

On a local disk a snapshot is written into a hidden staging directory and renamed into place;
on object stores, where rename is a copy, `snapshot.json` written after every table is the
commit marker. Either way readers only ever see published snapshots (docs/store-format.md).
"""

from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa

from tasks.common.errors import NotFound
from tasks.store.files import Files, conform


class Snapshots:
    """The snapshots of one store (`store.snapshots`)."""

    def __init__(self, files: Files):
        self.files = files

    def list(self) -> list[str]:
        """Published snapshot ids, oldest first."""
        return self.files.published("snapshots", "snapshot.json")

    def resolve(self, ref: str | None = "latest") -> str:
        """A published snapshot id (`latest`: the newest); NotFound otherwise."""
        return self.files.resolve("snapshots", "snapshot.json", ref)

    def staging_dir(self, snapshot_id: str) -> str:
        """Where sources write a snapshot's tables before it is published."""
        path = self.files.path("snapshots", f".staging-{snapshot_id}") if self.files.local else self.files.path("snapshots", snapshot_id)
        self.files.makedirs(path)
        return path

    def write_source_tables(self, staging: str, tables: dict[str, pa.Table], schemas: dict[str, pa.Schema],
                            part: int | None = None) -> dict[str, int]:
        """Write a source's tables into `staging`: `<name>.parquet`, or with `part` one part file
        `<name>.parquet/part-NNNNN.parquet` of a table that several batches write."""
        counts = {}
        for name, schema in schemas.items():
            t = conform(tables[name], schema)
            path = f"{staging}/{name}.parquet" + (f"/part-{part:05d}.parquet" if part is not None else "")
            self.files.write_table(path, t)
            counts[name] = t.num_rows
        return counts

    def remove_tables(self, staging: str, names: Iterable[str]) -> None:
        """Remove tables (whole, or every part) from a staging area: a source that failed leaves none."""
        for name in names:
            path = f"{staging}/{name}.parquet"
            try:
                if self.files.fs.exists(path):
                    self.files.fs.rm(path, recursive=True)
            except OSError as e:
                raise self.files.fail("remove", path, e) from None

    def publish(self, snapshot_id: str, meta: dict[str, Any]) -> str:
        """Write snapshot.json last and make the snapshot visible; returns its path."""
        return self.files.publish_dir(self.staging_dir(snapshot_id), self.files.path("snapshots", snapshot_id), "snapshot.json",
                             {"id": snapshot_id, **meta})

    def meta(self, snapshot_id: str) -> dict[str, Any]:
        """snapshot.json of a published snapshot; NotFound when there is none."""
        return self.files.read_json(self.files.path("snapshots", snapshot_id, "snapshot.json"))

    def table(self, snapshot_id: str, table: str, schema: pa.Schema | None = None,
                       columns: list[str] | None = None) -> pa.Table | None:
        """A snapshot's table (or some of its columns), or None when its source was skipped or failed."""
        try:
            return self.files.read_table(self.files.path("snapshots", snapshot_id, f"{table}.parquet"), schema, columns)
        except NotFound:
            return None
