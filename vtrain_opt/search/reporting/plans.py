"""Figures of plans for the HTML reports (Plotly figures as plain dicts), and their text.

* ``front_figure``: time against cost of every plan drawn, feasible ones per GPU type,
  infeasible ones greyed by reason, the Pareto front and the chosen plans marked, each
  point's plan in its hover text; menus switch either axis between days, GPU-hours and
  dollars.
* ``breakdown_figure``: where an iteration of each chosen plan goes (stacked bars).
* ``memory_figure``: memory per GPU of each chosen plan against the GPU's capacity.
* ``hover_text``, ``plan_shape``, ``plan_options``: a plan in words (the plans table in
  ``tables`` uses them too).

Rows are result rows (``search.evaluate.rows``): plan columns, simulated metrics and
feasibility. Plan dimensions the rows do not have (cp, ep in older results) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.sim.step import BREAKDOWN_COLUMNS
from vtrain_opt.units import DAY_S, GIB, format_usd

# The most points drawn: feasible plans of each GPU type, and infeasible plans in all.
# Beyond, an evenly spaced subset by training time (deterministic); the page says so.
MAX_FEASIBLE_POINTS = 20_000
MAX_INFEASIBLE_POINTS = 5_000
# Parallel dimensions shown when a row has them (tp, pp, dp always).
PARALLEL = ("tp", "pp", "dp", "cp", "ep")
AXES = {  # menu label -> (column, scale to the unit shown, axis title)
    "days": ("training_time_s", 1 / DAY_S, "training time (days)"),
    "GPU-hours": ("gpu_hours", 1.0, "GPU-hours"),
    "dollars": ("cost_usd", 1.0, "cost (USD)"),
}
BREAKDOWN_LABELS = {
    "compute_s": "compute",
    "recompute_s": "recompute",
    "tp_comm_s": "tensor-parallel comm",
    "pp_comm_s": "pipeline p2p",
    "bubble_s": "pipeline bubble",
    "dp_comm_s": "data-parallel comm (exposed)",
    "optimizer_s": "optimizer step",
    "overhead_s": "framework overhead",
}
GPU_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
GREYS = ("#b0b0b0", "#8f8f8f", "#c8c8c8", "#a0a0a0", "#d4d4d4")
GREY_SYMBOLS = (
    "x-thin-open",
    "cross-thin-open",
    "triangle-down-open",
    "square-open",
    "circle-open",
)
MENU_Y = 1.07  # the axis menus, just above the plot (paper coordinates)
CHOSEN_SYMBOLS = {"fastest": "star", "cheapest": "diamond", "baseline": "x"}


# ---- plan text ----------------------------------------------------------------------------
def has(row: Mapping[str, Any], key: str) -> bool:
    v = row.get(key)
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def plan_shape(row: Mapping[str, Any]) -> str:
    """'tp=8 pp=15 dp=32' (and cp, ep where the row has them and they are above 1)."""
    parts = [f"{k}={int(row[k])}" for k in PARALLEL if has(row, k)]
    return " ".join(p for p in parts if p[:2] in ("tp", "pp", "dp") or not p.endswith("=1"))


def plan_options(row: Mapping[str, Any]) -> str:
    """Recomputation and the options that differ from the plain plan."""
    parts = [f"recompute={row.get('recompute', '?')}"]
    if has(row, "sequence_parallel") and bool(row["sequence_parallel"]):
        parts.append("sp")
    if has(row, "vpp") and int(row["vpp"]) > 1:
        parts.append(f"vpp={int(row['vpp'])}")
    if has(row, "zero") and int(row["zero"]):
        parts.append(f"zero={int(row['zero'])}")
    if has(row, "dp_overlap") and not bool(row["dp_overlap"]):
        parts.append("no-dp-overlap")
    if has(row, "first_stage_layers") and (
        int(row["first_stage_layers"]) or int(row["last_stage_layers"])
    ):
        parts.append(
            f"stage_layers={int(row['first_stage_layers'])},{int(row['last_stage_layers'])}"
        )
    if has(row, "dtype") and str(row["dtype"]) == "fp8":  # bf16 (fp16) is the plain plan's
        parts.append("fp8")
    return " ".join(parts)


def hover_text(row: Mapping[str, Any]) -> str:
    """A point's hover: the plan (GPUs, shape, micro-batch, options), days, GPU-hours,
    dollars, MFU, memory, and the reason when it is infeasible."""
    money = (
        f"{row['training_time_s'] / DAY_S:,.1f} days · {row['gpu_hours']:,.0f} GPU-h · "
        f"{format_usd(row['cost_usd'])}"
    )
    if not has(row, "tp"):  # a sampled point: the search kept its time and cost only
        return f"<b>{row['gpu']}</b> (sampled plan)<br>{money}"
    lines = [
        f"<b>{int(row['num_gpus']):,} × {row['gpu']}</b>",
        f"{plan_shape(row)} · mb={int(row['micro_batch'])} gb={int(row['global_batch'])}",
        plan_options(row),
        money,
        f"MFU {row['mfu']:.1%} · memory {row['memory_per_gpu_bytes'] / GIB:,.1f}"
        f" / {row['memory_capacity_bytes'] / GIB:,.0f} GiB",
    ]
    if not bool(row["feasible"]):
        lines.append(f"<i>infeasible: {row['reason']}</i>")
    return "<br>".join(lines)


# ---- the points ---------------------------------------------------------------------------
@dataclass
class Cloud:
    """The plans a time-cost figure draws, grouped; and what was left out."""

    feasible: dict[str, pd.DataFrame] = field(default_factory=dict)  # by GPU type
    infeasible: dict[str, pd.DataFrame] = field(default_factory=dict)  # by reason
    notes: list[str] = field(default_factory=list)


def _spread(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """``k`` rows evenly spaced by training time (all when there are no more than k)."""
    if len(df) <= k:
        return df
    ordered = df.sort_values("training_time_s", kind="stable")
    idx = np.unique(np.linspace(0, len(ordered) - 1, k).round().astype(int))
    return ordered.iloc[idx]


def cloud(plans: pd.DataFrame, sample: pd.DataFrame | None = None) -> Cloud:
    """Every feasible plan per GPU type and the infeasible ones by reason, each group cut
    to an even subset when there are very many. ``sample`` (time and cost only) adds the
    points of plans a large search did not keep in full."""
    frames = [plans] + ([sample] if sample is not None and len(sample) else [])
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else plans
    df = df.dropna(subset=["training_time_s", "cost_usd"])
    kept = "kept " if len(frames) > 1 else ""  # a sample: counts of what was kept
    out = Cloud()
    # sampled points carry no reason: out of memory, or over a limit when they fit
    reason = df["reason"].astype(object) if "reason" in df else pd.Series(None, index=df.index)
    fallback = np.where(df["fits_memory"].astype(bool), "over a limit", "out of memory")
    df = df.assign(reason=reason.where(reason.notna(), pd.Series(fallback, index=df.index)))
    ok = df["feasible"].astype(bool).to_numpy()
    for gpu, part in df[ok].groupby(df[ok]["gpu"].astype(str), sort=False):
        drawn = _spread(part, MAX_FEASIBLE_POINTS)
        out.feasible[str(gpu)] = drawn
        if len(drawn) < len(part):
            out.notes.append(
                f"{len(drawn):,} of the {len(part):,} {kept}feasible plans on {gpu} are drawn, "
                "evenly spaced by training time (the Pareto front is drawn in full)."
            )
    bad = df[~ok]
    total = len(bad)
    for reason, part in bad.groupby(bad["reason"].astype(str), sort=True):
        share = max(1, round(MAX_INFEASIBLE_POINTS * len(part) / max(total, 1)))
        drawn = _spread(part, share)
        out.infeasible[str(reason)] = drawn
        if len(drawn) < len(part):
            out.notes.append(
                f"{len(drawn):,} of the {len(part):,} {kept}plans rejected as '{reason}' are drawn."
            )
    return out


# ---- figures ------------------------------------------------------------------------------
def _values(df: pd.DataFrame, axis: str) -> list[float]:
    col, scale, _ = AXES[axis]
    return [float(f"{v:.6g}") for v in (df[col].to_numpy(dtype=float) * scale)]


def _base_layout(title: str) -> dict[str, Any]:
    return {
        "title": {"text": title, "x": 0.5, "xanchor": "center", "font": {"size": 14}},
        "plot_bgcolor": "white",
        "paper_bgcolor": "white",
        "hovermode": "closest",
        "hoverlabel": {"align": "left"},
        "margin": {"l": 70, "r": 20, "t": 60, "b": 55},
        "legend": {"font": {"size": 11}, "traceorder": "normal"},
    }


def plot_layout(xaxis: dict[str, Any], yaxis: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The study reports' figure look (white plot, closest hover, left-aligned labels, light
    grid), with their axes and any other layout keys."""
    grid = {"gridcolor": "#e4e7eb"}
    return {
        "plot_bgcolor": "white",
        "hovermode": "closest",
        "hoverlabel": {"align": "left"},
        "margin": {"l": 70, "r": 20, "t": 30, "b": 55},
        "xaxis": {**xaxis, **grid},
        "yaxis": {**yaxis, **grid},
        **extra,
    }


