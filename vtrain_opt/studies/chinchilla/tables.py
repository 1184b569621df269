"""The text report of a compute-optimal study (rich tables): the candidates and the answer
of every budget, the frontier of several; the command prints what ``report`` returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.table import Table

from vtrain_opt.console import describe_plan
from vtrain_opt.studies.chinchilla.results import frontier_frame
from vtrain_opt.studies.chinchilla.study import BudgetAnswer, StudyResult
from vtrain_opt.units import format_count, format_usd


def report(result: StudyResult, files: dict[str, Path]) -> list[RenderableType]:
    """Everything the command prints without ``--json``, in order."""
    out: list[RenderableType] = []
    for a in result.answers:
        out.append(_candidates_table(a))
        out.append(_answer_table(result, a))
        for note in a.notes:
            out.append(f"[yellow]note:[/yellow] {note}")
    if len(result.answers) > 1:
        out.append(_frontier_table(result))
    out.append(
        f"{len(result.main.candidates)} sizes searched in {result.elapsed_s:.1f} s "
        f"({result.backend}, {result.workers} workers); results in {files['study'].parent}"
    )
    return out


def _candidates_table(a: BudgetAnswer) -> Table:
    t = Table(title=f"Candidate sizes, {a.budget.label()}", title_justify="left")
    for col in (
        "params",
        "layers x hidden",
        "batch",
        "plan",
        "MFU",
        "tokens",
        "tok/param",
        "loss",
        "",
    ):
        t.add_column(col, justify="left" if col in ("plan", "") else "right")
    best = a.optimal["params"]
    for _, r in a.candidates.iterrows():
        mark = "[b]N*[/b]" if r["params"] == best else ("" if r["status"] == "ok" else r["status"])
        if r["status"] == "no plan":
            t.add_row(
                format_count(r["params"]),
                f"{r['num_layers']} x {r['hidden_size']}",
                str(r["global_batch"]),
                "-",
                "-",
                "-",
                "-",
                "-",
                "no plan",
            )
            continue
        plan = f"{int(r['num_gpus'])}: tp{int(r['tp'])} pp{int(r['pp'])} dp{int(r['dp'])}"
        t.add_row(
            format_count(r["params"]),
            f"{r['num_layers']} x {r['hidden_size']}",
            str(int(r["global_batch"])),
            plan,
            f"{r['mfu']:.1%}",
            format_count(r["tokens"]),
            f"{r['tokens_per_param']:.3g}",
            f"{r['loss']:.4f}",
            mark,
        )
    return t


def _answer_table(result: StudyResult, a: BudgetAnswer) -> Table:
    o, i = a.optimal, a.ideal
    t = Table(title=f"Compute-optimal answer, {a.budget.label()}", title_justify="left")
    for col in ("", "params N", "tokens D", "tok/param", "loss", "MFU", "days", "cost"):
        t.add_column(col, justify="left" if col == "" else "right")
    days, cost = f"{o['days']:.3g}", format_usd(o["cost_usd"])
    t.add_row(*_answer_row("[b]real plans (N*)[/b]", o, f"{o['mfu']:.1%}", days, cost))
    ideal_mfu = f"{i['mfu']:.0%}"
    t.add_row(*_answer_row(f"ideal: law optimum at MFU {ideal_mfu}", i, ideal_mfu))
    m = a.at_real_mfu
    t.add_row(*_answer_row(f"law optimum at N*'s MFU {m['mfu']:.1%}", m, f"{m['mfu']:.1%}"))
    r = i["rule"]
    t.add_row(*_answer_row(f"ideal: {r['tokens_per_param']:g} tokens/param rule", r, ideal_mfu))
    for key, name in (("law", "law-optimal size"), ("rule", "rule size")):
        real = i[key]["real"]
        if real["status"] == "no plan":
            continue
        t.add_row(*_answer_row(f"the {name} on real plans", real, f"{real['mfu']:.1%}"))
    g = a.gap
    t.caption = (
        f"plan of N*: {describe_plan(o['plan'])}; N* / ideal N = {g['params_ratio']:.2f}, "
        f"D* / ideal D = {g['tokens_ratio']:.2f}, loss {g['loss_delta']:+.4f}; at N*'s MFU: "
        f"N* / law N = {g['params_ratio_at_real_mfu']:.2f}, D* / law D = "
        f"{g['tokens_ratio_at_real_mfu']:.2f}, loss {g['loss_delta_at_real_mfu']:+.4f}; "
        f"6ND / budget's peak FLOPs = {g['utilization_6nd']:.1%}; law: {result.config.law.name}"
    )
    return t


def _answer_row(
    label: str, x: dict[str, Any], mfu: str, days: str = "", cost: str = ""
) -> tuple[str, ...]:
    """One row of the answer table: an answer's N, D, tokens per parameter and loss (every
    row alike); ``mfu`` as its row shows it (the ideal's whole percent), days and cost only
    where a real plan spends them."""
    return (
        label,
        format_count(x["params"]),
        format_count(x["tokens"]),
        f"{x['tokens_per_param']:.3g}",
        f"{x['loss']:.4f}",
        mfu,
        days,
        cost,
    )


def _frontier_table(result: StudyResult) -> Table:
    f = frontier_frame(result)
    t = Table(title="Compute-optimal frontier", title_justify="left")
    cols = ("budget", "N*", "D*", "tok/param", "MFU", "ideal N", "ideal D", "ideal tok/param")
    for col in (*cols, "law N at MFU", "law D at MFU"):
        t.add_column(col, justify="right")
    for _, r in f.iterrows():
        t.add_row(
            r["label"],
            format_count(r["params"]),
            format_count(r["tokens"]),
            f"{r['tokens_per_param']:.3g}",
            f"{r['mfu']:.1%}",
            format_count(r["ideal_params"]),
            format_count(r["ideal_tokens"]),
            f"{r['ideal_tokens_per_param']:.3g}",
            format_count(r["real_mfu_law_params"]),
            format_count(r["real_mfu_law_tokens"]),
        )
    return t
