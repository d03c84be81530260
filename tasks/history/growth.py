"""Registry growth over time, read back from every published snapshot.

Each snapshot is boiled down once to a small summary (per repository: tags, manifests, image
bytes, unique bytes; HISTORY_SUMMARY) and each pair of consecutive snapshots to a diff (tags added,
removed, moved to another digest; HISTORY_DIFF). Snapshots never change once published, so both
are cached in the store (`cache/history-*`), the diff keyed by (previous id, id); a report over a
year of snapshots then reads 730 small files. Cold summaries are made by a process pool reading
only the columns counted.

Incomplete snapshots are included and marked (their complete flag): a registry table that was
read fully still says how big the registry was; one whose registry source failed is a gap, and
the diff spans it. Reclaimable bytes over time come from the stored plans (plan.json).
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

from tasks.store.schemas import HISTORY_DIFF, HISTORY_SUMMARY
from tasks.store.store import Store, iter_ids_since

HISTORY_COLUMNS = ["snapshot", "created_at", "complete", "repositories", "tags", "manifests", "unique_bytes",
                   "image_bytes", "added", "removed", "moved", "reclaimable_bytes"]
CACHE_VERSION = "v1"
WORKERS = 2
PROJECT_DAYS = (30, 90)


# ------------------------------------------------------------------ one snapshot

def _tags(store: Store, sid: str) -> pa.Table | None:
    t = store.snapshot_table(sid, "tags", columns=["repository", "tag", "digest", "gone"])
    if t is None:
        return None
    return t.filter(pc.and_(pc.invert(t["gone"]), pc.is_valid(t["digest"]))).select(["repository", "tag", "digest"])


def _counted(meta: dict) -> bool:
    """Whether the snapshot's registry source read everything (old snapshots record no sources)."""
    st = (meta.get("sources") or {}).get("registry")
    return st is None or st.get("status") == "ok"


def summarize(store: Store, sid: str, tags: pa.Table | None, index: bool = False) -> pa.Table:
    """HISTORY_SUMMARY of one snapshot; no rows when its registry tables are not there. With
    `index` also caches the snapshot's FootprintIndex (for the what-if) from the same footprint."""
    from tasks.snapshot.footprint import COLUMNS, Footprint, write_index

    manifests = store.snapshot_table(sid, "manifests", columns=["repository", "digest", "size", "subject"])
    if tags is None or manifests is None or not _counted(store.snapshot_meta(sid)):
        return HISTORY_SUMMARY.empty_table()
    n_tags = tags.group_by("repository").aggregate([("tag", "count")])
    n_man = manifests.group_by("repository").aggregate([("digest", "count")])
    # Each manifest's size already counts its config and layers (an index: its platforms), so only
    # top-level manifests are summed; shared layers count in every image (the "image bytes").
    top = manifests.filter(pc.is_null(manifests["subject"]))
    children = store.snapshot_table(sid, "children", columns=["child_digest"])
    if children is not None and children.num_rows:
        top = top.filter(pc.invert(pc.is_in(top["digest"], value_set=pc.unique(children["child_digest"]))))
    sizes = top.group_by(["repository", "digest"]).aggregate([("size", "max")]).group_by("repository").aggregate(
        [("size_max", "sum")])
    fp = Footprint.of(store.snapshot_table(sid, "blobs", columns=COLUMNS))
    repos = sorted(set(n_tags["repository"].to_pylist()) | set(n_man["repository"].to_pylist()))

    def per(table: pa.Table, col: str) -> np.ndarray:
        d = dict(zip(table["repository"].to_pylist(), table[col].to_pylist()))
        return np.array([d.get(r) or 0 for r in repos], np.int64)

    tags_n, man_n, img = per(n_tags, "tag_count"), per(n_man, "digest_count"), per(sizes, "size_max_sum")
    uniq = fp.unique_bytes_by_repository() if fp is not None else None
    if index:
        write_index(store, sid, fp)
    return pa.Table.from_pydict({
        "repository": [None, *repos],
        "tags": [int(tags_n.sum()), *tags_n.tolist()],
        "manifests": [int(man_n.sum()), *man_n.tolist()],
        "image_bytes": [int(img.sum()), *img.tolist()],
        "unique_bytes": [None] * (len(repos) + 1) if uniq is None else [fp.unique_bytes, *(uniq.get(r, 0) for r in repos)],
    }, schema=HISTORY_SUMMARY)


