"""The growth and what-if charts as PNG files (matplotlib, drawn without a display): the Prefect UI
draws no charts, so the command line writes them where the user asks (`--chart PATH`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def byte_unit(*series) -> tuple[float, str]:
    """The decimal unit that fits the largest value drawn (B, kB, MB, GB, TB), and its divisor."""
    peak = max((float(np.nanmax(np.abs(np.asarray(v, float)))) for v in series if len(v)), default=0.0)
    for power, unit in ((4, "TB"), (3, "GB"), (2, "MB"), (1, "kB")):
        if peak >= 1000 ** power:
            return 1000.0 ** power, unit
    return 1.0, "B"


def growth_chart(report: Growth, path: str | Path, top: int = 10) -> Path:
    """Bytes per top-N repository over time, and the registry's unique vs reclaimable bytes, as a PNG."""
    return save_figure(growth_figure(report, top), path)


def growth_figure(report: Growth, top: int = 10):
    """The growth chart's matplotlib figure (growth_chart writes it)."""
    df = report.snapshots.dropna(subset=["tags"])
    rec = report.snapshots.dropna(subset=["reclaimable_bytes"])
    names = list(report.repositories["repository"].head(top))
    fig, (a1, a2) = two_panel_figure(7)
    div1, unit1 = byte_unit(*(report.series[n] for n in names))
    for name in names:
        a1.plot(report.series.index, report.series[name].to_numpy(float) / div1, label=name)
    a1.set_ylabel(f"{report.basis} {unit1} per repository")
    ranked = "growth" if report.totals.get("enough_history") else "size (not enough history yet for growth)"
    a1.set_title(f"Top {len(names)} repositories by {ranked}")
    if a1.lines:
        a1.legend(fontsize="small", ncol=2)
    div2, unit2 = byte_unit(df["unique_bytes"].dropna(), df["image_bytes"].dropna(), rec["reclaimable_bytes"])
    a2.plot(df["created_at"], df["unique_bytes"].astype(float) / div2, marker="o", label="unique bytes")
    a2.plot(df["created_at"], df["image_bytes"].astype(float) / div2, linestyle="--", label="image bytes (shared layers counted each time)")
    a2.plot(rec["created_at"], rec["reclaimable_bytes"].astype(float) / div2, marker="s", label="reclaimable (plans)")
    a2.set_ylabel(unit2)
    a2.legend(fontsize="small")
    return fig


def whatif_chart(result: WhatIf, path: str | Path) -> Path:
    """Deletions and reclaimable bytes per snapshot under each policy, as a PNG."""
    df = result.frame()
    fig, (a1, a2) = two_panel_figure(6)
    a1.plot(df["created_at"], df["current_delete"], label="current", color="tab:blue")
    a1.plot(df["created_at"], df["candidate_delete"], label="candidate", color="tab:orange")
    a1.set_ylabel("deletions")
    a1.legend()
    div, unit = byte_unit(df["current_reclaimable"].dropna(), df["candidate_reclaimable"].dropna())
    a2.plot(df["created_at"], df["current_reclaimable"].astype(float) / div, label="current", color="tab:blue")
    a2.plot(df["created_at"], df["candidate_reclaimable"].astype(float) / div, label="candidate", color="tab:orange")
    a2.set_ylabel(f"reclaimable {unit}")
    regret_at = set(result.regrets["deleted_at"]) if len(result.regrets) else set()
    for t in df.loc[df["snapshot"].isin(regret_at), "created_at"]:
        a1.axvline(t, color="tab:red", alpha=0.4)
    a1.set_title(f"Current vs candidate policy ({len(result.regrets)} regrets, red)")
    return save_figure(fig, path)
