"""Plans in the store: written batch by batch, published (plan.json last), listed and read back.

    <store>/plans/<id>/plan.json, plan.parquet
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.common.errors import StoreError
from tasks.store.files import Files


class Plans:
    """The plans of one store (`store.plans`)."""

    def __init__(self, files: Files):
        self.files = files

    def list(self) -> list[str]:
        """Published plan ids, oldest first."""
        return self.files.published("plans", "plan.json")

    def resolve(self, ref: str | None = "latest") -> str:
        """A published plan id (`latest`: the newest); NotFound otherwise."""
        return self.files.resolve("plans", "plan.json", ref)

    def publish(self, plan_id: str, table: pa.Table, meta: dict[str, Any]) -> str:
        """A whole plan written and published at once."""
        with self.writer(plan_id, table.schema) as writer:
            writer.write(table)
            return writer.publish(meta)

    def writer(self, plan_id: str, schema: pa.Schema, dictionary: list[str] | None = None) -> PlanWriter:
        """A plan's Parquet written batch by batch, published (plan.json last) by `publish`;
        `dictionary`: the only columns to dictionary-encode (all when None)."""
        return PlanWriter(self.files, plan_id, schema, dictionary)

    def meta(self, plan_id: str) -> dict[str, Any]:
        """plan.json of a published plan; NotFound when there is none."""
        return self.files.read_json(self.files.path("plans", plan_id, "plan.json"))

    def table(self, plan_id: str) -> pa.Table:
        """plan.parquet of a published plan."""
        return self.files.read_table(self.files.path("plans", plan_id, "plan.parquet"))


class PlanWriter:
    """plan.parquet written one batch (a row group or more) at a time into the plan's staging
    area, so a plan never has to be whole in memory; `publish` then makes it visible as
    `Plans.publish` does. Leaving the `with` block unpublished removes what was written."""

    def __init__(self, store: Files, plan_id: str, schema: pa.Schema, dictionary: list[str] | None = None):
        self.store, self.plan_id = store, plan_id
        self.final = store.path("plans", plan_id)
        self.staging = store.path("plans", f".staging-{plan_id}") if store.local else self.final
        path = f"{self.staging}/plan.parquet"
        store.makedirs(self.staging)
        try:
            self._file = store.fs.open(path, "wb")
            self._writer = pq.ParquetWriter(self._file, schema, compression="zstd",
                                            use_dictionary=True if dictionary is None else dictionary)
        except OSError as e:
            raise store.fail("write", path, e) from None
        self.rows = 0
        self.published: str | None = None

    def write(self, table: pa.Table) -> None:
        try:
            self._writer.write_table(table)
        except OSError as e:
            raise self.store.fail("write", f"{self.staging}/plan.parquet", e) from None
        self.rows += table.num_rows

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
                self._file.close()
            except OSError as e:
                raise self.store.fail("write", f"{self.staging}/plan.parquet", e) from None

    def publish(self, meta: dict[str, Any]) -> str:
        """Finish the file, write plan.json last and move the plan into place; returns its path."""
        self._close()
        self.published = self.store.publish_dir(self.staging, self.final, "plan.json", {"id": self.plan_id, **meta})
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