def diff(prev: pa.Table, cur: pa.Table) -> pa.Table:
    """Tags added, removed and moved per repository from `prev` to `cur` (by (repository, tag))."""
    j = cur.join(prev, ["repository", "tag"], join_type="full outer", right_suffix="_prev")
    added = pc.is_null(j["digest_prev"])
    removed = pc.is_null(j["digest"])
    moved = pc.fill_null(pc.not_equal(j["digest"], j["digest_prev"]), False)
    t = pa.table({"repository": j["repository"], "added": pc.cast(added, pa.int64()),
                  "removed": pc.cast(removed, pa.int64()), "moved": pc.cast(moved, pa.int64())})
    g = t.group_by("repository").aggregate([("added", "sum"), ("removed", "sum"), ("moved", "sum")])
    return g.rename_columns(["repository", "added", "removed", "moved"]).select(HISTORY_DIFF.names).cast(HISTORY_DIFF)


def _summary_name(sid: str) -> str:
    return f"history-{CACHE_VERSION}-summary-{sid}"


def _diff_name(prev: str, sid: str) -> str:
    return f"history-{CACHE_VERSION}-diff-{prev}-{sid}"


def summarize_chunk(store_url: str, items: list[tuple[str, str | None]],
                    index: bool = False) -> list[tuple[str, pa.Table, pa.Table | None]]:
    """Summaries and diffs for consecutive (id, previous id) pairs; cached as they are made (with
    `index`, each summarized snapshot's FootprintIndex too)."""
    store = Store(store_url)
    out = []
    last: tuple[str | None, pa.Table | None] = (None, None)
    for sid, prev in items:
        summary = store.read_cache(_summary_name(sid))
        d = store.read_cache(_diff_name(prev, sid)) if prev else None
        tags = None
        if summary is None:
            tags = _tags(store, sid)
            summary = summarize(store, sid, tags, index)
            store.write_cache(_summary_name(sid), summary)
        if prev and d is None and summary.num_rows:
            tags = tags if tags is not None else _tags(store, sid)
            before = last[1] if last[0] == prev else _tags(store, prev)
            d = diff(before, tags) if before is not None and tags is not None else HISTORY_DIFF.empty_table()
            store.write_cache(_diff_name(prev, sid), d)
        last = (sid, tags) if tags is not None else (None, None)
        out.append((sid, summary.cast(HISTORY_SUMMARY), d))
    return out


# ------------------------------------------------------------------ all snapshots

@dataclass
class Growth:
    """The growth report: per snapshot, per repository (over the window) and the totals."""

    snapshots: pd.DataFrame      # HISTORY_COLUMNS
    repositories: pd.DataFrame   # one row per repository, most growth first
    totals: dict
    basis: str                   # "unique" or "image": which bytes growth is measured in
    series: pd.DataFrame         # those bytes per snapshot time (rows) and repository (columns)


def _summaries(store: Store, sids: list[str], workers: int) -> list[tuple[str, pa.Table, pa.Table | None]]:
    """Each snapshot's summary and diff with the previous one that has counts (cache first)."""
    pairs = list(zip(sids, [None, *sids[:-1]]))
    cold = [i for i, (s, _) in enumerate(pairs) if not store.fs.exists(store.path("cache", _summary_name(s) + ".parquet"))]
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
    for pid in store.list_plans():   # ids sort by time: a later plan of a snapshot wins
        try:
            meta = store.plan_meta(pid)
        except (FileNotFoundError, OSError):
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
    sids = iter_ids_since(store.list_snapshots(), since)
    metas = {s: store.snapshot_meta(s) for s in sids}
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
    return Growth(df, repos, totals, basis, series)


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
    out["tags_per_day"] = _slope(x, tags_m.to_numpy(float))
    out["bytes_per_day"] = _slope(x, bytes_m.to_numpy())
    now = bytes_m.iloc[-1].to_numpy()
    for d in PROJECT_DAYS:
        out[f"bytes_in_{d}d"] = np.maximum(now + out["bytes_per_day"].to_numpy() * d, 0).astype(np.int64)
    out = out.sort_values(["bytes_per_day", "repository"], ascending=[False, True]).reset_index(drop=True)
    tot_bytes = counted[col].astype(float).to_numpy()
    tot_slope = float(_slope(x, tot_bytes[:, None])[0])
    totals = {"tags": int(counted["tags"].iloc[-1]), "manifests": int(counted["manifests"].iloc[-1]),
              "unique_bytes": None if pd.isna(counted["unique_bytes"].iloc[-1]) else int(counted["unique_bytes"].iloc[-1]),
              "image_bytes": int(counted["image_bytes"].iloc[-1]),
              "added": int(counted["added"].fillna(0).sum()), "removed": int(counted["removed"].fillna(0).sum()),
              "moved": int(counted["moved"].fillna(0).sum()),
              "tags_per_day": float(_slope(x, counted["tags"].astype(float).to_numpy()[:, None])[0]),
              "bytes_per_day": tot_slope, "days": float(x[-1]) if len(x) else 0.0,
              **{f"bytes_in_{d}d": int(max(tot_bytes[-1] + tot_slope * d, 0)) for d in PROJECT_DAYS}}
    return out, totals, bytes_m.set_axis(counted["created_at"].to_numpy(), axis=0)


