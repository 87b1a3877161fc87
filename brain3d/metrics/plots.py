"""The evaluation's figure, a forest plot (per metric, every system's mean with its bootstrap CI), and the
long CSV of the same numbers that `dvc plots` draws."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from brain3d import fileio
from brain3d.metrics.formatting import LABELS

if TYPE_CHECKING:
    from brain3d.metrics.systems import System


def forest_plot(
    path: Path, systems: list[System], cis: dict[str, pd.DataFrame], metrics: list[str], title: str
) -> None:
    """One panel per metric: each system's mean with its 95 % CI; not-run systems are labelled as such."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    height = 0.32 * len(systems) + 1.1
    fig = Figure(figsize=(3.4 * ncols + 1.2, height * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    ys = np.arange(len(systems))[::-1]
    for k, ax in enumerate(axes.flat):
        if k >= len(metrics):
            ax.set_visible(False)
            continue
        m = metrics[k]
        for y, s in zip(ys, systems):
            mean = cis[s.name].loc[m, "mean"] if s.ok else math.nan
            if math.isnan(mean):
                ax.text(
                    0.02,
                    y,
                    "not run" if not s.ok else "n/a",
                    transform=ax.get_yaxis_transform(),
                    va="center",
                    fontsize=8,
                    color="0.5",
                    style="italic",
                )
                continue
            low, high = cis[s.name].loc[m, ["low", "high"]]
            ax.errorbar(
                mean,
                y,
                xerr=[[mean - low], [high - mean]],
                fmt="o",
                ms=4,
                capsize=3,
                color="C3" if s.baseline else "C0",
            )
        if m != "cider":  # every other metric lies in [0, 1]: a common scale reads faster
            ax.set_xlim(-0.03, 1.03)
        ax.set_title(LABELS.get(m, m), fontsize=10)
        ax.set_yticks(ys, [s.name for s in systems] if k % ncols == 0 else [""] * len(systems), fontsize=8)
        ax.set_ylim(-0.7, len(systems) - 0.3)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    handles = [
        Line2D([], [], color=c, marker="o", label=lab) for c, lab in (("C3", "baseline"), ("C0", "other"))
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)


def ci_long(cis: dict[str, pd.DataFrame], metrics: list[str]) -> pd.DataFrame:
    """Long CSV (system, metric, label, mean, low, high) that `dvc plots` can draw."""
    frames = [ci.loc[metrics].reset_index().assign(system=name) for name, ci in cis.items()]
    df = pd.concat(frames, ignore_index=True)
    df["label"] = df["metric"].map(lambda m: LABELS.get(m, m))
    return df[["system", "metric", "label", "mean", "low", "high"]]
