"""``search``: the fastest plan, the cheapest plan and the Pareto front under a budget."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

from vtrain_opt.commands.common import (
    NVLINK_DOMAIN_HELP,
    add_json_arg,
    count,
    non_negative_int,
    positive_float,
    positive_int,
    price,
    print_json,
)
from vtrain_opt.commands.framework_args import add_framework_args
from vtrain_opt.search.engine import OBJECTIVES, STRATEGIES, Progress
from vtrain_opt.search.optuna_search import DEFAULT_INNER, SAMPLERS
from vtrain_opt.search.reporting.page import REPORT_NEEDS_OUT
from vtrain_opt.search.request import SearchRequest, SearchRun, run_search
from vtrain_opt.search.summary import (
    closest_lines,
    headline,
    infeasible_document,
    plans_table,
    run_document,
    saving_lines,
)
from vtrain_opt.search.trial_space import INNER_DIMS
from vtrain_opt.spec.setup import ATTENTION_KERNELS, DTYPES
from vtrain_opt.units import DAY_S, parse_budget, parse_duration_s


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="find the fastest and cheapest plans and the time-cost Pareto front",
        description="Search the plans of a model on one or more GPU types for the one that "
        "finishes soonest, the one that costs least, and the Pareto front between them, "
        "under a budget and limits. Writes pareto.csv, plans.parquet, best.json and "
        "pareto.png into --out (and report.html with --report).",
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
        ("cp", "N[,N...]", "context parallel sizes: the sequence over cp GPUs (default: 1)"),
        ("ep", "N[,N...]", "expert parallel sizes of a MoE model (default: 1)"),
        ("etp", "N[,N...]", "expert tensor parallel sizes of a MoE model (default: 1)"),
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
    g.add_argument(
        "--stage-layers",
        metavar="even|auto|F,L",
        help="pipeline split: even (default), auto (even and uneven variants: first/last "
        "stages one or two layers lighter than the middle) or F,L (first and last stage "
        "layers, 0 for an even share); results carry first_stage_layers, last_stage_layers",
    )

    c = p.add_argument_group("cluster and device (one GPU type; several: use a space file)")
    c.add_argument("--price-per-gpu-hour", type=price, metavar="USD", help="USD per GPU-hour")
    c.add_argument("--gpus-per-node", type=positive_int, metavar="N", help="GPUs per node")
    c.add_argument("--nvlink-domain", type=positive_int, metavar="N", help=NVLINK_DOMAIN_HELP)
    c.add_argument(
        "--inter-node-gbps", type=positive_float, metavar="GBPS", help="per node, Gbit/s"
    )
    c.add_argument("--profile", metavar="NAME|FILE", help="device profile")
    c.add_argument(
        "--dtype",
        type=_dtypes,
        metavar="DTYPE[,DTYPE...]",
        help=f"compute dtype ({', '.join(DTYPES)}; default: bf16 if supported); several (bf16,"
        "fp8) are a dimension compared per plan, and a GPU without one skips it",
    )
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
    o.add_argument(
        "--report",
        action="store_true",
        help="also write report.html: the interactive time-cost front, the chosen plans, their "
        "breakdown, memory and pipeline timeline, and the inputs (one self-contained file)",
    )
    add_json_arg(p)
    p.set_defaults(func=run)


# ---- argparse types -------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more names separated by commas")
    return items


def _dtypes(text: str) -> list[str]:
    names = _names(text)
    bad = [n for n in names if n not in DTYPES]
    if bad:
        raise argparse.ArgumentTypeError(f"{', '.join(bad)}: not one of {', '.join(DTYPES)}")
    return names


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


# ---- the command ------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    if args.report and args.json and not args.out:
        raise ValueError(REPORT_NEEDS_OUT)
    request = SearchRequest(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(SearchRequest)}
    )
    done = run_search(
        request,
        command=["vtrain_opt", *sys.argv[1:]] if sys.argv else None,
        searching=_searching(enabled=sys.stderr.isatty() and not args.json),
    )
    result = done.result
    if not result.ok:
        _report_infeasible(result, args.json)
        raise ValueError(f"no feasible plan ({result.limits.describe()}): {result.explain()}")
    if args.json:
        print_json(run_document(done))
        return 0
    from vtrain_opt.console import console

    _print_summary(console(), done, args.top)
    return 0


# ---- printing ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _searching(enabled: bool) -> Iterator[Progress | None]:
    """While the search runs: its progress bar, and Ray's own stdout messages (a worker that
    died, ...) sent to stderr, keeping stdout for --json and for the final table."""
    with _progress(enabled) as tick, contextlib.redirect_stdout(sys.stderr):
        yield tick


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


def _print_summary(con: Any, done: SearchRun, top: int) -> None:
    from vtrain_opt.console import breakdown_table

    result: Any = done.result  # a plan was found: best_time is set
    for line in headline(result):
        con.print(line)
    con.print(plans_table(result, top, done.baseline_row))
    con.print(
        breakdown_table(result.best_time, title="Where an iteration of the fastest plan goes")
    )
    for line in saving_lines(done.savings):
        con.print(line)
    report = ", report.html" if "report" in done.paths else ""
    con.print(
        f"results in {done.paths['best'].parent}/ (pareto.csv, plans.parquet, best.json, "
        f"pareto.png{report})"
    )


def _report_infeasible(result: Any, as_json: bool) -> None:
    if as_json:
        print_json(infeasible_document(result))
        return
    lines = closest_lines(result)
    if lines:
        from vtrain_opt.console import console

        con = console(stderr=True)
        for line in lines:
            con.print(line)
