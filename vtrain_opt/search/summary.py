"""What a search shows: its headline, the table of best plans, the savings against the
baseline, the closest plans when nothing is feasible, and the --json documents.

Text and rich tables only; the caller prints them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.search.engine import SearchResult
from vtrain_opt.search.request import SearchRun
from vtrain_opt.search.results import evaluated_text
from vtrain_opt.units import DAY_S, format_usd


def headline(result: SearchResult) -> list[str]:
    """The model, tokens, GPUs and limits; then what was evaluated, how and what was found."""
    space = result.space
    gpus = ", ".join(f"{g.name} (${g.price_per_gpu_hour_usd:g}/GPU-h)" for g in space.gpus)
    evaluated, reasons = evaluated_text(result)
    return [
        f"[b]{space.model.name}[/b] ({space.model.num_params() / 1e9:.0f}B params), "
        f"{result.tokens / 1e9:,.0f}B tokens on {gpus}; "
        f"{result.limits.describe()}",
        f"{evaluated} in {result.elapsed_s:.1f} s ({result.backend}); {result.feasible:,} feasible"
        + (f"; rejected: {reasons}" if reasons else ""),
    ]


def saving_lines(saved: dict[str, Any] | None) -> list[str]:
    """What the fastest and the cheapest plans save against the baseline, one line each."""
    lines = []
    if saved:
        for name, label in (("best_time", "fastest"), ("best_cost", "cheapest")):
            if saved.get(name):
                lines.append(f"against the baseline, the {label} plan {saving_text(saved[name])}")
    return lines


def saving_text(s: dict[str, float]) -> str:
    days = s["time_saved_s"] / DAY_S
    when = f"finishes {abs(days):,.1f} days {'sooner' if days >= 0 else 'later'}"
    money = "saves" if s["cost_saved_usd"] >= 0 else "costs"
    return (
        f"{when} ({-s['time_saved_fraction']:+.0%} time) and {money} "
        f"{format_usd(abs(s['cost_saved_usd']))} ({-s['cost_saved_fraction']:+.0%} cost)"
    )


def plans_table(result: SearchResult, top: int, baseline: pd.Series | None) -> Any:
    """The fastest and the cheapest plans, up to ``top`` plans of the front between them,
    and the baseline: size, shape, options, days, cost, MFU, memory and overheads."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    several = len(result.space.gpus) > 1
    picked: list[tuple[str, pd.Series]] = [
        ("fastest", result.best_time),
        ("cheapest", result.best_cost),
    ]
    inner = result.pareto.iloc[1:-1]  # the front's ends are the fastest and the cheapest
    if len(inner):
        idx = np.unique(np.linspace(0, len(inner) - 1, min(top, len(inner))).round().astype(int))
        picked += [("Pareto", inner.iloc[i]) for i in idx]
    if baseline is not None:
        picked.append(("baseline", baseline))
    rows = []
    for label, row in picked:
        t = float(row["iteration_time_s"])
        comm = float(row["tp_comm_s"]) + float(row["pp_comm_s"]) + float(row["dp_comm_s"])
        mem, cap = float(row["memory_per_gpu_bytes"]), float(row["memory_capacity_bytes"])
        rows.append(
            (
                label if bool(row["feasible"]) else f"{label} [red]({row['reason']})[/red]",
                f"{int(row['num_gpus']):,}" + (f" {row['gpu']}" if several else ""),
                f"{int(row['tp'])}.{int(row['pp'])}.{int(row['dp'])}",
                f"mb{int(row['micro_batch'])} {plan_options(row)}",
                f"{float(row['training_time_s']) / DAY_S:,.1f}",
                format_usd(float(row["cost_usd"])),
                f"{float(row['mfu']):.1%}",
                f"{mem / 2**30:.0f}/{cap / 2**30:.0f}",
                f"{100 * comm / t:.0f}/{100 * float(row['bubble_s']) / t:.0f}/"
                f"{100 * float(row['recompute_s']) / t:.0f}",
            )
        )
    table = Table(title="Best plans", title_justify="left", box=box.SIMPLE_HEAD)
    headers = ("", "GPUs", "tp.pp.dp", "options", "days", "cost", "MFU", "mem GiB", "comm/bub/rc%")
    for i, col in enumerate(headers):
        if col == "options":  # the one column that wraps when the terminal is narrow
            table.add_column(col, justify="left", overflow="fold", ratio=1)
            continue
        # figures are never cut: each column is as wide as its widest cell
        width = max([len(col)] + [Text.from_markup(r[i]).cell_len for r in rows])
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True, min_width=width)
    for r in rows:
        table.add_row(*r)
    return table


