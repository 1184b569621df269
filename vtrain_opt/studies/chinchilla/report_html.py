"""A compute-optimal study's HTML report (``chinchilla --report``): ``report.html`` in its
folder, one self-contained page.

The loss against model size at each budget: the real candidates (each size's best plan,
its plan in the hover), the ideal constant-utilization curve and the law at N*'s own MFU,
with N* (real plans), the ideal optimum, the law's optimum at N*'s MFU and the rule of
thumb marked; the answer of every budget beside the ideal one; the candidates of the
largest budget; the inputs that reproduce the study.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vtrain_opt.search.reporting.page import REPORT_FILE, Page, pretty_json
from vtrain_opt.search.reporting.plans import GPU_COLORS, plan_options, plan_shape, plot_layout
from vtrain_opt.units import format_count, format_usd

# Candidate rows: what each size's best plan was
_PLAN_KEYS = ("tp", "pp", "dp", "micro_batch", "global_batch")


def write_chinchilla_report(
    result: Any, doc: Mapping[str, Any], out: str | Path, command: Sequence[str] | None = None
) -> Path:
    """Write ``report.html`` of a study (``StudyResult`` and its JSON document) into ``out``."""
    return chinchilla_page(result, doc, command).write(Path(out) / REPORT_FILE)


def chinchilla_page(result: Any, doc: Mapping[str, Any], command: Sequence[str] | None) -> Page:
    cfg = result.config
    main = result.main
    opt, ideal = main.optimal, main.ideal
    page = Page(
        f"Compute-optimal model on {cfg.gpu.name}: {main.budget.label()}",
        lead=(
            f"N* = {format_count(opt['params'])} parameters trained on "
            f"{format_count(opt['tokens'])} tokens ({opt['tokens_per_param']:.1f} tokens per "
            f"parameter), loss {opt['loss']:.4f} at MFU {opt['mfu']:.1%}; the ideal answer "
            f"(MFU {ideal['mfu']:.0%}): {format_count(ideal['params'])} parameters, "
            f"{format_count(ideal['tokens'])} tokens, loss {ideal['loss']:.4f}."
        ),
    )
    page.heading("Loss against model size at the budget", "loss")
    page.figure(loss_figure(result), "loss", height_px=600)
    page.text(
        "Each point is one model size trained for as long as the budget allows on its "
        "fastest plan (hover for the shape, the plan, days, dollars and MFU). Dashed: the "
        "law's iso-compute curve at the ideal utilization; dotted: the same law at N*'s own "
        "MFU. Star: N* from real plans; circle: the ideal optimum; diamond: the law's optimum "
        "at N*'s MFU; triangle: the rule of thumb's size.",
        note=True,
    )
    for note in main.notes:
        page.text(note, note=True)

    page.heading("The answer at every budget", "answers")
    page.table(
        [
            "budget",
            "N*",
            "D*",
            "D*/N*",
            "loss",
            "MFU",
            "plan",
            "ideal N",
            "ideal D",
            "ideal loss",
            "loss above ideal",
        ],
        [_answer_cells(a) for a in result.answers],
        left=(0, 6),
    )
    page.heading(f"Candidates at {main.budget.label()}", "candidates")
    page.table(
        [
            "size",
            "params",
            "layers",
            "hidden",
            "tokens",
            "D/N",
            "loss",
            "GPUs",
            "plan",
            "days",
            "cost",
            "MFU",
            "status",
        ],
        [_candidate_cells(r) for r in main.candidates.to_dict("records")],
        left=(0, 8, 12),
    )
    if len(result.answers) > 1:
        page.text("Every budget's candidates are in candidates.csv beside this page.", note=True)

    page.heading("Inputs to reproduce this study", "inputs")
    page.command(command)
    page.text(
        f"GPU {cfg.gpu.name} at ${cfg.gpu.price_per_gpu_hour_usd:g}/GPU-hour, "
        f"{cfg.gpu.cluster.gpus_per_node} per node, profile {cfg.gpu.profile or '(the default)'}, "
        f"{doc.get('dtype')}; loss fit {cfg.law.name} ({doc['loss_fit'].get('source', '')}); "
        f"{cfg.num_sizes} sizes from {format_count(cfg.min_params)} to "
        f"{format_count(cfg.max_params)} ({cfg.rules.family} shapes)."
    )
    page.versions()
    light = {k: v for k, v in doc.items() if k not in ("candidates", "frontier", "files")}
    page.raw("<details><summary>Every input and answer (as study.json records it)</summary>")
    page.code(pretty_json(light))
    page.raw("</details>")
    return page


def loss_figure(result: Any) -> dict[str, Any]:
    """Predicted loss against parameters for every budget (a Plotly figure dict)."""
    fit = result.config.law
    data: list[dict[str, Any]] = []
    for i, a in enumerate(result.answers):
        color = GPU_COLORS[i % len(GPU_COLORS)]
        label = a.budget.label()
        c = a.candidates
        for status, mode, symbol in (
            ("ok", "lines+markers", "circle"),
            ("too few tokens", "markers", "x"),
        ):
            part = c[c["status"] == status].dropna(subset=["loss"])
            if not len(part):
                continue
            data.append(
                {
                    "type": "scatter",
                    "mode": mode,
                    "name": f"real plans, {label}"
                    + ("" if status == "ok" else " (too few tokens)"),
                    "x": part["params"].tolist(),
                    "y": part["loss"].tolist(),
                    "text": [_hover(r) for r in part.to_dict("records")],
                    "hovertemplate": "%{text}<extra></extra>",
                    "line": {"color": color},
                    "marker": {"color": color, "symbol": symbol, "size": 7},
                }
            )
        n = np.geomspace(float(c["params"].min()), float(c["params"].max()), 120)
        curves = [(a.ideal, f"ideal at MFU {a.ideal['mfu']:.0%}", "dash")]
        if a.at_real_mfu:
            curves.append((a.at_real_mfu, f"the law at N*'s MFU {a.at_real_mfu['mfu']:.0%}", "dot"))
        for answer, name, dash in curves:
            loss = fit.iso_compute_loss(n, answer["compute_flop"])
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"{name}, {label}",
                    "x": n.tolist(),
                    "y": np.asarray(loss, dtype=float).tolist(),
                    "line": {"color": color, "dash": dash, "width": 1.5},
                    "hoverinfo": "skip",
                }
            )
        marks = [
            ("N* (real plans)", a.optimal, "star", 18),
            ("ideal optimum", a.ideal, "circle", 12),
            ("law's optimum at N*'s MFU", a.at_real_mfu, "diamond", 11),
            (
                f"~{a.ideal['rule']['tokens_per_param']:g} tokens/param",
                a.ideal["rule"],
                "triangle-up",
                12,
            ),
        ]
        for name, point, symbol, size in marks:
            if not point:
                continue
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": f"{name}, {label}",
                    "x": [float(point["params"])],
                    "y": [float(point["loss"])],
                    "text": [
                        f"<b>{name}</b> at {label}<br>{format_count(point['params'])} params, "
                        f"{format_count(point['tokens'])} tokens "
                        f"({point['tokens_per_param']:.1f}/param)<br>loss {point['loss']:.4f}"
                    ],
                    "hovertemplate": "%{text}<extra></extra>",
                    "marker": {
                        "color": color,
                        "symbol": symbol,
                        "size": size,
                        "line": {"color": "black", "width": 1.2},
                    },
                }
            )
    layout = plot_layout(
        {"type": "log", "title": {"text": "model parameters N"}},
        {"title": {"text": "predicted loss"}},
        legend={"font": {"size": 11}},
    )
    return {"data": data, "layout": layout}


def _hover(r: Mapping[str, Any]) -> str:
    plan = f"{plan_shape(r)} · mb={int(r['micro_batch'])} gb={int(r['global_batch'])}"
    return "<br>".join(
        [
            f"<b>{r['name']}</b>: {format_count(r['params'])} params, {int(r['num_layers'])} "
            f"layers, hidden {int(r['hidden_size'])}",
            f"{format_count(r['tokens'])} tokens ({r['tokens_per_param']:.1f}/param), "
            f"loss {r['loss']:.4f}",
            f"{int(r['num_gpus']):,} GPUs: {plan}",
            plan_options(r),
            f"{r['days']:,.1f} days · {r['gpu_hours']:,.0f} GPU-h · {format_usd(r['cost_usd'])}",
            f"MFU {r['mfu']:.1%} · memory {r['memory_per_gpu_bytes'] / 2**30:,.1f} GiB",
        ]
    )


def _answer_cells(a: Any) -> list[str]:
    o, i = a.optimal, a.ideal
    plan = o.get("plan") or {}
    shape = plan_shape(plan) if all(k in plan for k in ("tp", "pp", "dp")) else "-"
    return [
        a.budget.label(),
        format_count(o["params"]),
        format_count(o["tokens"]),
        f"{o['tokens_per_param']:.1f}",
        f"{o['loss']:.4f}",
        f"{o['mfu']:.1%}",
        f"{plan.get('num_gpus', '-')} GPUs {shape}",
        format_count(i["params"]),
        format_count(i["tokens"]),
        f"{i['loss']:.4f}",
        f"{a.gap.get('loss_delta', float('nan')):+.4f}",
    ]


def _candidate_cells(r: Mapping[str, Any]) -> list[str]:
    ok = all(r.get(k) == r.get(k) and r.get(k) is not None for k in _PLAN_KEYS)
    number = lambda v, f: f.format(v) if v == v and v is not None else "-"  # noqa: E731
    return [
        str(r["name"]),
        format_count(r["params"]),
        str(r["num_layers"]),
        str(r["hidden_size"]),
        format_count(r["tokens"]) if r.get("tokens") == r.get("tokens") else "-",
        number(r.get("tokens_per_param"), "{:.1f}"),
        number(r.get("loss"), "{:.4f}"),
        f"{int(r['num_gpus']):,}" if ok else "-",
        f"{plan_shape(r)} mb={int(r['micro_batch'])} {plan_options(r)}" if ok else "-",
        number(r.get("days"), "{:,.1f}"),
        format_usd(r["cost_usd"]) if r.get("cost_usd") == r.get("cost_usd") else "-",
        number(r.get("mfu"), "{:.1%}"),
        str(r["status"]) + (f": {r['reason']}" if r.get("reason") else ""),
    ]
