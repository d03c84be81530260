"""The store: snapshots, plans, caches, journals and locks under a local path or an fsspec URL.

- `store`: `Store`, the primitives of `files` (tables, JSON, listings, exclusive objects,
  append-only logs) plus three accessors, `store.snapshots` (`snapshots`), `store.plans` (`plans`,
  with `PlanWriter`) and `store.caches` (`caches`, which also names every cache, its writer and
  its readers). Every failure is a `StoreError`; `NotFound` is the only "absent".
- `schemas`: the explicit pyarrow schema of every table regsweep writes.

No Prefect tasks. docs/store-format.md is the data contract.
"""

from tasks.store.store import PlanWriter, Store, iter_ids_since, new_id

__all__ = ["PlanWriter", "Store", "iter_ids_since", "new_id"]
