"""The plan evaluated in batches of whole repositories, so peak memory follows a batch, not the registry.

Every keep rule decides per (repository, digest) node, and relatives (platforms, referrers, a
fallback tag's subject) stay within their repository, so evaluating repositories apart gives
the rows evaluating them together gives (tests/test_planbatches.py checks it row by row). What
only the whole snapshot can tell is computed once and handed to every batch (`Shared`): whether
the snapshot is complete (its row counts against snapshot.json) and its git history, whose
commit graph is walked once for all batches.

The repository-keyed tables (tags, manifests, children, links) are read once into Arrow —
compact: no Python object per value, low-cardinality columns dictionary-encoded — ordered by
repository (the registry source writes them so; other snapshots are sorted here) and cut into
runs of whole repositories of about `batch_rows` rows. Each run becomes pandas only while it is
evaluated. Tables without a repository column (workloads, helm, keep_list, git) are read whole; workload,
Helm and keep-list rows go only to the batches holding a repository they reference, and any other pandas
table with a repository column is filtered to the batch's repositories.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.config.models import RegsweepConfig
from tasks.oci.reference import RegistryMatcher
from tasks.plan.evaluate import PlanRows, plan_rows
from tasks.plan.inputs import Shared, shared_of, to_frame
from tasks.plan.references import references

#: Rows of the repository-keyed tables per batch (a repository larger than this is one batch).
#: About 50,000 tags with their manifests, links and platforms: smaller batches measured no slower.
BATCH_ROWS = 200_000

#: Tables whose rows name images by reference, not by repository: (image column, pod imageIDs too).
_REFERENCING = {"workloads": ("image", True), "helm": ("image", False), "keep_list": ("image", False)}


def plan_batches(tables: dict[str, Any], meta: dict[str, Any], config: RegsweepConfig,
                 batch_rows: int = BATCH_ROWS, shared: Shared | None = None) -> Iterator[tuple[dict[str, Any], PlanRows]]:
    """The plan of a snapshot (tables as `read_tables` gives them, or any mix of Arrow and
    pandas), one batch of whole repositories at a time, in plan order (by repository): the
    batch's tables and their plan rows (with the images the batch's in-use and Helm rules kept)."""
    shared = shared or shared_of(tables, meta, config)
    keyed = {n: t for n, t in tables.items() if isinstance(t, pa.Table) and "repository" in t.column_names}
    repos, ranks = _repository_ranks(keyed)
    if not len(repos):
        whole = {n: to_frame(_plain(t)) if n in keyed else t for n, t in tables.items()}
        yield whole, plan_rows(whole, meta, config, shared)
        return
    weight = np.zeros(len(repos), np.int64)
    for r in ranks.values():
        weight += np.bincount(r, minlength=len(repos))
    # a batch starts at each repository whose preceding rows cross a multiple of batch_rows
    before = np.cumsum(weight) - weight
    bucket = before // max(int(batch_rows), 1)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    bounds = np.r_[starts, len(repos)]
    cut = {}
    for name, t in keyed.items():
        r = ranks[name]
        if len(r) > 1 and (np.diff(r) < 0).any():
            order = np.argsort(r, kind="stable")   # stable: rows of a repository keep their order
            keyed[name], r = t.take(pa.array(order)), r[order]
        cut[name] = np.searchsorted(r, bounds, side="left")
    del ranks
    batch_of = np.repeat(np.arange(len(starts)), np.diff(bounds))   # repository rank → batch
    matcher = RegistryMatcher(config.registry.url, config.registry.aliases)
    referencing = {n: _rows_by_batch(t, *_REFERENCING[n], matcher, repos, batch_of)
                   for n, t in tables.items() if n in _REFERENCING and isinstance(t, pd.DataFrame)}
    for b in range(len(starts)):
        names = repos.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b]))
        batch: dict[str, Any] = {}
        for name, t in tables.items():
            if name in keyed:
                lo, hi = cut[name][b], cut[name][b + 1]
                batch[name] = to_frame(_plain(keyed[name].slice(int(lo), int(hi - lo))))
            elif name in referencing:
                batch[name] = t.iloc[referencing[name].get(b, np.zeros(0, np.int64))].reset_index(drop=True)
            elif isinstance(t, pd.DataFrame) and "repository" in t.columns:
                batch[name] = t[t["repository"].isin(names.to_pylist())].reset_index(drop=True)
            else:
                batch[name] = t
        yield batch, plan_rows(batch, meta, config, shared)
        del batch


def _plain(t: pa.Table) -> pa.Table:
    """Dictionary-encoded columns back to plain strings, as the snapshot stores them."""
    for i, f in enumerate(t.schema):
        if pa.types.is_dictionary(f.type):
            t = t.set_column(i, pa.field(f.name, f.type.value_type, f.nullable), t.column(i).cast(f.type.value_type))
    return t


def _repository_ranks(keyed: dict[str, pa.Table]) -> tuple[pa.Array, dict[str, np.ndarray]]:
    """Every repository of the tables in plan order, and each row's repository as a rank in it."""
    cols = {}
    for name, t in keyed.items():
        col = t["repository"]
        if not pa.types.is_dictionary(col.type):
            col = pc.dictionary_encode(col)
        cols[name] = col.unify_dictionaries() if col.num_chunks > 1 else col
    dicts = [c.chunk(0).dictionary.cast(pa.large_string()) for c in cols.values() if c.num_chunks]
    if not dicts:
        return pa.array([], pa.large_string()), {n: np.zeros(0, np.int64) for n in keyed}
    uniq = pc.unique(pa.chunked_array(dicts))
    # the order the plan's rows take (tasks/plan/evaluate.py `_rows`: Arrow's sort of the strings)
    repos = uniq.take(pc.sort_indices(uniq))
    ranks = {}
    for name, col in cols.items():
        parts = []
        for chunk in col.chunks:
            entry = pc.index_in(chunk.dictionary.cast(pa.large_string()), value_set=repos).to_numpy()
            parts.append(entry.astype(np.int64)[chunk.indices.to_numpy()])
        ranks[name] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return repos, ranks


def _rows_by_batch(df: pd.DataFrame, image_col: str, with_ids: bool, matcher: RegistryMatcher, repos: pa.Array,
                   batch_of: np.ndarray) -> dict[int, np.ndarray]:
    """The rows of a referencing table (workloads, Helm) each batch needs: those whose image
    names one of its repositories, found by the evaluation's own reading of references."""
    if not len(df):
        return {}
    # each reading carries the number of the row it came from
    refs = references(df.assign(_row=np.arange(len(df))), matcher, carry="_row", image=image_col, with_ids=with_ids)
    rank = pc.index_in(pa.array(refs["repository"].astype(str).tolist(), pa.large_string()),
                       value_set=repos).fill_null(-1).to_numpy()
    ok = rank >= 0
    row = refs["_row"].to_numpy(dtype=np.int64)
    pair = pd.DataFrame({"batch": batch_of[rank[ok]], "row": row[ok]})
    pair = pair.drop_duplicates().sort_values(["batch", "row"])
    return {int(b): g["row"].to_numpy() for b, g in pair.groupby("batch", sort=True)}