def _grid() -> dict[str, Any]:
    return {"gridcolor": "#e4e7eb", "zerolinecolor": "#cbd2d9", "linecolor": "#9aa5b1"}


def front_figure(
    points: Cloud,
    front: pd.DataFrame,
    chosen: Sequence[tuple[str, Mapping[str, Any]]],
    title: str,
) -> dict[str, Any]:
    """The interactive time-cost figure (a Plotly figure dict)."""
    groups: list[tuple[pd.DataFrame, dict[str, Any]]] = []
    for i, (reason, df) in enumerate(points.infeasible.items()):
        groups.append(
            (
                df,
                {
                    "name": f"infeasible: {reason} ({len(df):,})",
                    "mode": "markers",
                    "legendgroup": "infeasible",
                    "marker": {
                        "color": GREYS[i % len(GREYS)],
                        "symbol": GREY_SYMBOLS[i % len(GREY_SYMBOLS)],
                        "size": 5,
                        "opacity": 0.6,
                    },
                },
            )
        )
    for i, (gpu, df) in enumerate(points.feasible.items()):
        groups.append(
            (
                df,
                {
                    "name": f"feasible on {gpu} ({len(df):,})",
                    "mode": "markers",
                    "marker": {
                        "color": GPU_COLORS[i % len(GPU_COLORS)],
                        "size": 6,
                        "opacity": 0.55,
                    },
                },
            )
        )
    if len(front):
        groups.append(
            (
                front,
                {
                    "name": f"Pareto front ({len(front)} plans)",
                    "mode": "lines+markers",
                    "line": {"color": "crimson", "width": 2, "shape": "hv"},
                    "marker": {"color": "crimson", "size": 7},
                },
            )
        )
    for label, row in chosen:
        groups.append(
            (
                pd.DataFrame([dict(row)]),
                {
                    "name": f"{label}: {int(row['num_gpus']):,} × {row['gpu']}",
                    "mode": "markers",
                    "marker": {
                        "symbol": CHOSEN_SYMBOLS.get(label, "star"),
                        "size": 17,
                        "color": {"fastest": "gold", "cheapest": "#00b3a4"}.get(label, "#ff5c8a"),
                        "line": {"color": "black", "width": 1.5},
                    },
                },
            )
        )
    data = []
    for df, style in groups:
        records = df.to_dict("records")
        data.append(
            {
                "type": "scatter",
                "x": _values(df, "days"),
                "y": _values(df, "dollars"),
                "text": [hover_text(r) for r in records],
                "hovertemplate": "%{text}<extra></extra>",
                **style,
            }
        )
    layout = _base_layout(title)
    layout["xaxis"] = {"type": "log", "title": {"text": AXES["days"][2]}, **_grid()}
    layout["yaxis"] = {
        "type": "log",
        "title": {"text": AXES["dollars"][2]},
        "tickprefix": "$",
        **_grid(),
    }
    layout["margin"]["t"] = 80 if title else 60
    layout["updatemenus"] = [
        _axis_menu("x", groups, "days", 0.0),
        _axis_menu("y", groups, "dollars", 0.22),
    ]
    layout["annotations"] = [
        _menu_label("x axis", 0.0, MENU_Y),
        _menu_label("y axis", 0.22, MENU_Y),
    ]
    return {"data": data, "layout": layout}


