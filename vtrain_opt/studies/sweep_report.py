"""A sweep's HTML reports (``sweep --report``): ``report.html`` in the sweep's folder, one
row per scenario linking to each scenario's own page in ``reports/<id>.html``.

The summary page is self-contained (plotly.js inlined): the days and dollars of every
scenario's chosen plan by GPU type, and the table. The scenario pages share one
``reports/plotly.min.js`` (a sweep may hold hundreds of scenarios; keep the folder
together): the scenario's inputs, its chosen, fastest and cheapest plans with their
iteration breakdown and memory, and the fastest plan's pipeline timeline; or why it is
infeasible, or how it failed. A sweep keeps each scenario's chosen plans, not every plan it
evaluated: the time-cost figure of every plan is a search's (``search --report``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vtrain_opt.search.reporting.page import (
    REPORT_FILE,
    SHARED_PLOTLYJS,
    Page,
    Raw,
    pretty_json,
    write_shared_plotlyjs,
)
from vtrain_opt.search.reporting.plans import (
    GPU_COLORS,
    bars_height_px,
    breakdown_figure,
    memory_figure,
    plan_options,
    plan_shape,
    plot_layout,
)
from vtrain_opt.search.reporting.tables import plan_cells, table_header, table_left
from vtrain_opt.search.reporting.timeline import timeline_section
from vtrain_opt.search.targets import row_target
from vtrain_opt.studies.sweep import build_search
from vtrain_opt.studies.sweepfile import Scenario, Sweep
from vtrain_opt.studies.sweepstore import SweepStore
from vtrain_opt.units import DAY_S, format_count, format_usd

SCENARIO_PAGES = "reports"


def write_sweep_report(
    sweep: Sweep, store: SweepStore, command: Sequence[str] | None = None
) -> Path:
    """Write every finished scenario's page and the summary page; return the summary's path."""
    records = store.records()
    pages = store.folder / SCENARIO_PAGES
    pages.mkdir(parents=True, exist_ok=True)
    write_shared_plotlyjs(pages)
    for s in sweep.scenarios:
        if s.id in records:
            scenario_page(sweep, s, records[s.id]).write(pages / f"{s.id}.html")
    return summary_page(sweep, records, command).write(store.folder / REPORT_FILE)


def summary_page(
    sweep: Sweep, records: Mapping[str, dict[str, Any]], command: Sequence[str] | None
) -> Page:
    counts: dict[str, int] = {}
    for s in sweep.scenarios:
        status = records.get(s.id, {}).get("status", "missing")
        counts[status] = counts.get(status, 0) + 1
    page = Page(
        f"Sweep {sweep.name}",
        lead=(sweep.description + ": " if sweep.description else "")
        + f"{len(sweep)} scenarios ({' x '.join(sweep.axes)}): "
        + ", ".join(f"{n} {k}" for k, n in counts.items())
        + ".",
    )
    ok = [(s, records[s.id]) for s in sweep.scenarios if records.get(s.id, {}).get("chosen")]
    if ok:
        page.heading("Days and dollars of each scenario's chosen plan", "scenarios-plot")
        page.figure(_scenarios_figure(sweep, ok), "scenarios", height_px=560)
    page.heading("Scenarios", "scenarios")
    header = ["scenario", *sweep.axes, "status", "GPUs", "plan", "days", "cost", "MFU", "note"]
    rows = []
    for s in sweep.scenarios:
        rec = records.get(s.id)
        link: Any = (
            Raw(f'<a href="{SCENARIO_PAGES}/{quote(s.id)}.html">{s.id}</a>') if rec else s.id
        )
        cells = [link, *(_value(k, s.inputs.get(k)) for k in sweep.axes)]
        chosen = (rec or {}).get("chosen")
        if chosen:
            cells += [
                "ok",
                f"{int(chosen['num_gpus']):,} {chosen['gpu']}",
                f"{plan_shape(chosen)} mb={int(chosen['micro_batch'])}",
                f"{chosen['training_time_s'] / DAY_S:,.1f}",
                format_usd(chosen["cost_usd"]),
                f"{chosen['mfu']:.1%}",
                "",
            ]
        else:
            status = (rec or {}).get("status", "missing")
            note = (rec or {}).get("error") or (rec or {}).get("explain") or ""
            cells += [status, "", "", "", "", "", note]
        rows.append(cells)
    n = len(sweep.axes)
    page.table(header, rows, left=(0, *range(1, n + 1), n + 1, n + 3), wrap=(len(header) - 1,))
    page.heading("Inputs", "inputs")
    page.text(f"Sweep file {sweep.source} (fingerprint {sweep.fingerprint}).")
    page.command(command)
    page.versions()
    page.raw("<details><summary>What every scenario shares</summary>")
    page.code(pretty_json(sweep.fixed))
    page.raw("</details>")
    return page


def scenario_page(sweep: Sweep, scenario: Scenario, record: Mapping[str, Any]) -> Page:
    inputs = scenario.inputs
    gpus = inputs["gpu"] if isinstance(inputs["gpu"], list) else [inputs["gpu"]]
    page = Page(
        f"Scenario {scenario.id}: {inputs['model']}, {format_count(float(inputs['tokens']))} "
        f"tokens on {', '.join(gpus)}",
        lead=f"Sweep {sweep.name}; objective {record.get('objective')}; "
        f"status {record.get('status')}.",
        plotlyjs=SHARED_PLOTLYJS,
    )
    page.raw(f'<nav><a href="../{REPORT_FILE}">the sweep</a></nav>')
    page.heading("Inputs", "inputs")
    page.table(["input", "value"], [[k, _value(k, v)] for k, v in inputs.items()], left=(0, 1))
    if record.get("status") != "ok":
        page.heading("No plan", "no-plan")
        page.text(str(record.get("error") or record.get("explain") or record.get("status")))
    else:
        chosen = _chosen(record)
        page.heading("The chosen plans", "plans")
        page.text(
            f"{record.get('evaluated', 0):,} plans evaluated ({record.get('strategy')}), "
            f"{record.get('feasible', 0):,} feasible, {record.get('pareto_size', 0)} on the "
            "time-cost front. The sweep keeps these plans, not every plan: for the figure of "
            "every plan, run the scenario as a search with --report.",
            note=True,
        )
        header = table_header([r for _, r in chosen])
        page.table(
            header, [plan_cells(lab, r, header) for lab, r in chosen], left=table_left(header)
        )
        page.heading("Where an iteration goes", "breakdown")
        page.figure(breakdown_figure(chosen), "breakdown", height_px=bars_height_px(len(chosen)))
        page.heading("Memory per GPU", "memory")
        page.figure(memory_figure(chosen), "memory", height_px=bars_height_px(len(chosen)))
        page.heading("Pipeline timeline of the fastest plan", "timeline")
        best = record["best_time"]
        space, _, _ = build_search(scenario.inputs, scenario.model_spec)
        index = row_target(space, best)
        timeline_section(page, space.context(index), best)
    page.versions()
    page.raw("<details><summary>The scenario's record</summary>")
    page.code(pretty_json({k: v for k, v in record.items() if k != "traceback"}))
    page.raw("</details>")
    return page


def _chosen(record: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The chosen plan, then the fastest and the cheapest where they differ from it."""
    out: list[tuple[str, Mapping[str, Any]]] = [
        (f"chosen ({record.get('objective')})", record["chosen"])
    ]
    for label, key in (("fastest", "best_time"), ("cheapest", "best_cost")):
        row = record.get(key)
        if row and all(row != r for _, r in out):
            out.append((label, row))
    return out


