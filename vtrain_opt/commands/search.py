"""``search``: the fastest plan, the cheapest plan and the Pareto front under a budget."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.commands.common import (
    DEFAULT_GPU,
    add_json_arg,
    count,
    non_negative_int,
    positive_float,
    positive_int,
    price,
    print_json,
)
from vtrain_opt.commands.framework_args import (
    add_framework_args,
    check_torch_plan,
    framework_given,
    framework_kwargs,
)
from vtrain_opt.profiles import load_profile
from vtrain_opt.search.engine import AUTO_EXHAUSTIVE_MAX, OBJECTIVES, STRATEGIES, narrow, search
from vtrain_opt.search.exhaustive import raw_size
from vtrain_opt.search.limits import Limits
from vtrain_opt.search.optuna_search import DEFAULT_INNER, SAMPLERS, default_study_name
from vtrain_opt.search.ray_backend import cluster_address
from vtrain_opt.search.space import SearchSpace, gpu_choice
from vtrain_opt.search.spacefile import load_space
from vtrain_opt.search.trial_space import INNER_DIMS
from vtrain_opt.spec.hardware import get_gpu
from vtrain_opt.spec.model import load_model
from vtrain_opt.spec.setup import ATTENTION_KERNELS, DTYPES, Setup
from vtrain_opt.units import DAY_S, parse_budget, parse_duration_s

# --workers auto: Ray only for exhaustive spaces of at least this many raw combinations
# (~15 s in-process at the rate of benchmarks/bench_search.py); below, starting Ray (~6 s
# on a small machine) costs more than sharding saves.
RAY_AUTO_MIN_PLANS = 100_000_000
RESULTS_ROOT = Path("results")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="find the fastest and cheapest plans and the time-cost Pareto front",
        description="Search the plans of a model on one or more GPU types for the one that "
        "finishes soonest, the one that costs least, and the Pareto front between them, "
        "under a budget and limits. Writes pareto.csv, plans.parquet, best.json and "
        "pareto.png into --out.",
    )
    g = p.add_argument_group("what to search")
    g.add_argument(
        "--space",
        metavar="NAME|FILE",
        help="a shipped space (gpt3-175b, mt-nlg-530b, llama3-70b, llama3-405b) or a YAML file",
    )
    g.add_argument("--model", metavar="NAME|FILE", help="a catalog model or a model file")
    g.add_argument("--seq-len", type=positive_int, metavar="N", help="sequence length")
    g.add_argument(
        "--gpu",
        type=_names,
        metavar="NAME[,NAME...]",
        help="candidate GPU types (default: the space's, else a100-80gb)",
    )
    g.add_argument(
        "--tokens",
        type=count,
        metavar="N",
        help="training tokens, e.g. 300B (default: the space's)",
    )
    g.add_argument(
        "--global-batch",
        type=_ints,
        metavar="N[,N...]",
        help="global batch, or a set to choose from (default: the model's catalog value)",
    )
    g.add_argument(
        "--gpu-step",
        type=_step,
        metavar="N|node",
        help="GPU counts in multiples of N (default: whole nodes)",
    )
    for dim, meta, text in (
        ("tp", "N[,N...]", "tensor parallel sizes (default: powers of two up to the node)"),
        ("pp", "N[,N...]", "pipeline sizes (default: every divisor of the layers)"),
        ("micro-batch", "N[,N...]", "micro-batch sizes (default: powers of two)"),
        ("vpp", "N[,N...]", "virtual stages (default: 1 and each 2..8 the layers allow)"),
        ("zero", "N[,N...]", "ZeRO stages (default: 0,1,2,3)"),
    ):
        g.add_argument(f"--{dim}", type=_ints, metavar=meta, help=f"pin or list {text}")
    g.add_argument(
        "--recompute", type=_names, metavar="MODE[,MODE...]", help="none, selective, full"
    )
    g.add_argument("--sequence-parallel", choices=("on", "off", "both"), help="default: both")
    g.add_argument("--dp-overlap", choices=("on", "off", "both"), help="default: on")

    c = p.add_argument_group("cluster and device (one GPU type; several: use a space file)")
    c.add_argument("--price-per-gpu-hour", type=price, metavar="USD", help="USD per GPU-hour")
    c.add_argument("--gpus-per-node", type=positive_int, metavar="N", help="GPUs per node")
    c.add_argument(
        "--inter-node-gbps", type=positive_float, metavar="GBPS", help="per node, Gbit/s"
    )
    c.add_argument("--profile", metavar="NAME|FILE", help="device profile")
    c.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: bf16 if supported)")
    c.add_argument("--attention", choices=ATTENTION_KERNELS, help="attention kernel")
    add_framework_args(c)

    lim = p.add_argument_group("budget and limits")
    lim.add_argument(
        "--budget",
        type=_budget,
        metavar="AMOUNT",
        help="money ($2M, 2e6usd) or GPU time (1.5e6gpu-h)",
    )
    lim.add_argument(
        "--max-days", type=_days, metavar="DAYS", help="wall-clock limit (30, 30d, 12h)"
    )
    lim.add_argument("--max-gpus", type=positive_int, metavar="N", help="at most N GPUs")
    lim.add_argument("--min-gpus", type=positive_int, metavar="N", help="at least N GPUs")

    s = p.add_argument_group("objective and strategy")
    s.add_argument("--objective", choices=OBJECTIVES, default="pareto", help="default: pareto")
    s.add_argument("--strategy", choices=STRATEGIES, default="auto", help="default: auto")
    s.add_argument("--sampler", type=_sampler, default="tpe", help=f"{', '.join(SAMPLERS)}")
    s.add_argument("--trials", type=positive_int, default=400, help="Optuna trials (default 400)")
    s.add_argument(
        "--batch-size", type=positive_int, default=16, help="trials asked at once (default 16)"
    )
    s.add_argument("--seed", type=non_negative_int, default=0, help="sampler seed (default 0)")
    s.add_argument(
        "--inner",
        type=_inner,
        metavar="DIMS|none",
        help="dimensions each Optuna trial completes itself, taking its fastest feasible plan "
        f"(default: {','.join(DEFAULT_INNER)}; 'none': a trial is one plan)",
    )
    s.add_argument(
        "--storage",
        metavar="PATH|URL",
        help="Optuna storage: a journal file (default: OUT/study.journal; one search at a time) "
        "or an RDB URL (sqlite:///study.db, postgresql://USER@HOST/DB: several searches at "
        "once); the same command continues its study",
    )
    s.add_argument(
        "--study-name",
        metavar="NAME",
        help="the study in --storage (default: a hash of the inputs, sampler and seed); "
        "searches on several machines join one study by giving the same --storage and name",
    )
    r = p.add_argument_group("where it runs")
    r.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        metavar="N|auto",
        help="Ray workers; 0 runs in this process without Ray (default auto: Ray on every core "
        "only for exhaustive spaces over 100M raw combinations)",
    )
    r.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (HOST:PORT)")

    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="results folder (default results/<time>-<name>/)")
    o.add_argument(
        "--baseline",
        metavar="PLAN",
        help='your current plan, e.g. "tp=8,pp=35,dp=12,mb=1" (also gb, recompute, sp, vpp, '
        "zero, gpu): prints what the found plans save against it",
    )
    o.add_argument("--top", type=positive_int, default=8, help="front plans listed (default 8)")
    add_json_arg(p)
    p.set_defaults(func=run)


# ---- argparse types -------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more names separated by commas")
    return items


def _ints(text: str) -> list[int]:
    return [positive_int(t) if t.strip() != "0" else 0 for t in _names(text)]


def _step(text: str) -> int | None:
    return None if str(text).strip().lower() == "node" else positive_int(text)


def _budget(text: str) -> Any:
    if str(text).strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r}: a budget must be positive")
    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("budget: ")) from None


def _days(text: str) -> float:
    try:
        return parse_duration_s(text, "max days", default_unit="d") / DAY_S
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("max days: ")) from None


def _sampler(text: str) -> str:
    if text not in SAMPLERS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(SAMPLERS)}")
    return text


def _inner(text: str) -> tuple[str, ...]:
    if str(text).strip().lower() == "none":
        return ()
    names = tuple(_names(text))
    bad = [n for n in names if n not in INNER_DIMS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"{', '.join(bad)}: not an inner dimension; choose from {', '.join(INNER_DIMS)} or none"
        )
    return names


def _workers(text: str) -> int | str:
    return "auto" if str(text).strip() == "auto" else non_negative_int(text)


def _default_gpu(args: argparse.Namespace) -> str:
    """The GPU of --profile when one is given (so a profile is not applied to another GPU)."""
    return load_profile(args.profile).gpu if args.profile else DEFAULT_GPU


# ---- the command ------------------------------------------------------------------------------
def build_space(args: argparse.Namespace) -> SearchSpace:
    """The space from --space (with command-line overrides) or from --model and flags."""
    if args.space and args.model:
        raise ValueError("give --space or --model, not both (a space file names its model)")
    if not args.space and not args.model:
        raise ValueError("give --model NAME|FILE or --space NAME|FILE")
    gpus = None
    if args.gpu or args.price_per_gpu_hour or args.gpus_per_node or args.inter_node_gbps:
        names = args.gpu or (
            [g.name for g in load_space(args.space).gpus] if args.space else [_default_gpu(args)]
        )
        if len(names) > 1 and (args.price_per_gpu_hour or args.profile):
            raise ValueError(
                "--price-per-gpu-hour and --profile apply to a single GPU type; with several, "
                "set them per GPU in a space file"
            )
        gpus = [
            gpu_choice(
                n,
                price_per_gpu_hour_usd=args.price_per_gpu_hour,
                gpus_per_node=args.gpus_per_node,
                inter_node_gbps=args.inter_node_gbps,
                profile=args.profile,
            )
            for n in names
        ]
    elif args.profile:
        names = (
            [g.name for g in load_space(args.space).gpus] if args.space else [_default_gpu(args)]
        )
        if len(names) > 1:
            raise ValueError("--profile applies to a single GPU type; pick one with --gpu")
        gpus = [gpu_choice(names[0], profile=args.profile)]
    dims = {
        "global_batch": args.global_batch,
        "tp": args.tp,
        "pp": args.pp,
        "micro_batch": args.micro_batch,
        "recompute": args.recompute,
        "vpp": args.vpp,
        "zero": args.zero,
        "sequence_parallel": _switch(args.sequence_parallel),
        "dp_overlap": _switch(args.dp_overlap),
    }
    setup = None
    check_torch_plan(
        args.framework,
        tp=args.tp,
        pp=args.pp,
        vpp=args.vpp,
        sequence_parallel=args.sequence_parallel,
    )
    if args.dtype or args.attention or framework_given(args):
        # the flag not given takes what every candidate GPU supports (as make_context does)
        names = (
            [g.name for g in gpus]
            if gpus
            else ([g.name for g in load_space(args.space).gpus] if args.space else ["a100-80gb"])
        )
        chips = [get_gpu(n) for n in names]
        bf16 = all("bf16" in c.peak_flop_per_s for c in chips)
        flash = all(c.flash_attention for c in chips)
        setup = Setup(
            dtype=args.dtype or ("bf16" if bf16 else "fp16"),
            attention=args.attention or ("flash" if flash else "unfused"),
            **framework_kwargs(args),
        )
    if args.space:
        space = load_space(args.space)
        model = space.model.with_seq_length(args.seq_len) if args.seq_len else None
        return space.with_changes(
            model=model,
            gpus=tuple(gpus) if gpus else None,
            gpu_step=args.gpu_step,
            setup=setup,
            **dims,
        )
    model = load_model(args.model)
    if args.seq_len:
        model = model.with_seq_length(args.seq_len)
    return SearchSpace.create(
        model,
        gpus or ["a100-80gb"],
        min_gpus=args.min_gpus,
        max_gpus=args.max_gpus,
        gpu_step=args.gpu_step,
        setup=setup,
        **dims,
    )


def _switch(value: str | None) -> list[bool] | None:
    return {None: None, "on": [True], "off": [False], "both": [False, True]}[value]


def run(args: argparse.Namespace) -> int:
    space = build_space(args)
    tokens = args.tokens or space.tokens
    if tokens is None:
        raise ValueError("give --tokens (e.g. 300B): the space names no amount of training work")
    limits = Limits.from_budget(
        args.budget, max_days=args.max_days, min_gpus=args.min_gpus, max_gpus=args.max_gpus
    )
    narrowed = narrow(space, limits)
    raw = raw_size(narrowed)
    strategy = args.strategy
    if strategy == "auto":
        strategy = "exhaustive" if raw <= AUTO_EXHAUSTIVE_MAX else "optuna"
    args.ray_address = cluster_address(args.ray_address)  # RAY_ADDRESS counts as the flag
    workers = args.workers
    if workers == "auto":
        workers = (
            (os.cpu_count() or 1) if strategy == "exhaustive" and raw >= RAY_AUTO_MIN_PLANS else 0
        )
    baseline_plan = _parse_baseline(args.baseline, narrowed) if args.baseline else None

    out_dir = Path(args.out) if args.out else None
    storage = args.storage
    if strategy == "optuna" and storage is None:
        name = args.study_name or default_study_name(
            narrowed,
            tokens,
            limits,
            args.objective,
            args.sampler,
            args.seed,
            DEFAULT_INNER if args.inner is None else args.inner,
        )
        out_dir = out_dir or _previous_run(name) or _default_dir(space)
        storage = str(out_dir / "study.journal")

    from vtrain_opt.console import console

    # Ray prints some messages of its own (a worker that died, ...) on stdout: keep stdout
    # for --json (and for the final table) while the search runs
    with (
        _progress(enabled=sys.stderr.isatty() and not args.json) as tick,
        contextlib.redirect_stdout(sys.stderr),
    ):
        result = search(
            space,
            tokens,
            limits=limits,
            objective=args.objective,
            strategy=strategy,
            workers=workers,
            ray_address=args.ray_address,
            trials=args.trials,
            sampler=args.sampler,
            seed=args.seed,
            batch_size=args.batch_size,
            storage=storage,
            study_name=args.study_name,
            progress=tick,
            inner=args.inner,
        )

    baseline_row, savings = None, None
    if baseline_plan is not None:
        baseline_row = _evaluate_baseline(result, *baseline_plan)
        savings = _savings(result, baseline_row)

    if not result.ok:
        _report_infeasible(result, args.json)
        raise ValueError(f"no feasible plan ({result.limits.describe()}): {result.explain()}")

    from vtrain_opt.search.results import default_out_dir, row_dict, rows_list, write_results

    out_dir = out_dir or default_out_dir(result, RESULTS_ROOT)
    baseline_info = None
    if baseline_row is not None:
        baseline_info = {"plan": row_dict(baseline_row), "savings": savings}
    paths = write_results(
        result,
        out_dir,
        ["vtrain_opt", *sys.argv[1:]] if sys.argv else None,
        baseline_row,
        baseline_info,
    )

    if args.json:
        print_json(
            {
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
                "out": str(out_dir),
                "files": {k: str(v) for k, v in paths.items()},
                "baseline": baseline_info,
            }
        )
        return 0
    _print_summary(console(), result, args.top, baseline_row, savings, paths)
    return 0


# ---- output folder and study ------------------------------------------------------------------
def _default_dir(space: SearchSpace) -> Path:
    import datetime as _dt

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RESULTS_ROOT / f"{stamp}-{space.name or space.model.name}"


def _previous_run(study_name: str) -> Path | None:
    """The latest results folder whose journal holds this study (so re-running continues)."""
    if not RESULTS_ROOT.is_dir():
        return None
    for folder in sorted(RESULTS_ROOT.iterdir(), reverse=True):
        journal = folder / "study.journal"
        if journal.is_file() and f'"{study_name}"' in journal.read_text(errors="replace"):
            return folder
    return None


# ---- baseline ---------------------------------------------------------------------------------
def _parse_baseline(text: str, space: SearchSpace) -> tuple[int, list[Any]]:
    """The baseline's GPU index and plans (one per recompute mode when not given: auto)."""
    from vtrain_opt.spec.plan import RECOMPUTE_MODES, ParallelPlan

    fields: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--baseline: {part.strip()!r} is not KEY=VALUE (e.g. tp=8)")
        fields[key.strip().lower()] = value.strip()
    gpu = fields.pop("gpu", space.gpus[0].name)
    names = [g.name for g in space.gpus]
    if gpu not in names:
        raise ValueError(f"--baseline: gpu {gpu!r} is not in the space ({', '.join(names)})")
    fields.setdefault("gb", str(space.global_batch[0]))
    modes = [fields.pop("recompute")] if "recompute" in fields else list(RECOMPUTE_MODES)
    try:
        plans = [ParallelPlan.from_mapping({**fields, "recompute": m}) for m in modes]
        plans[0].validate(space.model)
    except ValueError as e:
        raise ValueError(f"--baseline: {e}") from None
    return names.index(gpu), plans