def _axis_menu(
    axis: str, groups: list[tuple[pd.DataFrame, dict[str, Any]]], first: str, x: float
) -> dict[str, Any]:
    """A dropdown that puts days, GPU-hours or dollars on ``axis`` for every trace."""
    order = [first] + [a for a in AXES if a != first]
    buttons = []
    for name in order:
        prefix = "$" if name == "dollars" else ""
        buttons.append(
            {
                "label": name,
                "method": "update",
                "args": [
                    {axis: [_values(df, name) for df, _ in groups]},
                    {
                        f"{axis}axis.title.text": AXES[name][2],
                        f"{axis}axis.tickprefix": prefix,
                    },
                ],
            }
        )
    return {
        "type": "dropdown",
        "direction": "down",
        "x": x + 0.055,
        "y": MENU_Y,
        "xanchor": "left",
        "yanchor": "middle",
        "pad": {"t": 0, "b": 0},
        "showactive": True,
        "buttons": buttons,
    }


def _menu_label(text: str, x: float, y: float) -> dict[str, Any]:
    return {
        "text": text,
        "x": x,
        "y": y,
        "xref": "paper",
        "yref": "paper",
        "showarrow": False,
        "xanchor": "left",
        "yanchor": "middle",
    }


def breakdown_figure(chosen: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Stacked bars: each chosen plan's iteration by component, in seconds."""
    labels = [label for label, _ in chosen]
    data = []
    for col in BREAKDOWN_COLUMNS:
        secs = [float(row[col]) for _, row in chosen]
        if not any(s > 0 for s in secs):
            continue
        shares = [
            s / float(row["iteration_time_s"]) for s, (_, row) in zip(secs, chosen, strict=True)
        ]
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": BREAKDOWN_LABELS.get(col, col),
                "y": labels,
                "x": [float(f"{s:.6g}") for s in secs],
                "text": [
                    f"{lab}: {BREAKDOWN_LABELS.get(col, col)} {s:.3g} s ({f:.1%})"
                    for lab, s, f in zip(labels, secs, shares, strict=True)
                ],
                "textposition": "none",
                "hovertemplate": "%{text}<extra></extra>",
            }
        )
    layout = _base_layout("Where one iteration goes (seconds)")
    layout["barmode"] = "stack"
    layout["xaxis"] = {"title": {"text": "seconds per iteration"}, **_grid()}
    layout["yaxis"] = {"autorange": "reversed", "type": "category", "automargin": True}
    return {"data": data, "layout": layout}