def growth(store: Store, since: datetime | None = None) -> pd.DataFrame:
    """One row per snapshot, oldest first (HISTORY_COLUMNS)."""
    return growth_report(store, since).snapshots


def snapshot_summary(store: Store, snapshot_id: str) -> dict:
    """Counts for one snapshot (the snapshot flow's artifact); None counts when its registry
    source failed or was skipped. Caches what the growth report and the what-if read of it while
    its tables are at hand: its summary, its diff with the previous snapshot, its FootprintIndex."""
    ids = store.list_snapshots()
    at = ids.index(snapshot_id) if snapshot_id in ids else 0
    (_, summary, _), = summarize_chunk(store.url, [(snapshot_id, ids[at - 1] if at else None)], index=True)
    row = {"snapshot": snapshot_id, "repositories": None, "tags": None, "manifests": None, "bytes": None,
           "unique_bytes": None}
    if summary.num_rows:
        total = summary.to_pylist()[0]
        row.update(repositories=summary.num_rows - 1, tags=total["tags"], manifests=total["manifests"],
                   bytes=total["image_bytes"], unique_bytes=total["unique_bytes"])
    return row


# ------------------------------------------------------------------ output

def _b(v) -> str:
    from tasks.common.units import human_bytes

    return "-" if v is None or pd.isna(v) else human_bytes(int(v))


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
    if t:
        lines += ["", f"growth over {t['days']:.1f} days ({report.basis} bytes): {_b(t['bytes_per_day'])}/day, "
                      f"{t['tags_per_day']:+.1f} tags/day; tags added {t['added']}, removed {t['removed']}, moved {t['moved']}",
                  "projection: " + ", ".join(f"{_b(t[f'bytes_in_{d}d'])} in {d} days" for d in PROJECT_DAYS)
                  + f" (now {_b(t[f'{report.basis}_bytes'])})"]
    if len(r):
        lines += ["", f"top {len(r)} repositories by growth:",
                  r.assign(**{c: r[c].map(_b) for c in ("unique_bytes", "image_bytes", "bytes_per_day",
                                                        *[f"bytes_in_{d}d" for d in PROJECT_DAYS])},
                           tags_per_day=r["tags_per_day"].round(1)).to_string(index=False, na_rep="-")]
    return "\n".join(lines)


def render_markdown(report: Growth, top: int = 10) -> str:
    """The Prefect artifact: the same text, fenced so the UI keeps its columns."""
    return "# Registry growth\n\n```\n" + render_text(report, top) + "\n```"


def to_json(report: Growth, top: int = 10) -> dict:
    def clean(df: pd.DataFrame) -> list[dict]:
        return [{k: (None if v is None or (not isinstance(v, str) and pd.isna(v)) else v) for k, v in row.items()}
                for row in df.astype(object).to_dict(orient="records")]

    snaps = report.snapshots.assign(created_at=report.snapshots["created_at"].map(lambda t: t.isoformat()))
    return {"basis": report.basis, "totals": report.totals, "snapshots": clean(snaps),
            "repositories": clean(report.repositories.head(top))}


def two_panel_figure(height: float):
    """A figure of two stacked panels over time, drawn without a display (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(2, 1, figsize=(9, height), dpi=100, sharex=True)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out dates, write the PNG and free the figure (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    fig.autofmt_xdate()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def render_chart(report: Growth, path: str | Path, top: int = 10) -> Path:
    """Bytes per top-N repository over time, and the registry's unique vs reclaimable bytes, as a PNG."""
    df = report.snapshots.dropna(subset=["tags"])
    fig, (a1, a2) = two_panel_figure(7)
    for name in report.repositories["repository"].head(top):
        a1.plot(report.series.index, report.series[name].to_numpy(float) / 1e9, label=name)
    a1.set_ylabel(f"{report.basis} GB per repository")
    a1.set_title(f"Top {top} repositories by growth")
    if a1.lines:
        a1.legend(fontsize="small", ncol=2)
    a2.plot(df["created_at"], df["unique_bytes"].astype(float) / 1e9, marker="o", label="unique bytes")
    a2.plot(df["created_at"], df["image_bytes"].astype(float) / 1e9, linestyle="--", label="image bytes (shared layers counted each time)")
    rec = report.snapshots.dropna(subset=["reclaimable_bytes"])
    a2.plot(rec["created_at"], rec["reclaimable_bytes"].astype(float) / 1e9, marker="s", label="reclaimable (plans)")
    a2.set_ylabel("GB")
    a2.legend(fontsize="small")
    return save_figure(fig, path)
