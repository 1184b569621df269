"""``chinchilla``: the compute-optimal model size and tokens for a real budget."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from vtrain_opt.commands.common import (
    add_cluster_args,
    add_json_arg,
    add_setup_args,
    count,
    non_negative_int,
    positive_float,
    positive_int,
    print_json,
    resolve_cluster,
)
from vtrain_opt.commands.framework_args import framework_given, framework_kwargs
from vtrain_opt.console import console
from vtrain_opt.search.ray_backend import cluster_address
from vtrain_opt.search.reporting.page import REPORT_NEEDS_OUT
from vtrain_opt.spec.model import FAMILIES
from vtrain_opt.studies.chinchilla import DEFAULT_MONEY_MAX_GPUS, StudyConfig
from vtrain_opt.studies.chinchilla.config import budgets_from, study_config
from vtrain_opt.studies.chinchilla.results import default_out, run_to_folder
from vtrain_opt.studies.chinchilla.tables import report
from vtrain_opt.studies.lossfit import DEFAULT_FIT
from vtrain_opt.studies.progress import Progress
from vtrain_opt.studies.shapes import ShapeRules, parse_ladder


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

    m = p.add_argument_group("model family and shape rules (see docs/commands/chinchilla.md)")
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
        "--num-experts",
        type=positive_int,
        metavar="E",
        help="MoE shapes: every MLP becomes E experts of ffn / top-k; sizes and the loss law "
        "count active parameters (dense-equivalent); searched over ep (default: dense)",
    )
    m.add_argument(
        "--moe-top-k",
        type=positive_int,
        default=2,
        metavar="K",
        help="with --num-experts: experts per token (default 2)",
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
    run.add_argument(
        "--report",
        action="store_true",
        help="also write report.html: loss against size at the budget with the real and ideal "
        "optima, every size's plan in its hover, and the inputs (one self-contained file)",
    )
    add_setup_args(p, dtype_list=True)
    p.add_argument(
        "--stage-layers",
        metavar="even|auto|F,L",
        help="pipeline split of every size's plans: even (default), auto (even and uneven "
        "variants) or F,L (first and last stage layers)",
    )
    p.add_argument(
        "--cp",
        type=_ints,
        metavar="N[,N...]",
        help="context-parallel sizes every size's search tries (default 1; each splits the "
        "sequence into 2*cp chunks)",
    )
    add_json_arg(p)
    p.set_defaults(func=run_command)


def _ints(text: str) -> list[int]:
    return [positive_int(t) for t in str(text).split(",") if t.strip()]


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
def config_from(args: argparse.Namespace) -> StudyConfig:
    budgets = budgets_from(
        num_gpus=args.num_gpus,
        days=args.days,
        budget=args.budget,
        max_days=args.max_days,
        max_gpus=args.max_gpus,
        budget_list=args.budgets,
    )
    cluster = resolve_cluster(args)
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
        num_experts=args.num_experts,
        moe_router_topk=args.moe_top_k,
    )
    return study_config(
        budgets,
        cluster,
        rules,
        profile=args.profile,
        loss_fit=args.loss_fit,
        min_params=args.min_params,
        max_params=args.max_params,
        num_sizes=args.num_sizes,
        ideal_mfu=args.ideal_mfu,
        tokens_per_param_rule=args.tokens_per_param,
        min_tokens_per_param=args.min_tokens_per_param,
        min_gpus=args.min_gpus,
        max_gpus=args.max_gpus,
        dtype=args.dtype,
        stage_layers=args.stage_layers,
        cp=args.cp,
        attention=args.attention,
        framework=framework_kwargs(args) if framework_given(args) else None,
    )


# ---- running ---------------------------------------------------------------------------------
def run_command(args: argparse.Namespace) -> int:
    if args.report and args.json and not args.out:
        raise ValueError(REPORT_NEEDS_OUT)
    config = config_from(args)
    out = Path(args.out) if args.out else default_out(config)
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
        if done == total:  # every size searched: the bar goes before the files are written
            bar[0].close()

    try:
        # Ray prints some messages (a worker that died, ...) on stdout: keep it for --json
        with contextlib.redirect_stdout(sys.stderr):
            saved = run_to_folder(
                config,
                out,
                workers=workers,
                ray_address=args.ray_address,
                progress=progress,
                plots_too=not args.no_plots,
                report=args.report,
                command=["vtrain_opt", *sys.argv[1:]] if sys.argv else None,
            )
    finally:
        for b in bar:
            b.close()
    if args.json:
        print_json(saved.doc)
    else:
        con = console()
        for part in report(saved.result, saved.files):
            con.print(part)
        sys.stdout.flush()
    return 0
