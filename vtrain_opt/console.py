"""Readable terminal output of simulation results (rich tables), shared by the commands."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from vtrain_opt.sim.step import denoise
from vtrain_opt.units import DAY_S, format_bytes, format_duration, format_usd

BREAKDOWN = (
    ("compute_s", "compute"),
    ("recompute_s", "recompute"),
    ("tp_comm_s", "tensor-parallel comm"),
    ("pp_comm_s", "pipeline p2p"),
    ("bubble_s", "pipeline bubble"),
    ("dp_comm_s", "data-parallel comm (exposed)"),
    ("optimizer_s", "optimizer step"),
    ("overhead_s", "framework overhead"),
)


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=110)


def describe_plan(row: Mapping[str, Any]) -> str:
    parts = [
        f"{int(row['num_gpus'])} GPUs",
        f"tp={int(row['tp'])}"
        + (f" cp={int(row['cp'])}" if int(row.get("cp", 1)) > 1 else "")
        + f" pp={int(row['pp'])} dp={int(row['dp'])}",
        f"mb={int(row['micro_batch'])} gb={int(row['global_batch'])}",
        f"recompute={row['recompute']}",
    ]
    if int(row.get("vpp", 1)) > 1:
        parts.append(f"vpp={int(row['vpp'])}")
    first, last = int(row.get("first_stage_layers", 0)), int(row.get("last_stage_layers", 0))
    if first or last:  # uneven pipeline stages: the first and last stages' layers
        parts.append(f"stages={first}/{last}")
    if int(row.get("ep", 1)) * int(row.get("etp", 1)) > 1:  # MoE: expert (tensor) parallelism
        parts.append(f"ep={int(row['ep'])} etp={int(row['etp'])}")
    if bool(row.get("sequence_parallel", False)):
        parts.append("sp")
    if int(row.get("zero", 0)):
        parts.append(f"zero={int(row['zero'])}")
    if not bool(row.get("dp_overlap", True)):
        parts.append("no-dp-overlap")
    if str(row.get("dtype", "")) == "fp8":  # a plan of a dtype dimension (search, chinchilla)
        parts.append("fp8")
    return " ".join(parts)


def breakdown_table(row: Mapping[str, Any], title: str = "Where one iteration goes") -> Table:
    total = float(row["iteration_time_s"])
    table = Table(title=title, title_justify="left")
    table.add_column("component")
    table.add_column("time", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    moe = int(row.get("ep", 1)) * int(row.get("etp", 1)) > 1  # the all-to-all is in tp_comm_s
    for key, label in BREAKDOWN:
        if moe and key == "tp_comm_s":
            label = "tensor/expert-parallel comm"
        value = float(denoise(float(row[key]), total))  # float noise and -0.0 print as 0
        share = value / total if total > 0 else 0.0
        table.add_row(label, format_duration(value), f"{share:6.1%}", "█" * round(share * 30))
    table.add_row("[b]iteration[/b]", f"[b]{format_duration(total)}[/b]", "100.0%", "")
    return table


def summary_table(row: Mapping[str, Any]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    mem, cap = float(row["memory_per_gpu_bytes"]), float(row["memory_capacity_bytes"])
    fits = "fits" if mem <= cap else "[red]does NOT fit[/red]"
    table.add_row(
        "memory per GPU", f"{format_bytes(mem)} of {format_bytes(cap)} ({mem / cap:.0%}, {fits})"
    )
    table.add_row(
        "  of which",
        f"weights+grads+optimizer {format_bytes(float(row['memory_states_bytes']))}, "
        f"activations {format_bytes(float(row['memory_activations_bytes']))}",
    )
    table.add_row("throughput", f"{float(row['tokens_per_s']):,.0f} tokens/s")
    table.add_row(
        "utilization",
        f"MFU {float(row['mfu']):.1%}, HFU {float(row['hfu']):.1%} "
        f"({float(row['tflops_per_gpu']):.0f} model / {float(row['hw_tflops_per_gpu']):.0f} "
        "hardware TFLOP/s per GPU)",
    )
    if "mfu_fp8_peak" in row and math.isfinite(float(row["mfu_fp8_peak"])):
        table.add_row(
            "",
            f"MFU against the bf16 peak (as NVIDIA reports FP8 training); "
            f"{float(row['mfu_fp8_peak']):.1%} of the fp8 peak",
        )
    if (
        "training_time_s" in row
        and row["training_time_s"] is not None
        and math.isfinite(float(row["training_time_s"]))
    ):
        table.add_row(
            "training run",
            f"{float(row['training_time_s']) / DAY_S:,.1f} days, "
            f"{float(row['gpu_hours']):,.0f} GPU-hours, {format_usd(float(row['cost_usd']))}",
        )
    if not bool(row["feasible"]):
        table.add_row("[red]feasible[/red]", f"[red]no: {row['reason']}[/red]")
    return table