def plan_options(row: pd.Series) -> str:
    """A plan's recompute mode and its options that differ from the plain plan."""
    parts = [str(row["recompute"])]
    if int(row.get("cp", 1)) > 1:  # context parallelism (the GPUs are tp x cp x pp x dp)
        parts.append(f"cp{int(row['cp'])}")
    if int(row.get("ep", 1)) > 1 or int(row.get("etp", 1)) > 1:  # MoE expert parallelism
        parts.append(f"ep{int(row['ep'])}" + (f"x{int(row['etp'])}" if int(row["etp"]) > 1 else ""))
    if bool(row["sequence_parallel"]):
        parts.append("sp")
    if int(row["vpp"]) > 1:
        parts.append(f"vpp{int(row['vpp'])}")
    if int(row["zero"]):
        parts.append(f"z{int(row['zero'])}")
    if not bool(row["dp_overlap"]):
        parts.append("no-overlap")
    if int(row.get("first_stage_layers", 0)) or int(row.get("last_stage_layers", 0)):
        parts.append(f"stages {int(row['first_stage_layers'])}/{int(row['last_stage_layers'])}")
    if str(row.get("dtype", "")) == "fp8":  # bf16 (or fp16) is the plain plan's
        parts.append("fp8")
    return " ".join(parts)


def plan_text(row: pd.Series) -> str:
    return (
        f"tp={int(row['tp'])}"
        + (f" cp={int(row['cp'])}" if int(row.get("cp", 1)) > 1 else "")
        + f" pp={int(row['pp'])} dp={int(row['dp'])} "
        f"mb={int(row['micro_batch'])} gb={int(row['global_batch'])} recompute={plan_options(row)}"
    )


def closest_lines(result: SearchResult) -> list[str]:
    """When nothing is feasible: the plans nearest to the limits, one line each."""
    if not len(result.closest):
        return []
    lines = ["closest plans:"]
    for _, row in result.closest.iterrows():
        lines.append(
            f"  {int(row['num_gpus']):,} {row['gpu']}  {plan_text(row)}: "
            f"{float(row['training_time_s']) / DAY_S:,.1f} days, ${float(row['cost_usd']) / 1e6:,.2f}M, "
            f"memory {float(row['memory_per_gpu_bytes']) / float(row['memory_capacity_bytes']):.0%}"
        )
    return lines


def run_document(run: SearchRun) -> dict[str, Any]:
    """The --json document of a search that found a plan."""
    from vtrain_opt.search.results import row_dict, rows_list

    result = run.result
    return {
        "best_time": row_dict(result.best_time),
        "best_cost": row_dict(result.best_cost),
        "pareto": rows_list(result.pareto),
        "evaluated": result.evaluated,
        "space_size": result.space_size,
        "feasible": result.feasible,
        "reason_counts": result.reason_counts,
        "objective": result.objective,
        "strategy": result.strategy,
        "trials": result.trials,
        "study_name": result.study_name,
        "storage": result.storage,
        "backend": result.backend,
        "workers": result.workers,
        "elapsed_s": result.elapsed_s,
        "out": str(run.out_dir),
        "files": {k: str(v) for k, v in run.paths.items()},
        "baseline": run.baseline_info,
    }


def infeasible_document(result: SearchResult) -> dict[str, Any]:
    """The --json document of a search that found no feasible plan."""
    from vtrain_opt.search.results import rows_list

    return {
        "ok": False,
        "error": result.explain(),
        "binding": result.binding,
        "closest": rows_list(result.closest),
        "evaluated": result.evaluated,
        "reason_counts": result.reason_counts,
    }