def memory_figure(chosen: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Stacked bars of memory per GPU (states, activations, the rest) against capacity."""
    labels = [label for label, _ in chosen]
    total = [float(r["memory_per_gpu_bytes"]) / GIB for _, r in chosen]
    states = [float(r.get("memory_states_bytes", 0.0) or 0.0) / GIB for _, r in chosen]
    acts = [float(r.get("memory_activations_bytes", 0.0) or 0.0) / GIB for _, r in chosen]
    rest = [max(t - s - a, 0.0) for t, s, a in zip(total, states, acts, strict=True)]
    data = []
    for name, values, color in (
        ("weights, gradients, optimizer", states, "#4c78a8"),
        ("activations", acts, "#f58518"),
        ("other", rest, "#bab0ac"),
    ):
        if not any(v > 1e-9 for v in values):
            continue
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": name,
                "y": labels,
                "x": [round(v, 3) for v in values],
                "marker": {"color": color},
                "text": [
                    f"{lab}: {name} {v:,.1f} GiB" for lab, v in zip(labels, values, strict=True)
                ],
                "textposition": "none",
                "hovertemplate": "%{text}<extra></extra>",
            }
        )
    cap = [float(r["memory_capacity_bytes"]) / GIB for _, r in chosen]
    data.append(
        {
            "type": "scatter",
            "mode": "markers",
            "name": "GPU memory",
            "y": labels,
            "x": [round(c, 3) for c in cap],
            "marker": {
                "symbol": "line-ns-open",
                "size": 26,
                "line": {"width": 3, "color": "#b42318"},
            },
            "text": [
                f"{lab}: {t:,.1f} of {c:,.0f} GiB ({t / c:.0%})"
                for lab, t, c in zip(labels, total, cap, strict=True)
            ],
            "hovertemplate": "%{text}<extra></extra>",
        }
    )
    layout = _base_layout("Memory per GPU against its capacity (GiB)")
    layout["barmode"] = "stack"
    layout["xaxis"] = {"title": {"text": "GiB per GPU"}, "rangemode": "tozero", **_grid()}
    layout["yaxis"] = {"autorange": "reversed", "type": "category", "automargin": True}
    return {"data": data, "layout": layout}


def bars_height_px(plans: int) -> int:
    """A bar figure's height for ``plans`` bars (room for the legend when there are few)."""
    return max(320, 120 + 34 * plans)
