"""The store regsweep keeps everything in: a local directory or any fsspec URL (s3://bucket/prefix).

Layout (every table readable by pandas, pyarrow, DuckDB and Spark; docs/store-format.md):

    <store>/snapshots/<id>/...                tasks/store/snapshots.py
    <store>/plans/<id>/...                    tasks/store/plans.py
    <store>/cache/<name>.parquet              tasks/store/caches.py names every cache
    <store>/journal/<plan id>/<n>.parquet     sweep journal, append-only (tasks/sweep/journal.py)
    <store>/locks/sweep-<registry>.lock       one sweep per registry (tasks/sweep/lock.py)

`Store` is the primitives of tasks/store/files.py plus three accessors: `store.snapshots`,
`store.plans`, `store.caches`. Every failure is a StoreError; `NotFound` is the only "absent".
"""

from __future__ import annotations

from functools import cached_property

from tasks.store.caches import Caches
from tasks.store.files import ID_FORMAT, Files, conform, iter_ids_since, new_id
from tasks.store.plans import PlanWriter, Plans
from tasks.store.snapshots import Snapshots

__all__ = ["ID_FORMAT", "PlanWriter", "Store", "conform", "iter_ids_since", "new_id"]


class Store(Files):
    """Snapshots, plans, caches, journals and locks under one root."""

    @cached_property
    def snapshots(self) -> Snapshots:
        return Snapshots(self)

    @cached_property
    def plans(self) -> Plans:
        return Plans(self)

    @cached_property
    def caches(self) -> Caches:
        return Caches(self)