def _scenarios_figure(
    sweep: Sweep, ok: Sequence[tuple[Scenario, Mapping[str, Any]]]
) -> dict[str, Any]:
    by_gpu: dict[str, list[tuple[Scenario, Mapping[str, Any]]]] = {}
    for s, rec in ok:
        by_gpu.setdefault(str(rec["chosen"]["gpu"]), []).append((s, rec))
    data = []
    for i, (gpu, items) in enumerate(by_gpu.items()):
        text = []
        for s, rec in items:
            c = rec["chosen"]
            axes = ", ".join(f"{k}={_value(k, s.inputs.get(k))}" for k in sweep.axes)
            text.append(
                f"<b>{s.id}</b>: {axes}<br>{int(c['num_gpus']):,} × {c['gpu']}: {plan_shape(c)} "
                f"mb={int(c['micro_batch'])}<br>{plan_options(c)}<br>"
                f"{c['training_time_s'] / DAY_S:,.1f} days · {format_usd(c['cost_usd'])} · "
                f"MFU {c['mfu']:.1%}"
            )
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"{gpu} ({len(items)})",
                "x": [rec["chosen"]["training_time_s"] / DAY_S for _, rec in items],
                "y": [rec["chosen"]["cost_usd"] for _, rec in items],
                "text": text,
                "hovertemplate": "%{text}<extra></extra>",
                "marker": {"color": GPU_COLORS[i % len(GPU_COLORS)], "size": 10},
            }
        )
    layout = plot_layout(
        {"type": "log", "title": {"text": "training time (days)"}},
        {"type": "log", "title": {"text": "cost (USD)"}, "tickprefix": "$"},
    )
    return {"data": data, "layout": layout}


def _value(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key == "tokens":
        return format_count(float(v))
    if key == "budget" and isinstance(v, Mapping):
        if v.get("usd") is not None:
            return format_usd(float(v["usd"]))
        return f"{v.get('gpu_hours'):,} GPU-h"
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)
