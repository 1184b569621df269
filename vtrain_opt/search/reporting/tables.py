"""The chosen plans' table of the HTML reports: one row per plan, its shape, options, days,
GPU-hours, dollars, MFU, iteration time, memory and feasibility.

Rows are result rows (``search.evaluate.rows``) or their JSON records; plan dimensions the
rows do not have (cp, ep in older results) get no column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vtrain_opt.search.reporting.plans import PARALLEL, has, plan_options
from vtrain_opt.units import DAY_S, GIB, format_usd


def table_header(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    # cp and ep columns only where some plan uses them (every row carries them, 1 by default)
    extra = [k for k in ("cp", "ep") if any(has(r, k) and int(r[k]) > 1 for r in rows)]
    return [
        "",
        "GPUs",
        "GPU",
        "tp",
        "pp",
        "dp",
        *extra,
        "mb",
        "gb",
        "recompute, options",
        "days",
        "GPU-hours",
        "cost",
        "MFU",
        "iteration",
        "memory GiB",
        "feasible",
    ]


def table_left(header: Sequence[str]) -> list[int]:
    """The columns of ``table_header`` that align left (text)."""
    return [i for i, h in enumerate(header) if h in ("", "GPU", "recompute, options")]


def plan_cells(label: str, row: Mapping[str, Any], header: Sequence[str]) -> list[str]:
    """The cells of one plan under ``table_header``'s columns."""
    mem, cap = float(row["memory_per_gpu_bytes"]), float(row["memory_capacity_bytes"])
    values: dict[str, str] = {
        "": label,
        "GPUs": f"{int(row['num_gpus']):,}",
        "GPU": str(row["gpu"]),
        "mb": str(int(row["micro_batch"])),
        "gb": str(int(row["global_batch"])),
        "recompute, options": plan_options(row).removeprefix("recompute="),
        "days": f"{float(row['training_time_s']) / DAY_S:,.1f}",
        "GPU-hours": f"{float(row['gpu_hours']):,.0f}",
        "cost": format_usd(float(row["cost_usd"])),
        "MFU": f"{float(row['mfu']):.1%}",
        "iteration": f"{float(row['iteration_time_s']):.3g} s",
        "memory GiB": f"{mem / GIB:,.1f} / {cap / GIB:,.0f}",
        "feasible": "yes" if bool(row["feasible"]) else f"no: {row['reason']}",
    }
    for k in PARALLEL:
        values[k] = str(int(row[k])) if has(row, k) else "-"
    return [values[h] for h in header]