def _evaluate_baseline(result: Any, gpu_index: int, plans: list[Any]) -> pd.Series:
    from vtrain_opt.search.evaluate import evaluate, rows
    from vtrain_opt.spec.plan import PlanBatch

    ev = evaluate(
        result.space, gpu_index, PlanBatch.from_plans(plans), result.tokens, result.limits
    )
    df = rows(result.space, ev)
    fits = np.flatnonzero(df["fits_memory"].to_numpy())
    return df.iloc[int(fits[0]) if fits.size else len(df) - 1]


def _savings(result: Any, base: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, row in (("best_time", result.best_time), ("best_cost", result.best_cost)):
        if row is None:
            continue
        bt, bc = float(base["training_time_s"]), float(base["cost_usd"])
        t, c = float(row["training_time_s"]), float(row["cost_usd"])
        out[name] = {
            "time_saved_s": bt - t,
            "time_saved_fraction": (bt - t) / bt,
            "cost_saved_usd": bc - c,
            "cost_saved_fraction": (bc - c) / bc,
        }
    return out


# ---- printing ---------------------------------------------------------------------------------
class _progress:
    """A progress bar on stderr (only on a terminal); yields the callback for search()."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from vtrain_opt.console import console

        self._bar = Progress(
            TextColumn("searching"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"),
            TimeElapsedColumn(),
            console=console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("search", total=None)

        def tick(done: int, total: int) -> None:
            self._bar.update(self._task, completed=done, total=total)

        return tick

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def _print_summary(
    con: Any, result: Any, top: int, baseline: Any, savings: Any, paths: Any
) -> None:
    from vtrain_opt.console import breakdown_table

    space = result.space
    gpus = ", ".join(f"{g.name} (${g.price_per_gpu_hour_usd:g}/GPU-h)" for g in space.gpus)
    con.print(
        f"[b]{space.model.name}[/b] ({space.model.num_params() / 1e9:.0f}B params), "
        f"{result.tokens / 1e9:,.0f}B tokens on {gpus}; "
        f"{result.limits.describe()}"
    )
    size = f" of {result.space_size:,}" if result.space_size else ""
    trials = (
        f", {result.trials:,} trials ({result.sampler}, seed {result.seed})"
        if result.trials
        else ""
    )
    reasons = ", ".join(f"{n:,} {k}" for k, n in result.infeasible_reasons.items())
    con.print(
        f"{result.strategy}: {result.evaluated:,}{size} plans evaluated{trials} in "
        f"{result.elapsed_s:.1f} s ({result.backend}); {result.feasible:,} feasible"
        + (f"; rejected: {reasons}" if reasons else "")
    )
    con.print(_plans_table(result, top, baseline))
    con.print(
        breakdown_table(result.best_time, title="Where an iteration of the fastest plan goes")
    )
    if savings:
        for name, label in (("best_time", "fastest"), ("best_cost", "cheapest")):
            if savings.get(name):
                con.print(f"against the baseline, the {label} plan {_saving_text(savings[name])}")
    con.print(
        f"results in {paths['best'].parent}/ (pareto.csv, plans.parquet, best.json, pareto.png)"
    )


def _saving_text(s: dict[str, float]) -> str:
    from vtrain_opt.units import format_usd

    days = s["time_saved_s"] / DAY_S
    when = f"finishes {abs(days):,.1f} days {'sooner' if days >= 0 else 'later'}"
    money = "saves" if s["cost_saved_usd"] >= 0 else "costs"
    return (
        f"{when} ({-s['time_saved_fraction']:+.0%} time) and {money} "
        f"{format_usd(abs(s['cost_saved_usd']))} ({-s['cost_saved_fraction']:+.0%} cost)"
    )


def _plans_table(result: Any, top: int, baseline: Any) -> Any:
    from rich import box
    from rich.table import Table

    from vtrain_opt.units import format_usd

    table = Table(title="Best plans", title_justify="left", box=box.SIMPLE_HEAD)
    several = len(result.space.gpus) > 1
    for col in (
        "",
        "GPUs",
        "tp.pp.dp",
        "options",
        "days",
        "cost",
        "MFU",
        "mem GiB",
        "comm/bub/rc%",
    ):
        table.add_column(col, justify="left" if col in ("", "options") else "right", no_wrap=True)
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
    for label, row in picked:
        t = float(row["iteration_time_s"])
        comm = float(row["tp_comm_s"]) + float(row["pp_comm_s"]) + float(row["dp_comm_s"])
        mem, cap = float(row["memory_per_gpu_bytes"]), float(row["memory_capacity_bytes"])
        table.add_row(
            label if bool(row["feasible"]) else f"{label} [red]({row['reason']})[/red]",
            f"{int(row['num_gpus']):,}" + (f" {row['gpu']}" if several else ""),
            f"{int(row['tp'])}.{int(row['pp'])}.{int(row['dp'])}",
            f"mb{int(row['micro_batch'])} {_options(row)}",
            f"{float(row['training_time_s']) / DAY_S:,.1f}",
            format_usd(float(row["cost_usd"])),
            f"{float(row['mfu']):.1%}",
            f"{mem / 2**30:.0f}/{cap / 2**30:.0f}",
            f"{100 * comm / t:.0f}/{100 * float(row['bubble_s']) / t:.0f}/"
            f"{100 * float(row['recompute_s']) / t:.0f}",
        )
    return table


def _options(row: pd.Series) -> str:
    parts = [str(row["recompute"])]
    if bool(row["sequence_parallel"]):
        parts.append("sp")
    if int(row["vpp"]) > 1:
        parts.append(f"vpp{int(row['vpp'])}")
    if int(row["zero"]):
        parts.append(f"z{int(row['zero'])}")
    if not bool(row["dp_overlap"]):
        parts.append("no-overlap")
    return " ".join(parts)


def _plan_text(row: pd.Series) -> str:
    return (
        f"tp={int(row['tp'])} pp={int(row['pp'])} dp={int(row['dp'])} "
        f"mb={int(row['micro_batch'])} gb={int(row['global_batch'])} recompute={_options(row)}"
    )


def _report_infeasible(result: Any, as_json: bool) -> None:
    from vtrain_opt.search.results import rows_list

    if as_json:
        print_json(
            {
                "ok": False,
                "error": result.explain(),
                "binding": result.binding,
                "closest": rows_list(result.closest),
                "evaluated": result.evaluated,
                "reason_counts": result.reason_counts,
            }
        )
        return
    if len(result.closest):
        from vtrain_opt.console import console

        con = console(stderr=True)
        con.print("closest plans:")
        for _, row in result.closest.iterrows():
            con.print(
                f"  {int(row['num_gpus']):,} {row['gpu']}  {_plan_text(row)}: "
                f"{float(row['training_time_s']) / DAY_S:,.1f} days, ${float(row['cost_usd']) / 1e6:,.2f}M, "
                f"memory {float(row['memory_per_gpu_bytes']) / float(row['memory_capacity_bytes']):.0%}"
            )
