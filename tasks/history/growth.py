"""Registry growth over time, read back from every published snapshot.

Each snapshot is boiled down once to a small summary (per repository: tags, manifests, image
bytes, unique bytes; HISTORY_SUMMARY) and each pair of consecutive snapshots to a diff (tags added,
removed, moved to another digest; HISTORY_DIFF). Snapshots never change once published, so both
are cached in the store (`cache/history-*`), the diff keyed by (previous id, id); a report over a
year of snapshots then reads 730 small files. Cold summaries are made by a process pool reading
only the columns counted.

Incomplete snapshots are included and marked (their complete flag): a registry table that was
read fully still says how big the registry was; one whose registry source failed is a gap, and
the diff spans it. Reclaimable bytes over time come from the stored plans (plan.json). The
latest snapshot's images in use that the registry does not have close the report ("broken now").
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.errors import StoreError
from tasks.common.units import human_bytes
from tasks.snapshot.summary import summarize_chunk
from tasks.store.caches import summary_name
from tasks.store.store import Store, iter_ids_since
from tasks.snapshot.missing import summary_line

HISTORY_COLUMNS = ["snapshot", "created_at", "complete", "repositories", "tags", "manifests", "unique_bytes",
                   "image_bytes", "added", "removed", "moved", "reclaimable_bytes"]
WORKERS = 2
PROJECT_DAYS = (30, 90)
#: Rates and projections need history: two snapshots minutes apart say nothing about growth per day.
MIN_HISTORY_DAYS = 1.0
NOT_ENOUGH = "not enough history yet"


# ------------------------------------------------------------------ all snapshots

@dataclass
class Growth:
    """The growth report: per snapshot, per repository (over the window) and the totals."""

    snapshots: pd.DataFrame      # HISTORY_COLUMNS
    repositories: pd.DataFrame   # one row per repository, most growth first
    totals: dict
    basis: str                   # "unique" or "image": which bytes growth is measured in
    series: pd.DataFrame         # those bytes per snapshot time (rows) and repository (columns)
    broken: dict | None = None   # the latest snapshot's images in use the registry lacks (`broken_now`)


def _summaries(store: Store, sids: list[str], workers: int) -> list[tuple[str, pa.Table, pa.Table | None]]:
    """Each snapshot's summary and diff with the previous one that has counts (cache first)."""
    pairs = list(zip(sids, [None, *sids[:-1]]))
    cold = [i for i, (s, _) in enumerate(pairs) if not store.fs.exists(store.path("cache", summary_name(s) + ".parquet"))]
    if workers > 1 and len(cold) >= 8:
        n = min(len(pairs), workers * 4)
        chunks = [pairs[i * len(pairs) // n:(i + 1) * len(pairs) // n] for i in range(n)]
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(summarize_chunk, [store.url] * n, chunks))
        results = [r for p in parts for r in p]
    else:
        results = summarize_chunk(store.url, pairs)
    # a snapshot without counts is a gap: the next one is diffed against the last with counts
    fixed, last = [], None
    for (sid, summary, d), (_, prev) in zip(results, pairs):
        if summary.num_rows and last is not None and last != prev:
            d = summarize_chunk(store.url, [(last, None), (sid, last)])[1][2]
        fixed.append((sid, summary, d if summary.num_rows and last is not None else None))
        if summary.num_rows:
            last = sid
    return fixed


def _plan_reclaimable(store: Store) -> dict[str, int | None]:
    """bytes_reclaimable of each snapshot's newest stored plan."""
    out: dict[str, int | None] = {}
    for pid in store.plans.list():   # ids sort by time: a later plan of a snapshot wins
        try:
            meta = store.plans.meta(pid)
        except StoreError:
            continue
        if meta.get("snapshot_id"):
            out[meta["snapshot_id"]] = meta.get("bytes_reclaimable")
    return out


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of each column of y over x (per day); 0 with fewer than two points."""
    if len(x) < 2 or np.ptp(x) == 0:
        return np.zeros(y.shape[1])
    xc = x - x.mean()
    return (xc[:, None] * (y - y.mean(axis=0))).sum(axis=0) / (xc ** 2).sum()


def growth_report(store: Store, since: datetime | None = None, workers: int = WORKERS) -> Growth:
    sids = iter_ids_since(store.snapshots.list(), since)
    metas = {s: store.snapshots.meta(s) for s in sids}
    results = _summaries(store, sids, workers)
    reclaim = _plan_reclaimable(store)
    rows, per_repo, diffs = [], [], []
    for sid, summary, d in results:
        meta = metas[sid]
        row = {"snapshot": sid, "created_at": pd.Timestamp(meta["created_at"]),
               "complete": bool(meta.get("complete", False)), "reclaimable_bytes": reclaim.get(sid)}
        if summary.num_rows:
            s = summary.to_pandas()
            total = s[s["repository"].isna()].iloc[0]
            row.update(repositories=len(s) - 1, tags=total["tags"], manifests=total["manifests"],
                       unique_bytes=total["unique_bytes"], image_bytes=total["image_bytes"])
            per_repo.append(s[s["repository"].notna()].assign(snapshot=sid, created_at=row["created_at"]))
            if d is not None:
                row.update(added=int(pc.sum(d["added"]).as_py() or 0), removed=int(pc.sum(d["removed"]).as_py() or 0),
                           moved=int(pc.sum(d["moved"]).as_py() or 0))
                diffs.append(d.to_pandas())
        rows.append(row)
    df = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    for col in HISTORY_COLUMNS[3:]:
        df[col] = pd.array(df[col].astype(object).where(df[col].notna(), None), "Int64")
    counted = df[df["tags"].notna()]
    basis = "unique" if len(counted) and counted["unique_bytes"].notna().all() else "image"
    repos, totals, series = _per_repository(counted, per_repo, diffs, basis)
    return Growth(df, repos, totals, basis, series, broken_now(store, sids[-1], metas[sids[-1]]) if sids else None)


#: Rows of the latest snapshot's MISSING table the report lists.
BROKEN_SHOWN = 10


def broken_now(store: Store, sid: str, meta: dict) -> dict:
    """What the latest snapshot found in use but missing from the registry (tasks/snapshot/missing.py):
    its counts (None: unknown, the registry source did not complete or the snapshot predates the
    table) and its first rows."""
    found = meta.get("missing")
    table = store.snapshots.table(sid, "missing") if found else None
    rows = table.slice(0, BROKEN_SHOWN).to_pylist() if table is not None else []
    return {"snapshot": sid, "missing": found, "rows": rows}


def _per_repository(counted: pd.DataFrame, per_repo: list[pd.DataFrame], diffs: list[pd.DataFrame], basis: str):
    """Latest size, churn, growth per day and projections per repository and for the registry."""
    col = f"{basis}_bytes"
    empty = pd.DataFrame(columns=["repository", "tags", "manifests", "unique_bytes", "image_bytes", "added",
                                  "removed", "moved", "tags_per_day", "bytes_per_day",
                                  *[f"bytes_in_{d}d" for d in PROJECT_DAYS]])
    if counted.empty:
        return empty, {}, pd.DataFrame()
    x = ((counted["created_at"] - counted["created_at"].iloc[0]).dt.total_seconds() / 86400).to_numpy()
    long = pd.concat(per_repo, ignore_index=True)
    pivot = lambda c: long.pivot_table(index="snapshot", columns="repository", values=c, aggfunc="sum",  # noqa: E731
                                       fill_value=0).reindex(counted["snapshot"], fill_value=0)
    tags_m, bytes_m = pivot("tags"), pivot(col).astype(float)
    latest = long[long["snapshot"] == counted["snapshot"].iloc[-1]].set_index("repository")
    churn = (pd.concat(diffs).groupby("repository")[["added", "removed", "moved"]].sum() if diffs
             else pd.DataFrame(columns=["added", "removed", "moved"]))
    names = bytes_m.columns
    out = pd.DataFrame({"repository": names})
    for c in ("tags", "manifests", "unique_bytes", "image_bytes"):
        out[c] = pd.array(latest[c].reindex(names).astype(object).where(latest[c].reindex(names).notna(), None), "Int64")
    for c in ("added", "removed", "moved"):
        out[c] = churn[c].reindex(names).fillna(0).astype(int).to_numpy() if len(churn) else 0
    days = float(x[-1]) if len(x) else 0.0
    enough = days >= MIN_HISTORY_DAYS
    now = bytes_m.iloc[-1].to_numpy()
    if enough:
        out["tags_per_day"] = _slope(x, tags_m.to_numpy(float))
        out["bytes_per_day"] = _slope(x, bytes_m.to_numpy())
        for d in PROJECT_DAYS:
            out[f"bytes_in_{d}d"] = np.maximum(now + out["bytes_per_day"].to_numpy() * d, 0).astype(np.int64)
        out = out.sort_values(["bytes_per_day", "repository"], ascending=[False, True]).reset_index(drop=True)
    else:   # no rates from minutes of history: the largest repositories instead
        for c in ("tags_per_day", "bytes_per_day", *[f"bytes_in_{d}d" for d in PROJECT_DAYS]):
            out[c] = None
        out = out.assign(_size=now).sort_values(["_size", "repository"], ascending=[False, True]).drop(
            columns="_size").reset_index(drop=True)
    tot_bytes = counted[col].astype(float).to_numpy()
    tot_slope = float(_slope(x, tot_bytes[:, None])[0]) if enough else None
    totals = {"tags": int(counted["tags"].iloc[-1]), "manifests": int(counted["manifests"].iloc[-1]),
              "unique_bytes": None if pd.isna(counted["unique_bytes"].iloc[-1]) else int(counted["unique_bytes"].iloc[-1]),
              "image_bytes": int(counted["image_bytes"].iloc[-1]),
              "added": int(counted["added"].fillna(0).sum()), "removed": int(counted["removed"].fillna(0).sum()),
              "moved": int(counted["moved"].fillna(0).sum()),
              "tags_per_day": float(_slope(x, counted["tags"].astype(float).to_numpy()[:, None])[0]) if enough else None,
              "bytes_per_day": tot_slope, "days": days, "enough_history": enough,
              **{f"bytes_in_{d}d": int(max(tot_bytes[-1] + tot_slope * d, 0)) if enough else None for d in PROJECT_DAYS}}
    return out, totals, bytes_m.set_axis(counted["created_at"].to_numpy(), axis=0)


def growth(store: Store, since: datetime | None = None) -> pd.DataFrame:
    """One row per snapshot, oldest first (HISTORY_COLUMNS)."""
    return growth_report(store, since).snapshots


# ------------------------------------------------------------------ output

def _b(v) -> str:
    return "-" if v is None or pd.isna(v) else human_bytes(int(v))


def _span(days: float) -> str:
    return f"{days * 24 * 60:.0f} minutes" if days < 1 / 24 else f"{days * 24:.1f} hours"


def render_text(report: Growth, top: int = 10) -> str:
    """Per-snapshot table, then the top repositories by growth and the projection."""
    df = report.snapshots
    if df.empty:
        return "no snapshots yet"
    shown = df.assign(created_at=df["created_at"].dt.strftime("%Y-%m-%d %H:%M"),
                      complete=df["complete"].map({True: "yes", False: "NO"}),
                      unique_bytes=df["unique_bytes"].map(_b), image_bytes=df["image_bytes"].map(_b),
                      reclaimable_bytes=df["reclaimable_bytes"].map(_b),
                      **{c: df[c].astype(object).where(df[c].notna(), "-")
                         for c in ("repositories", "tags", "manifests", "added", "removed", "moved")})
    lines = [shown.to_string(index=False, na_rep="-")]
    t, r = report.totals, report.repositories.head(top)
    if t and t["enough_history"]:
        lines += ["", f"growth over {t['days']:.1f} days ({report.basis} bytes): {_b(t['bytes_per_day'])}/day, "
                      f"{t['tags_per_day']:+.1f} tags/day; tags added {t['added']}, removed {t['removed']}, moved {t['moved']}",
                  "projection: " + ", ".join(f"{_b(t[f'bytes_in_{d}d'])} in {d} days" for d in PROJECT_DAYS)
                  + f" (now {_b(t[f'{report.basis}_bytes'])})"]
    elif t:
        lines += ["", f"growth: {NOT_ENOUGH} ({_span(t['days'])} between the first and the last snapshot; rates and "
                      f"projections need {MIN_HISTORY_DAYS:g} day); tags added {t['added']}, removed {t['removed']}, "
                      f"moved {t['moved']}; now {_b(t[f'{report.basis}_bytes'])}"]
    if len(r) and not t.get("enough_history"):
        r = r.drop(columns=["tags_per_day", "bytes_per_day", *[f"bytes_in_{d}d" for d in PROJECT_DAYS]])
        lines += ["", f"top {len(r)} repositories by size ({NOT_ENOUGH} for growth):",
                  r.assign(**{c: r[c].map(_b) for c in ("unique_bytes", "image_bytes")}).to_string(index=False, na_rep="-")]
    elif len(r):
        lines += ["", f"top {len(r)} repositories by growth:",
                  r.assign(**{c: r[c].map(_b) for c in ("unique_bytes", "image_bytes", "bytes_per_day",
                                                        *[f"bytes_in_{d}d" for d in PROJECT_DAYS])},
                           tags_per_day=r["tags_per_day"].astype(float).round(1)).to_string(index=False, na_rep="-")]
    if report.broken is not None:
        lines += ["", *_broken_lines(report.broken)]
    return "\n".join(lines)


def _broken_lines(broken: dict) -> list[str]:
    """`broken now: …` for the latest snapshot, then its first missing images, one a line."""

    sid, found = broken["snapshot"], broken["missing"]
    if found is None:
        return [f"broken now: unknown (snapshot {sid} has no complete registry listing to compare with)"]
    line = summary_line(found)
    if line is None:
        return [f"broken now: nothing (snapshot {sid}: every image in use is in the registry)"]
    out = [f"broken now (snapshot {sid}): {line}"]
    out += [f"  {r['source']} {r['where']}: {r['image']}: {r['why']}" for r in broken["rows"]]
    if found.get("rows", 0) > len(broken["rows"]):
        out.append(f"  … and {found['rows'] - len(broken['rows'])} more (the snapshot's missing.parquet)")
    return out


def render_markdown(report: Growth, top: int = 10) -> str:
    """The Prefect artifact: the same text, fenced so the UI keeps its columns."""
    return "# Registry growth\n\n```\n" + render_text(report, top) + "\n```"


def to_json(report: Growth, top: int = 10) -> dict:
    def clean(df: pd.DataFrame) -> list[dict]:
        return [{k: (None if v is None or (not isinstance(v, str) and pd.isna(v)) else v) for k, v in row.items()}
                for row in df.astype(object).to_dict(orient="records")]

    snaps = report.snapshots.assign(created_at=report.snapshots["created_at"].map(lambda t: t.isoformat()))
    return {"basis": report.basis, "totals": report.totals, "snapshots": clean(snaps),
            "repositories": clean(report.repositories.head(top)), "broken_now": report.broken}
