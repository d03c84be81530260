"""Registry growth over time, read back from every published snapshot.

Incomplete snapshots are included (their complete flag is reported): a registry table that
was read fully still says how big the registry was, and a failed one is simply a gap.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc

from tasks.store import Store, iter_ids_since

HISTORY_COLUMNS = ["snapshot", "created_at", "complete", "repositories", "tags", "manifests", "bytes"]


def snapshot_summary(store: Store, snapshot_id: str) -> dict:
    """Counts for one snapshot; None counts when its registry source failed or was skipped."""
    meta = store.snapshot_meta(snapshot_id)
    row = {"snapshot": snapshot_id, "created_at": pd.Timestamp(meta["created_at"]),
           "complete": bool(meta.get("complete", False)),
           "repositories": None, "tags": None, "manifests": None, "bytes": None}
    # Only the columns counted: history reads every snapshot, each up to 10^6 rows.
    tags = store.snapshot_table(snapshot_id, "tags", columns=["repository", "gone"])
    manifests = store.snapshot_table(snapshot_id, "manifests", columns=["repository", "digest", "size", "subject"])
    if tags is None or manifests is None:
        return row
    tags = tags.filter(pc.invert(tags["gone"]))
    row["repositories"] = len(pc.unique(tags["repository"]))
    row["tags"] = tags.num_rows
    row["manifests"] = manifests.num_rows
    # Each manifest's size already counts its config and layers (indexes: their platforms), so
    # only top-level manifests are summed; shared layers make this an upper bound of disk use.
    top = manifests.filter(pc.is_null(manifests["subject"]))
    children = store.snapshot_table(snapshot_id, "children", columns=["child_digest"])
    if children is not None and children.num_rows:
        top = top.filter(pc.invert(pc.is_in(top["digest"], value_set=pc.unique(children["child_digest"]))))
    sizes = top.group_by(["repository", "digest"]).aggregate([("size", "max")])
    row["bytes"] = int(pc.sum(sizes["size_max"]).as_py() or 0)
    return row


def growth(store: Store, since: datetime | None = None) -> pd.DataFrame:
    """One row per snapshot, oldest first, with growth since the previous one."""
    rows = [snapshot_summary(store, sid) for sid in iter_ids_since(store.list_snapshots(), since)]
    df = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    for col in ("repositories", "tags", "manifests", "bytes"):
        df[col] = df[col].astype("Int64")
    df["tags_delta"] = df["tags"].diff().astype("Int64")
    df["bytes_delta"] = df["bytes"].diff().astype("Int64")
    return df


def render_text(df: pd.DataFrame) -> str:
    """A plain, line-oriented table (also what the Prefect artifact shows)."""
    if df.empty:
        return "no snapshots yet"
    shown = df.assign(created_at=df["created_at"].dt.strftime("%Y-%m-%d %H:%M"),
                      complete=df["complete"].map({True: "yes", False: "NO"}))
    return shown.to_string(index=False, na_rep="-")


def render_markdown(df: pd.DataFrame) -> str:
    """The Prefect artifact: the same table, fenced so the UI keeps its columns."""
    return "# Registry growth\n\n```\n" + render_text(df) + "\n```"


def render_chart(df: pd.DataFrame, path: str | Path) -> Path:
    """Tags and bytes over time as a PNG (the Prefect UI draws no charts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax1 = plt.subplots(figsize=(8, 4), dpi=100)
    data = df.dropna(subset=["tags"])
    ax1.plot(data["created_at"], data["tags"], marker="o", color="tab:blue", label="tags")
    ax1.set_ylabel("tags", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(data["created_at"], data["bytes"].astype(float) / 1e9, marker="s", color="tab:orange", label="GB")
    ax2.set_ylabel("GB referenced", color="tab:orange")
    ax1.set_title("Registry growth")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
