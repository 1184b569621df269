"""``chinchilla``: the compute-optimal model size and tokens for a real budget."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from vtrain_opt.commands.common import (
    add_cluster_args,
    add_json_arg,
    add_setup_args,
    count,
    jsonable,
    non_negative_int,
    positive_float,
    positive_int,
    print_json,
    resolve_cluster,
)
from vtrain_opt.commands.framework_args import framework_given, framework_kwargs
from vtrain_opt.console import console
from vtrain_opt.io import write_json_atomic, write_with
from vtrain_opt.search.ray_backend import cluster_address
from vtrain_opt.search.space import GpuChoice
from vtrain_opt.sim.step import make_context
from vtrain_opt.spec.model import FAMILIES
from vtrain_opt.spec.setup import Setup
from vtrain_opt.studies import plots
from vtrain_opt.studies.chinchilla import (
    DEFAULT_MONEY_MAX_GPUS,
    StudyBudget,
    StudyConfig,
    StudyResult,
    frontier_frame,
    run_study,
)
from vtrain_opt.studies.lossfit import DEFAULT_FIT, parse_loss_fit
from vtrain_opt.studies.progress import Progress
from vtrain_opt.studies.shapes import ShapeRules, parse_ladder
from vtrain_opt.units import format_count, format_usd, parse_budget, parse_duration_s


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chinchilla",
        help="compute-optimal model size and tokens under a real budget",
        description="For every candidate model size, find its best plan on the budget's GPUs, "
        "hence the tokens the budget trains and the predicted loss; report the loss-minimizing "
        "size beside the idealized (constant-utilization) answer.",
    )
    b = p.add_argument_group("budget: a fixed cluster for a time, or money / GPU-hours")
    b.add_argument("--num-gpus", type=positive_int, metavar="N", help="fixed cluster size")
    b.add_argument("--days", metavar="T", help="wall-clock time on the fixed cluster: 30, 30d, 2w")
    b.add_argument("--budget", metavar="B", help="money ($5M, 2e6usd) or GPU time (1.5e6gpu-h)")
    b.add_argument("--max-days", metavar="T", help="with --budget: the run must finish within T")
    b.add_argument(
        "--budgets",
        metavar="LIST",
        help="several budgets (comma-separated) for the compute-optimal frontier: durations "
        "with --num-gpus (7d,30d,90d), else money or GPU time ($1M,$5M,$20M)",
    )
    b.add_argument(
        "--max-gpus",
        type=positive_int,
        metavar="N",
        help=f"with --budget: the most GPUs a plan may use (default {DEFAULT_MONEY_MAX_GPUS})",
    )
    b.add_argument(
        "--min-gpus", type=positive_int, metavar="N", help="the fewest GPUs a plan may use"
    )
    add_cluster_args(p)

    m = p.add_argument_group("model family and shape rules (see the README)")
    m.add_argument("--family", choices=FAMILIES, default="gpt", help="gpt (default) or llama")
    m.add_argument(
        "--min-params", type=count, default=0.5e9, metavar="N", help="smallest size (0.5B)"
    )
    m.add_argument("--max-params", type=count, default=1e12, metavar="N", help="largest size (1T)")
    m.add_argument(
        "--num-sizes",
        type=positive_int,
        default=24,
        metavar="K",
        help="sizes tried, log-spaced (24)",
    )
    m.add_argument(
        "--hidden-ladder",
        metavar="LIST",
        help="hidden sizes allowed: 1024,2048,... or START:STOP:STEP (default: 512-steps to "
        "4096, then 1024-steps to 32768)",
    )
    m.add_argument(
        "--aspect-ratio",
        type=positive_float,
        default=128.0,
        metavar="R",
        help="hidden / layers (128)",
    )
    m.add_argument(
        "--head-size", type=positive_int, default=128, metavar="N", help="head dimension (128)"
    )
    m.add_argument(
        "--layer-multiple",
        type=positive_int,
        default=8,
        metavar="N",
        help="layers are a multiple of this (8)",
    )
    m.add_argument(
        "--kv-heads",
        type=positive_int,
        metavar="N",
        help="kv heads (default: 8 for llama, all for gpt)",
    )
    m.add_argument(
        "--vocab",
        type=positive_int,
        metavar="N",
        help="vocabulary (default 51200 gpt, 32000 llama)",
    )
    m.add_argument(
        "--seq-len", type=positive_int, default=2048, metavar="N", help="sequence length (2048)"
    )
    m.add_argument(
        "--batch-tokens-at-1b",
        type=count,
        default=float(2**20),
        metavar="N",
        help="token batch of a 1B model (default 2^20); it grows as (N/1B)^exponent",
    )
    m.add_argument(
        "--batch-exponent",
        type=float,
        default=0.25,
        metavar="X",
        help="growth of the token batch with N (0.25)",
    )
    m.add_argument(
        "--global-batch", type=positive_int, metavar="N", help="sequences per batch for every size"
    )

    law = p.add_argument_group("loss law and the ideal answer")
    law.add_argument(
        "--loss-fit",
        default=DEFAULT_FIT,
        metavar="FIT",
        help="epoch (default: Besiroglu et al. 2024's refit, ~20 tokens/param), hoffmann "
        "(Hoffmann et al. 2022's Approach 3; note: its published fit disagrees with the "
        "paper's Approaches 1 and 2 and favours ~100 tokens/param), constants "
        "E=..,A=..,B=..,alpha=..,beta=.. or a YAML/JSON file",
    )
    law.add_argument(
        "--ideal-mfu",
        type=_fraction,
        default=1.0,
        metavar="U",
        help="utilization of the ideal (1.0 or 100%%)",
    )
    law.add_argument(
        "--tokens-per-param",
        type=positive_float,
        default=20.0,
        metavar="R",
        help="the rule of thumb (20)",
    )
    law.add_argument(
        "--min-tokens-per-param",
        type=float,
        default=1.0,
        metavar="R",
        help="a size needs at least R tokens per parameter to count (1: the law's data range)",
    )

    run = p.add_argument_group("run")
    run.add_argument(
        "--workers",
        type=non_negative_int,
        metavar="N",
        help="Ray workers (default: every core; 0: in this process, no Ray)",
    )
    run.add_argument("--ray-address", metavar="ADDR", help="join a Ray cluster (HOST:PORT or auto)")
    run.add_argument("--out", metavar="DIR", help="folder for the results and plots")
    run.add_argument("--no-plots", action="store_true", help="do not draw the plots")
    add_setup_args(p)
    add_json_arg(p)
    p.set_defaults(func=run_command)


def _fraction(text: str) -> float:
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction; write 0.4 or 40%") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1] (or 1% to 100%)")
    return value


# ---- building the study ---------------------------------------------------------------------
def budgets_from(args: argparse.Namespace) -> tuple[StudyBudget, ...]:
    if args.budgets and (args.days or args.budget):
        raise ValueError("give --budgets alone, or one --days / --budget")
    if args.days and args.budget:
        raise ValueError(
            "give either a fixed cluster (--num-gpus N --days T) or a budget (--budget $5M), not both"
        )
    fixed = args.num_gpus is not None
    if fixed and args.budget:
        raise ValueError(
            "--budget with --num-gpus: a money budget chooses the GPU count itself; use "
            "--max-gpus to cap it, or --num-gpus with --days for a fixed cluster"
        )
    if fixed and args.max_days:
        raise ValueError("--max-days goes with --budget; with --num-gpus give --days")
    if fixed and args.max_gpus:
        raise ValueError(
            "--max-gpus goes with --budget; with a fixed cluster --num-gpus is the cap"
        )
    texts = _split(args.budgets) if args.budgets else [args.days or args.budget]
    if texts == [None] or not texts:
        raise ValueError(
            "give a budget: --num-gpus N --days T (fixed cluster), --budget $5M or 1.5e6gpu-h, "
            "or --budgets LIST"
        )
    if fixed:
        return tuple(
            StudyBudget(num_gpus=args.num_gpus, time_s=parse_duration_s(t, "--days")) for t in texts
        )
    if args.days:
        raise ValueError("--days needs --num-gpus (a fixed cluster); with money use --max-days")
    limit = parse_duration_s(args.max_days, "--max-days") if args.max_days else None
    out = []
    for t in texts:
        b = parse_budget(t)
        out.append(StudyBudget(usd=b.usd, gpu_hours=b.gpu_hours, time_s=limit))
    return tuple(out)


def _split(text: str) -> list[str]:
    # money like $1,000,000 keeps its commas when followed by three digits
    parts = re.split(r",(?!\d{3}(?:\D|$))", text)
    out = [p.strip() for p in parts if p.strip()]
    if not out:
        raise ValueError("--budgets: give at least one value")
    return out


def config_from(args: argparse.Namespace) -> StudyConfig:
    budgets = budgets_from(args)
    cluster = resolve_cluster(args)
    gpu = GpuChoice(name=cluster.gpu.name, cluster=cluster, profile=args.profile)
    rules = ShapeRules(
        family=args.family,
        **({"hidden_ladder": parse_ladder(args.hidden_ladder)} if args.hidden_ladder else {}),
        aspect_ratio=args.aspect_ratio,
        head_size=args.head_size,
        layer_multiple=args.layer_multiple,
        vocab_size=args.vocab,
        seq_length=args.seq_len,
        kv_heads=args.kv_heads,
        batch_tokens_at_1b=args.batch_tokens_at_1b,
        batch_exponent=args.batch_exponent,
        global_batch=args.global_batch,
    )
    setup = None
    if args.dtype or args.attention or framework_given(args):  # the rest: the GPU's default
        probe = rules.for_params(args.min_params)
        default = make_context(probe, cluster, gpu.profile).setup
        setup = Setup(
            dtype=args.dtype or default.dtype,
            attention=args.attention or default.attention,
            **framework_kwargs(args),
        )
    if args.min_params > args.max_params:
        raise ValueError(
            f"--min-params {format_count(args.min_params)} is above --max-params "
            f"{format_count(args.max_params)}"
        )
    return StudyConfig(
        gpu=gpu,
        budgets=budgets,
        rules=rules,
        fit=parse_loss_fit(args.loss_fit),
        setup=setup,
        min_params=args.min_params,
        max_params=args.max_params,
        num_sizes=args.num_sizes,
        ideal_mfu=args.ideal_mfu,
        tokens_per_param_rule=args.tokens_per_param,
        min_tokens_per_param=args.min_tokens_per_param,
        min_gpus=args.min_gpus,
        max_gpus=args.max_gpus,
    )


def default_out(config: StudyConfig) -> Path:
    first = config.budgets[0]
    if first.fixed_cluster:
        label = f"{first.num_gpus}gpus-" + "-".join(f"{b.value:g}d" for b in config.budgets)
    else:
        label = "-".join(_slug(b.label()) for b in config.budgets)
    return (
        Path("results") / "chinchilla" / _slug(f"{config.gpu.name}-{config.rules.family}-{label}")
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


# ---- running ---------------------------------------------------------------------------------
def run_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    out = Path(args.out) if args.out else default_out(config)
    _check_out(out)
    args.ray_address = cluster_address(args.ray_address)  # RAY_ADDRESS counts as the flag
    workers = args.workers
    if workers is None:  # every local core; on a cluster (--ray-address) every CPU of it
        workers = 0 if args.ray_address else (os.cpu_count() or 1)
    bar: list[Progress] = []

    def progress(done: int, total: int) -> None:
        if done == 0:
            bar.append(Progress("chinchilla: sizes searched", total))
        else:
            bar[0].advance()

    try:
        # Ray prints some messages (a worker that died, ...) on stdout: keep it for --json
        with contextlib.redirect_stdout(sys.stderr):
            result = run_study(
                config, workers=workers, ray_address=args.ray_address, progress=progress
            )
    finally:
        for b in bar:
            b.close()
    doc = to_json(result)
    files = write_results(result, doc, out, plots_too=not args.no_plots)
    doc["files"] = {k: str(v) for k, v in files.items()}
    write_json_atomic(out / "study.json", jsonable(doc))
    if args.json:
        print_json(doc)
    else:
        show(result, files)
    return 0


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create the folder ({e.strerror})") from None


def write_results(
    result: StudyResult, doc: dict[str, Any], out: Path, plots_too: bool = True
) -> dict[str, Path]:
    files: dict[str, Path] = {"study": out / "study.json"}
    frames = []
    for a in result.answers:
        f = a.candidates.copy()
        f.insert(0, "budget", a.budget.label())
        frames.append(f)
    table = pd.concat(frames, ignore_index=True)
    for col in table.columns:
        if isinstance(table[col].dtype, pd.CategoricalDtype):
            table[col] = table[col].astype(str)
    files["candidates_csv"] = out / "candidates.csv"
    write_with(files["candidates_csv"], lambda p: table.to_csv(p, index=False))
    files["candidates_parquet"] = out / "candidates.parquet"
    write_with(files["candidates_parquet"], lambda p: table.to_parquet(p, index=False))
    if plots_too:
        files["loss_vs_size"] = plots.loss_vs_size(result, out / "loss_vs_size.png")
        if len(result.answers) > 1:
            files["frontier"] = plots.frontier(
                frontier_frame(result), out / "frontier.png", result.config.gpu.name
            )
    return files


def to_json(result: StudyResult) -> dict[str, Any]:
    cfg = result.config
    main = result.main

    def answer(a: Any) -> dict[str, Any]:
        return {
            "budget": a.budget.to_dict(),
            "optimal": a.optimal,
            "ideal": a.ideal,
            "law_at_real_mfu": a.at_real_mfu,
            "gap": a.gap,
            "notes": a.notes,
            "candidates": a.candidates.to_dict(orient="records"),
        }

    doc: dict[str, Any] = {
        "gpu": cfg.gpu.name,
        "price_per_gpu_hour_usd": cfg.gpu.price_per_gpu_hour_usd,
        "dtype": result.dtype,
        "peak_flop_per_s": result.peak_flop_per_s,
        "budget": main.budget.to_dict(),
        "loss_fit": cfg.law.to_dict(),
        "shape_rules": cfg.rules.to_dict(),
        "sizes": {"min": cfg.min_params, "max": cfg.max_params, "count": cfg.num_sizes},
        "min_tokens_per_param": cfg.min_tokens_per_param,
        "optimal": main.optimal,
        "ideal": main.ideal,
        "law_at_real_mfu": main.at_real_mfu,
        "gap": main.gap,
        "notes": main.notes,
        "candidates": main.candidates.to_dict(orient="records"),
        "elapsed_s": result.elapsed_s,
        "backend": result.backend,
        "workers": result.workers,
    }
    if len(result.answers) > 1:
        doc["frontier"] = [answer(a) for a in result.answers]
    return jsonable(doc)


def show(result: StudyResult, files: dict[str, Path]) -> None:
    con = console()
    for a in result.answers:
        con.print(_candidates_table(a))
        con.print(_answer_table(result, a))
        for note in a.notes:
            con.print(f"[yellow]note:[/yellow] {note}")
    if len(result.answers) > 1:
        con.print(_frontier_table(result))
    con.print(
        f"{len(result.main.candidates)} sizes searched in {result.elapsed_s:.1f} s "
        f"({result.backend}, {result.workers} workers); results in {files['study'].parent}"
    )
    sys.stdout.flush()


def _candidates_table(a: Any) -> Table:
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


def _answer_table(result: StudyResult, a: Any) -> Table:
    o, i = a.optimal, a.ideal
    t = Table(title=f"Compute-optimal answer, {a.budget.label()}", title_justify="left")
    for col in ("", "params N", "tokens D", "tok/param", "loss", "MFU", "days", "cost"):
        t.add_column(col, justify="left" if col == "" else "right")
    t.add_row(
        "[b]real plans (N*)[/b]",
        format_count(o["params"]),
        format_count(o["tokens"]),
        f"{o['tokens_per_param']:.3g}",
        f"{o['loss']:.4f}",
        f"{o['mfu']:.1%}",
        f"{o['days']:.3g}",
        format_usd(o["cost_usd"]),
    )
    t.add_row(
        f"ideal: law optimum at MFU {i['mfu']:.0%}",
        format_count(i["params"]),
        format_count(i["tokens"]),
        f"{i['tokens_per_param']:.3g}",
        f"{i['loss']:.4f}",
        f"{i['mfu']:.0%}",
        "",
        "",
    )
    m = a.at_real_mfu
    t.add_row(
        f"law optimum at N*'s MFU {m['mfu']:.1%}",
        format_count(m["params"]),
        format_count(m["tokens"]),
        f"{m['tokens_per_param']:.3g}",
        f"{m['loss']:.4f}",
        f"{m['mfu']:.1%}",
        "",
        "",
    )
    r = i["rule"]
    t.add_row(
        f"ideal: {r['tokens_per_param']:g} tokens/param rule",
        format_count(r["params"]),
        format_count(r["tokens"]),
        f"{r['tokens_per_param']:.3g}",
        f"{r['loss']:.4f}",
        f"{i['mfu']:.0%}",
        "",
        "",
    )
    for key, name in (("law", "law-optimal size"), ("rule", "rule size")):
        real = i[key]["real"]
        if real["status"] == "no plan":
            continue
        t.add_row(
            f"the {name} on real plans",
            format_count(real["params"]),
            format_count(real["tokens"]),
            f"{real['tokens_per_param']:.3g}",
            f"{real['loss']:.4f}",
            f"{real['mfu']:.1%}",
            "",
            "",
        )
    g = a.gap
    t.caption = (
        f"plan of N*: {_plan(o['plan'])}; N* / ideal N = {g['params_ratio']:.2f}, "
        f"D* / ideal D = {g['tokens_ratio']:.2f}, loss {g['loss_delta']:+.4f}; at N*'s MFU: "
        f"N* / law N = {g['params_ratio_at_real_mfu']:.2f}, D* / law D = "
        f"{g['tokens_ratio_at_real_mfu']:.2f}, loss {g['loss_delta_at_real_mfu']:+.4f}; "
        f"6ND / budget's peak FLOPs = {g['utilization_6nd']:.1%}; law: {result.config.law.name}"
    )
    return t


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


def _plan(p: dict[str, Any]) -> str:
    parts = [
        f"{p['num_gpus']} GPUs",
        f"tp={p['tp']} pp={p['pp']} dp={p['dp']}",
        f"mb={p['micro_batch']} gb={p['global_batch']}",
        f"recompute={p['recompute']}",
    ]
    if p["vpp"] > 1:
        parts.append(f"vpp={p['vpp']}")
    if p["sequence_parallel"]:
        parts.append("sp")
    if p["zero"]:
        parts.append(f"zero={p['zero']}")
    return " ".join(parts)
