"""The growth and what-if charts as PNG files (matplotlib, drawn without a display): the Prefect UI
draws no charts, so the command line writes them where the user asks (`--chart PATH`)."""

from __future__ import annotations

from pathlib import Path

from tasks.history.growth import Growth
from tasks.history.whatif import WhatIf


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


def growth_chart(report: Growth, path: str | Path, top: int = 10) -> Path:
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


def whatif_chart(result: WhatIf, path: str | Path) -> Path:
    """Deletions and reclaimable bytes per snapshot under each policy, as a PNG."""
    df = result.frame()
    fig, (a1, a2) = two_panel_figure(6)
    a1.plot(df["created_at"], df["current_delete"], label="current", color="tab:blue")
    a1.plot(df["created_at"], df["candidate_delete"], label="candidate", color="tab:orange")
    a1.set_ylabel("deletions")
    a1.legend()
    a2.plot(df["created_at"], df["current_reclaimable"].astype(float) / 1e9, label="current", color="tab:blue")
    a2.plot(df["created_at"], df["candidate_reclaimable"].astype(float) / 1e9, label="candidate", color="tab:orange")
    a2.set_ylabel("reclaimable GB")
    regret_at = set(result.regrets["deleted_at"]) if len(result.regrets) else set()
    for t in df.loc[df["snapshot"].isin(regret_at), "created_at"]:
        a1.axvline(t, color="tab:red", alpha=0.4)
    a1.set_title(f"Current vs candidate policy ({len(result.regrets)} regrets, red)")
    return save_figure(fig, path)
