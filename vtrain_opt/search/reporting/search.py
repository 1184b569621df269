"""A search's HTML report (``search --report``): ``report.html`` beside its other results.

One self-contained page: the interactive time-cost figure of every plan drawn, the chosen
plans' table, their iteration breakdown and memory, the pipeline timeline of the fastest
plan from the reference replay, and the inputs that reproduce the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.search.engine import SearchResult
from vtrain_opt.search.reporting.page import REPORT_FILE, Page, pretty_json
from vtrain_opt.search.reporting.plans import (
    Cloud,
    bars_height_px,
    breakdown_figure,
    cloud,
    front_figure,
    memory_figure,
)
from vtrain_opt.search.reporting.tables import plan_cells, table_header, table_left
from vtrain_opt.search.reporting.timeline import timeline_section
from vtrain_opt.search.results import describe, evaluated_text
from vtrain_opt.search.targets import dtype_text, gpu_contexts, row_target
from vtrain_opt.units import DAY_S, format_count, format_duration, format_usd

Chosen = list[tuple[str, Mapping[str, Any]]]


def write_search_report(
    result: SearchResult,
    out_dir: str | Path,
    *,
    command: Sequence[str] | None = None,
    baseline_row: pd.Series | None = None,
    baseline: Mapping[str, Any] | None = None,
    top: int = 8,
) -> Path:
    """Write ``report.html`` into ``out_dir`` (atomically); return its path."""
    if not result.ok:
        raise ValueError("no feasible plan: a report needs at least one")
    page = search_page(
        result, command=command, baseline_row=baseline_row, baseline=baseline, top=top
    )
    return page.write(Path(out_dir) / REPORT_FILE)


def search_page(
    result: SearchResult,
    *,
    command: Sequence[str] | None = None,
    baseline_row: pd.Series | None = None,
    baseline: Mapping[str, Any] | None = None,
    top: int = 8,
) -> Page:
    space = result.space
    gpus = ", ".join(g.name for g in space.gpus)
    page = Page(
        f"{space.model.name}: {format_count(result.tokens)} tokens on {gpus}",
        lead=_headline(result),
    )
    page.raw(
        '<nav><a href="#front">time and cost</a><a href="#plans">chosen plans</a>'
        '<a href="#breakdown">breakdown</a><a href="#memory">memory</a>'
        '<a href="#timeline">timeline</a><a href="#inputs">inputs</a></nav>'
    )
    chosen = chosen_plans(result, baseline_row, top)
    marked = [(label, row) for label, row in chosen if label in ("fastest", "cheapest", "baseline")]

    page.heading("Time and cost of every plan", "front")
    points = _points(result)
    page.figure(front_figure(points, result.pareto, marked, ""), "front", height_px=620)
    page.text(
        "Hover over a point for its plan, days, GPU-hours, dollars, MFU and memory; the menus "
        "above the figure put days, GPU-hours or dollars on either axis; click a legend entry "
        "to hide its points, drag to zoom, double-click to zoom out.",
        note=True,
    )
    for note in _point_notes(result, points):
        page.text(note, note=True)

    page.heading("The chosen plans", "plans")
    rows = [row for _, row in chosen]
    header = table_header(rows)
    page.table(
        header, [plan_cells(label, row, header) for label, row in chosen], left=table_left(header)
    )
    for line in _savings(baseline):
        page.text(line)

    page.heading("Where an iteration goes", "breakdown")
    page.figure(breakdown_figure(chosen), "breakdown", height_px=bars_height_px(len(chosen)))
    page.heading("Memory per GPU", "memory")
    page.figure(memory_figure(chosen), "memory", height_px=bars_height_px(len(chosen)))

    page.heading("Pipeline timeline of the fastest plan", "timeline")
    best: Any = result.best_time  # a report needs a feasible plan: set
    index = row_target(space, best)
    timeline_section(page, space.context(index), best)

    page.heading("Inputs to reproduce this run", "inputs")
    _inputs(page, result, command, baseline)
    return page


def chosen_plans(result: SearchResult, baseline_row: pd.Series | None, top: int) -> Chosen:
    """The fastest and the cheapest plans, up to ``top`` plans of the front between them
    (evenly spaced), and the baseline: the plans the text table lists."""
    chosen: Chosen = [("fastest", result.best_time), ("cheapest", result.best_cost)]  # type: ignore[list-item]
    inner = result.pareto.iloc[1:-1]
    if len(inner):
        idx = np.unique(np.linspace(0, len(inner) - 1, min(top, len(inner))).round().astype(int))
        chosen += [(f"Pareto {k + 1}", inner.iloc[i]) for k, i in enumerate(idx)]
    if baseline_row is not None:
        chosen.append(("baseline", baseline_row))
    return chosen


# ---- sections -----------------------------------------------------------------------------
def _headline(result: SearchResult) -> str:
    evaluated, reasons = evaluated_text(result)
    return (
        f"{evaluated} in {format_duration(result.elapsed_s)}; {result.feasible:,} feasible"
        + (f" (rejected: {reasons})" if reasons else "")
        + f"; {result.limits.describe()}."
    )


def _points(result: SearchResult) -> Cloud:
    if result.plans_complete:
        return cloud(result.plans)
    sample = result.sample
    if len(sample) and "gpu_hours" not in sample:
        price = {g.name: g.price_per_gpu_hour_usd for g in result.space.gpus}
        per_hour = sample["gpu"].astype(str).map(price).astype(float)
        sample = sample.assign(gpu_hours=sample["cost_usd"] / per_hour)
    return cloud(result.plans, sample)


def _point_notes(result: SearchResult, points: Cloud) -> list[str]:
    notes = list(points.notes)
    if not result.plans_complete:
        notes.insert(
            0,
            "The space is too large to keep every plan: the figure draws the plans the search "
            "kept in full (the fronts, the fastest and the cheapest) and an even sample of the "
            "others, whose hover shows their time and cost only.",
        )
    return notes


def _savings(baseline: Mapping[str, Any] | None) -> list[str]:
    lines = []
    for name, label in (("best_time", "fastest"), ("best_cost", "cheapest")):
        s = (baseline or {}).get("savings", {}).get(name)
        if not s:
            continue
        days = s["time_saved_s"] / DAY_S
        money = "saves" if s["cost_saved_usd"] >= 0 else "costs"
        lines.append(
            f"Against the baseline, the {label} plan finishes {abs(days):,.1f} days "
            f"{'sooner' if days >= 0 else 'later'} and {money} {format_usd(abs(s['cost_saved_usd']))}."
        )
    return lines


def _inputs(
    page: Page,
    result: SearchResult,
    command: Sequence[str] | None,
    baseline: Mapping[str, Any] | None,
) -> None:
    doc = describe(result, list(command) if command else None, dict(baseline) if baseline else None)
    page.command(doc.get("command"))  # (passwords redacted)
    space = result.space
    rows = []
    for i, g in enumerate(space.gpus):
        ctx = gpu_contexts(space, i)[0]
        c = g.cluster
        rows.append(
            [
                g.name,
                str(c.gpus_per_node),
                f"{c.intra_node_bytes_per_s / 1e9:,.0f} GB/s",
                f"{c.inter_node_bytes_per_s * 8 / 1e9:,.0f} Gbit/s",
                f"${c.price_per_gpu_hour_usd:g}",
                ctx.profile.id,
                f"{dtype_text(space, i)}, {ctx.setup.attention}",
            ]
        )
    page.table(
        [
            "GPU",
            "per node",
            "in-node link (per GPU)",
            "inter-node (per node)",
            "$/GPU-h",
            "profile",
            "dtype, attention",
        ],
        rows,
        left=(0, 5, 6),
    )
    m = space.model
    page.text(
        f"Model {m.name}: {m.num_params() / 1e9:,.1f}B parameters, {m.num_layers} layers, "
        f"hidden {m.hidden_size}, {m.num_attention_heads} heads, sequence {m.seq_length}; "
        f"{format_count(result.tokens)} tokens; {result.limits.describe()}; objective "
        f"{result.objective}, strategy {result.strategy}."
    )
    if result.study_name:
        page.text(
            f"Optuna study {result.study_name} in {result.storage}: open it with "
            f"optuna-dashboard {result.storage}"
        )
    page.versions()
    heavy = ("best_time", "best_cost", "chosen", "pareto", "closest")
    page.raw("<details><summary>Every input (as best.json records it)</summary>")
    page.code(pretty_json({k: v for k, v in doc.items() if k not in heavy}))
    page.raw("</details>")
