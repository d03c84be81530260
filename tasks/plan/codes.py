"""Columns as integer codes: strings over one shared dictionary, digests, times in microseconds.

The evaluation joins millions of rows by repository, digest and tag. Hashing each domain once
(Arrow's dictionary_encode) and working on int64 codes in numpy is what keeps a plan of 10^6
tags within seconds; these are the conversions in and out of that form.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

US = 1_000_000                    # microseconds per second
NAT = np.iinfo(np.int64).min      # "no time" as an int64 microsecond value


def to_us(series: pd.Series) -> np.ndarray:
    """UTC timestamps (any unit, tz-aware or naive UTC) as int64 microseconds; NaT → INT64 min."""
    s = pd.to_datetime(series, utc=True)
    return s.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]").to_numpy().view("int64")


def large_strings(col) -> pa.Array | pa.ChunkedArray:
    """A column (pandas, numpy, list, Arrow) as Arrow large_string, nulls kept, without copying
    what is already Arrow."""
    if not isinstance(col, (pa.Array, pa.ChunkedArray)):
        if isinstance(col, pd.Series) and not isinstance(col.dtype, (pd.ArrowDtype, pd.StringDtype)):
            col = col.astype(object).where(col.notna(), None)
        col = pa.array(col, from_pandas=True)
    if col.type != pa.large_string():
        col = col.cast(pa.large_string())
    return col


def encode(*cols) -> tuple[list[np.ndarray], pa.Array]:
    """Integer codes (-1 for null) of several string columns over one shared dictionary.

    One hash pass over all of them (Arrow's dictionary_encode over a chunked array).
    """
    chunks = []
    for c in cols:
        a = large_strings(c)
        chunks.append(a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a)
    lens = [len(a) for a in chunks]
    if not sum(lens):
        return [np.zeros(0, np.int64) for _ in chunks], pa.array([], pa.large_string())
    enc = pc.dictionary_encode(pa.chunked_array([a for a in chunks if len(a)], pa.large_string()))
    parts = iter(enc.chunks)
    out = []
    for n in lens:
        out.append(next(parts).indices.fill_null(-1).to_numpy().astype(np.int64) if n else np.zeros(0, np.int64))
    return out, enc.chunks[0].dictionary


def encode_digests(*cols) -> tuple[list[np.ndarray], pa.Array]:
    """`encode` for digest columns: when every digest is `sha256:<hex>` (71 bytes), hash them as
    fixed-size binary (about twice as fast as strings); anything else takes the general path."""
    arrs, valid = [], []
    for c in cols:
        a = large_strings(c)
        a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
        v = None
        if a.null_count:
            v = a.is_valid()
            a = a.filter(v)
            v = v.to_numpy(zero_copy_only=False)
        off = np.frombuffer(a.buffers()[1], np.int64)[a.offset: a.offset + len(a) + 1] if len(a) else np.zeros(1, np.int64)
        if len(a) and (off[-1] - off[0] != 71 * len(a) or not np.all(np.diff(off) == 71)):
            return encode(*cols)
        arrs.append(pa.Array.from_buffers(pa.binary(71), len(a), [None, a.buffers()[2].slice(int(off[0]), 71 * len(a))])
                    if len(a) else pa.array([], pa.binary(71)))
        valid.append(v)
    if not sum(len(a) for a in arrs):
        return encode(*cols)
    enc = pc.dictionary_encode(pa.chunked_array([a for a in arrs if len(a)], pa.binary(71)))
    chunks = iter(enc.chunks)
    out = []
    for a, v in zip(arrs, valid):
        idx = next(chunks).indices.to_numpy().astype(np.int64) if len(a) else np.zeros(0, np.int64)
        if v is not None:
            full = np.full(len(v), -1, np.int64)
            full[v] = idx
            idx = full
        out.append(idx)
    return out, enc.chunks[0].dictionary.cast(pa.binary()).cast(pa.large_string())


def join_texts(prefix: str, values, suffix: str = "") -> pa.Array:
    """prefix + value + suffix for every value, in Arrow."""
    parts = [pa.scalar(prefix, pa.large_string()), large_strings(values)]
    if suffix:
        parts.append(pa.scalar(suffix, pa.large_string()))
    return pc.binary_join_element_wise(*parts, pa.scalar("", pa.large_string()))


def first_unique(sorted_keys: np.ndarray) -> np.ndarray:
    return sorted_keys[np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]] if len(sorted_keys) else sorted_keys


def sort_ranks(dictionary: pa.Array) -> np.ndarray:
    """Sort rank of each dictionary entry (for ordering rows without sorting strings per row)."""
    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank
