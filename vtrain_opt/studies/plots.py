"""Plots of the studies (matplotlib, Agg backend), each written atomically as PNG.

* ``loss_vs_size``: the iso-budget curve, predicted loss against model size for every
  budget, real plans (solid) beside the ideal constant-utilization curve (dashed), with
  N* and the ideal answers marked.
* ``frontier``: N*, D* and tokens per parameter against the budget, real vs ideal.
* ``sweep_summary``: training days against dollars of every scenario, by GPU type, and MFU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.io import write_with


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def loss_vs_size(result: Any, path: Path) -> Path:
    """Loss against model size at each budget: real candidates and the ideal iso-FLOP curve."""
    plt = _plt()
    fit = result.config.law
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, a in enumerate(result.answers):
        color = colors[i % len(colors)]
        c = a.candidates
        ok = c[c["status"] == "ok"]
        few = c[c["status"] == "too few tokens"]
        label = a.budget.label()
        ax.plot(ok["params"], ok["loss"], "o-", color=color, ms=4, label=f"real plans, {label}")
        if len(few):
            ax.plot(few["params"], few["loss"], "x", color=color, ms=5, alpha=0.6)
        n_grid = np.geomspace(c["params"].min(), c["params"].max(), 200)
        ax.plot(
            n_grid,
            fit.iso_compute_loss(n_grid, a.ideal["compute_flop"]),
            "--",
            color=color,
            alpha=0.7,
            label=f"ideal at MFU {a.ideal['mfu']:.0%}",
        )
        ax.plot(
            a.optimal["params"], a.optimal["loss"], "*", color=color, ms=16, mec="black", zorder=5
        )
        ax.plot(a.ideal["params"], a.ideal["loss"], "o", color=color, ms=9, mec="black", zorder=5)
        m = a.at_real_mfu
        if m:
            ax.plot(
                n_grid, fit.iso_compute_loss(n_grid, m["compute_flop"]), ":", color=color, alpha=0.7
            )
            ax.plot(m["params"], m["loss"], "D", color=color, ms=7, mec="black", zorder=5)
        rule = a.ideal["rule"]
        ax.plot(rule["params"], rule["loss"], "^", color=color, ms=8, mec="black", zorder=5)
    ax.plot([], [], "*", color="gray", mec="black", ms=12, label="N* (real plans)")
    ax.plot([], [], "o", color="gray", mec="black", ms=8, label="ideal optimum of the law")
    ax.plot(
        [], [], "D:", color="gray", mec="black", ms=6, label="the law at N*'s MFU (dotted curve)"
    )
    ax.plot(
        [], [], "^", color="gray", mec="black", ms=8, label=f"~{_rule_r(result):g} tokens/param"
    )
    ax.plot([], [], "x", color="gray", label="below --min-tokens-per-param")
    ax.set_xscale("log")
    ax.set_xlabel("model parameters N")
    ax.set_ylabel(f"predicted loss L(N, D)  [{fit.name} fit]")
    ax.set_title(f"Loss at a fixed budget: {result.config.gpu.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _save(fig, path)
    plt.close(fig)
    return path


def frontier(frame: pd.DataFrame, path: Path, gpu: str) -> Path:
    """N*, D* and tokens per parameter against the budget: real plans vs the ideal."""
    plt = _plt()
    unit = str(frame["unit"].iloc[0])
    x = frame["budget"].to_numpy()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = (
        ("params", "ideal_params", "rule_params", "N* (parameters)"),
        ("tokens", "ideal_tokens", "rule_tokens", "D* (tokens)"),
        ("tokens_per_param", "ideal_tokens_per_param", None, "tokens per parameter"),
    )
    for ax, (real, ideal, rule, title) in zip(axes, panels, strict=True):
        ax.plot(x, frame[real], "o-", label="real plans")
        ax.plot(x, frame[ideal], "s--", label="ideal (law optimum)")
        at_mfu = f"real_mfu_law_{real}"
        if at_mfu in frame:
            ax.plot(x, frame[at_mfu], "D:", label="law optimum at N*'s MFU")
        if rule:
            ax.plot(x, frame[rule], "^:", label="~20 tokens/param rule")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"budget ({unit})")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Compute-optimal frontier on {gpu}")
    _save(fig, path)
    plt.close(fig)
    return path


def sweep_summary(table: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Days against dollars of every finished scenario (by GPU type), and their MFU."""
    ok = table[table["status"] == "ok"] if "status" in table else table.iloc[0:0]
    if ok.empty or "cost_usd" not in ok:
        return None
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    groups = ok.groupby("gpu_used", observed=True) if "gpu_used" in ok else [("", ok)]
    names = []
    for name, g in groups:
        ax.scatter(g["cost_usd"], g["days"], s=18, alpha=0.75, label=str(name))
        names.append(str(name))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cost (USD)")
    ax.set_ylabel("training time (days)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("each scenario's chosen plan")
    data = [g["mfu"].to_numpy() for _, g in groups] if names else [ok["mfu"].to_numpy()]
    ax2.boxplot(data, tick_labels=names or ["all"])
    ax2.set_ylabel("MFU")
    ax2.set_title("utilization of the chosen plans")
    ax2.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)
    return path


def _rule_r(result: Any) -> float:
    return float(result.config.tokens_per_param_rule)
