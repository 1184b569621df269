"""Plots of search results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files only

import matplotlib.pyplot as plt
import pandas as pd

from vtrain_opt.plotting import plain_log_ticks
from vtrain_opt.units import DAY_S

_CHOSEN_MARKERS = {"fastest": "*", "cheapest": "D", "baseline": "P"}


def plot_pareto(
    path: str | Path,
    sample: pd.DataFrame,
    front: pd.DataFrame,
    chosen: dict[str, pd.Series],
    title: str = "",
) -> None:
    """Time vs cost: sampled plans (feasible, and infeasible in grey), the Pareto front
    as a step line, and the chosen plans (fastest, cheapest, baseline) marked."""
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        if len(sample):
            s = sample.dropna(subset=["training_time_s", "cost_usd"])
            bad = s[~s["feasible"].astype(bool)]
            ax.scatter(
                bad["training_time_s"] / DAY_S,
                bad["cost_usd"] / 1e6,
                s=4,
                c="0.75",
                marker="x",
                linewidths=0.5,
                label=f"infeasible ({len(bad):,} shown)",
                rasterized=True,
            )
            good = s[s["feasible"].astype(bool)]
            for gpu, part in good.groupby("gpu", observed=True):
                ax.scatter(
                    part["training_time_s"] / DAY_S,
                    part["cost_usd"] / 1e6,
                    s=5,
                    alpha=0.5,
                    label=f"feasible, {gpu} ({len(part):,} shown)",
                    rasterized=True,
                )
        if len(front):
            ax.step(
                front["training_time_s"] / DAY_S,
                front["cost_usd"] / 1e6,
                where="post",
                color="crimson",
                lw=1.5,
                marker="o",
                ms=4,
                label=f"Pareto front ({len(front)} plans)",
            )
        for name, row in chosen.items():
            if row is None:
                continue
            ax.scatter(
                [float(row["training_time_s"]) / DAY_S],
                [float(row["cost_usd"]) / 1e6],
                s=140,
                marker=_CHOSEN_MARKERS.get(name, "*"),
                edgecolors="black",
                zorder=5,
                label=f"{name}: {int(row['num_gpus'])} x {row['gpu']}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_ticks(ax)
        ax.set_xlabel("training time (days)")
        ax.set_ylabel("cost (million USD)")
        ax.set_title(title or "time vs cost of the searched plans")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
