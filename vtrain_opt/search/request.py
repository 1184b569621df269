"""A search as the command line asks for it: options in, a result and its files out.

``SearchRequest`` holds the options as given (None: not given); ``run_search`` builds the
space (a named space or file with overrides, or a model and flags), the limits and the
defaults the command applies (the strategy, Ray only for large exhaustive spaces, the
results folder of a resumed study), runs ``search``, prices the baseline and writes the
results folder. It prints nothing; the caller decides what to show.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vtrain_opt.io import check_writable_folder
from vtrain_opt.profiles import load_profile
from vtrain_opt.search.baseline import evaluate_baseline, parse_baseline, savings
from vtrain_opt.search.engine import (
    AUTO_EXHAUSTIVE_MAX,
    Progress,
    SearchResult,
    narrow,
    search,
)
from vtrain_opt.search.exhaustive import raw_size
from vtrain_opt.search.limits import Limits
from vtrain_opt.search.optuna_search import DEFAULT_INNER, default_study_name
from vtrain_opt.search.ray_backend import cluster_address
from vtrain_opt.search.space import SearchSpace, gpu_choice
from vtrain_opt.search.spacefile import load_space
from vtrain_opt.spec.hardware import get_gpu
from vtrain_opt.spec.model import load_model
from vtrain_opt.spec.moe import MOE_IMBALANCE, MOE_SETUP_KEYS
from vtrain_opt.spec.setup import Setup, check_torch_plan, custom_framework

# The GPU type when neither --gpu, --profile nor a space names one.
DEFAULT_GPU = "a100-80gb"
# --workers auto: Ray only for exhaustive spaces of at least this many raw combinations
# (~15 s in-process at the rate of benchmarks/bench_search.py); below, starting Ray (~6 s
# on a small machine) costs more than sharding saves.
RAY_AUTO_MIN_PLANS = 100_000_000
RESULTS_ROOT = Path("results")


@dataclass(frozen=True, kw_only=True)
class SearchRequest:
    """The options of a search, named as the command line names them."""

    # what to search: a space (named or a file) with overrides, or a model and dimensions
    space: str | None = None
    model: str | None = None
    seq_len: int | None = None
    gpu: list[str] | None = None
    tokens: float | None = None
    global_batch: list[int] | None = None
    gpu_step: int | None = None  # None: whole nodes
    tp: list[int] | None = None
    cp: list[int] | None = None
    ep: list[int] | None = None  # a MoE model's expert parallel sizes
    etp: list[int] | None = None
    pp: list[int] | None = None
    micro_batch: list[int] | None = None
    vpp: list[int] | None = None
    zero: list[int] | None = None
    recompute: list[str] | None = None
    sequence_parallel: str | None = None  # on, off or both
    dp_overlap: str | None = None  # on, off or both
    stage_layers: str | None = None  # even, auto or F,L
    # cluster and device (one GPU type)
    price_per_gpu_hour: float | None = None
    gpus_per_node: int | None = None
    nvlink_domain: int | None = None
    inter_node_gbps: float | None = None
    profile: str | None = None
    dtype: str | list[str] | None = None  # one, or several compared per plan (bf16, fp8)
    attention: str | None = None
    framework: str
    dropout: float | None = None
    master_weights: str
    fp8_recipe: str = "delayed"
    # MoE (Setup's moe_* fields, sim/moe.py)
    moe_imbalance: float = MOE_IMBALANCE
    moe_capacity_factor: float | None = None
    moe_a2a_overlap: bool = False
    moe_node_limit: int | None = None
    # budget and limits
    budget: Any = None  # parse_budget's value: money or GPU time
    max_days: float | None = None
    max_gpus: int | None = None
    min_gpus: int | None = None
    # objective and strategy
    objective: str
    strategy: str
    sampler: str
    trials: int
    batch_size: int
    seed: int
    inner: tuple[str, ...] | None = None
    storage: str | None = None
    study_name: str | None = None
    # where it runs and where it writes
    workers: int | str  # a count, or "auto"
    ray_address: str | None = None
    out: str | None = None
    baseline: str | None = None
    report: bool = False  # also write report.html (search/reporting)


@dataclass
class SearchRun:
    """A search's result, and, when a plan is feasible, the files written for it."""

    result: SearchResult
    out_dir: Path | None  # None when nothing is feasible (nothing written)
    paths: dict[str, Path]
    baseline_row: pd.Series | None
    savings: dict[str, Any] | None
    baseline_info: dict[str, Any] | None


def run_search(
    req: SearchRequest,
    *,
    command: list[str] | None = None,
    searching: AbstractContextManager[Progress | None] | None = None,
) -> SearchRun:
    """Build, run and write the search ``req`` asks for.

    ``command`` is recorded in best.json; ``searching`` is entered around the search alone
    and yields its progress callback (a progress bar, stdout held back while Ray runs).
    Nothing is written when no plan is feasible: ``out_dir`` is None.
    """
    space = build_space(req)
    tokens = req.tokens or space.tokens
    if tokens is None:
        raise ValueError("give --tokens (e.g. 300B): the space names no amount of training work")
    limits = Limits.from_budget(
        req.budget, max_days=req.max_days, min_gpus=req.min_gpus, max_gpus=req.max_gpus
    )
    narrowed = narrow(space, limits)
    raw = raw_size(narrowed)
    strategy = req.strategy
    if strategy == "auto":
        strategy = "exhaustive" if raw <= AUTO_EXHAUSTIVE_MAX else "optuna"
    ray_address = cluster_address(req.ray_address)  # RAY_ADDRESS counts as the flag
    workers = req.workers
    if workers == "auto":
        workers = (
            (os.cpu_count() or 1) if strategy == "exhaustive" and raw >= RAY_AUTO_MIN_PLANS else 0
        )
    baseline_plan = parse_baseline(req.baseline, narrowed) if req.baseline else None

    out_dir = Path(req.out) if req.out else None
    if out_dir is not None or req.report:  # before the search: say now what cannot be written
        check_writable_folder(out_dir or RESULTS_ROOT)
    storage = req.storage
    if strategy == "optuna" and storage is None:
        name = req.study_name or default_study_name(
            narrowed,
            tokens,
            limits,
            req.objective,
            req.sampler,
            req.seed,
            DEFAULT_INNER if req.inner is None else req.inner,
        )
        out_dir = out_dir or _previous_run(name) or _default_dir(space)
        storage = str(out_dir / "study.journal")

    with searching or contextlib.nullcontext() as tick:
        result = search(
            space,
            tokens,
            limits=limits,
            objective=req.objective,
            strategy=strategy,
            workers=int(workers),
            ray_address=ray_address,
            trials=req.trials,
            sampler=req.sampler,
            seed=req.seed,
            batch_size=req.batch_size,
            storage=storage,
            study_name=req.study_name,
            progress=tick,
            inner=req.inner,
        )

    baseline_row, saved = None, None
    if baseline_plan is not None:
        baseline_row = evaluate_baseline(result, *baseline_plan)
        saved = savings(result, baseline_row)
    if not result.ok:
        return SearchRun(result, None, {}, baseline_row, saved, None)

    from vtrain_opt.search.results import default_out_dir, row_dict, write_results

    out_dir = out_dir or default_out_dir(result, RESULTS_ROOT)
    baseline_info = None
    if baseline_row is not None:
        baseline_info = {"plan": row_dict(baseline_row), "savings": saved}
    paths = write_results(result, out_dir, command, baseline_row, baseline_info)
    if req.report:
        from vtrain_opt.search.reporting.search import write_search_report

        paths["report"] = write_search_report(
            result, out_dir, command=command, baseline_row=baseline_row, baseline=baseline_info
        )
    return SearchRun(result, out_dir, paths, baseline_row, saved, baseline_info)


def build_space(req: SearchRequest) -> SearchSpace:
    """The space from --space (with command-line overrides) or from --model and flags."""
    if req.space and req.model:
        raise ValueError("give --space or --model, not both (a space file names its model)")
    if not req.space and not req.model:
        raise ValueError("give --model NAME|FILE or --space NAME|FILE")
    gpus = None
    if (
        req.gpu
        or req.price_per_gpu_hour
        or req.gpus_per_node
        or req.nvlink_domain
        or req.inter_node_gbps
    ):
        names = req.gpu or (
            [g.name for g in load_space(req.space).gpus] if req.space else [_default_gpu(req)]
        )
        if len(names) > 1 and (req.price_per_gpu_hour or req.profile):
            raise ValueError(
                "--price-per-gpu-hour and --profile apply to a single GPU type; with several, "
                "set them per GPU in a space file"
            )
        gpus = [
            gpu_choice(
                n,
                price_per_gpu_hour_usd=req.price_per_gpu_hour,
                gpus_per_node=req.gpus_per_node,
                nvlink_domain=req.nvlink_domain,
                inter_node_gbps=req.inter_node_gbps,
                profile=req.profile,
            )
            for n in names
        ]
    elif req.profile:
        names = [g.name for g in load_space(req.space).gpus] if req.space else [_default_gpu(req)]
        if len(names) > 1:
            raise ValueError("--profile applies to a single GPU type; pick one with --gpu")
        gpus = [gpu_choice(names[0], profile=req.profile)]
    dims: dict[str, Any] = {
        "global_batch": req.global_batch,
        "tp": req.tp,
        "cp": req.cp,
        "ep": req.ep,
        "etp": req.etp,
        "pp": req.pp,
        "micro_batch": req.micro_batch,
        "recompute": req.recompute,
        "vpp": req.vpp,
        "zero": req.zero,
        "sequence_parallel": _switch(req.sequence_parallel),
        "dp_overlap": _switch(req.dp_overlap),
        "stage_layers": req.stage_layers,
    }
    setup = None
    check_torch_plan(
        req.framework,
        tp=req.tp,
        cp=req.cp,
        pp=req.pp,
        vpp=req.vpp,
        sequence_parallel=req.sequence_parallel,
    )
    framework: dict[str, Any] = {
        "framework": req.framework,
        "dropout": req.dropout,
        "master_weights": req.master_weights,
        "fp8_recipe": req.fp8_recipe,
        **{k: getattr(req, k) for k in MOE_SETUP_KEYS},
    }
    dtypes = [req.dtype] if isinstance(req.dtype, str) else req.dtype
    if dtypes and len(dtypes) > 1:
        dims["dtypes"] = dtypes
    if req.dtype or req.attention or custom_framework(**framework):
        # the flag not given takes what every candidate GPU supports (as make_context does)
        names = (
            [g.name for g in gpus]
            if gpus
            else ([g.name for g in load_space(req.space).gpus] if req.space else [DEFAULT_GPU])
        )
        chips = [get_gpu(n) for n in names]
        bf16 = all("bf16" in c.peak_flop_per_s for c in chips)
        flash = all(c.flash_attention for c in chips)
        setup = Setup(
            dtype=dtypes[0] if dtypes else ("bf16" if bf16 else "fp16"),
            attention=req.attention or ("flash" if flash else "unfused"),
            **framework,
        )
    if req.space:
        space = load_space(req.space)
        model = space.model.with_seq_length(req.seq_len) if req.seq_len else None
        return space.with_changes(
            model=model,
            gpus=tuple(gpus) if gpus else None,
            gpu_step=req.gpu_step,
            setup=setup,
            **dims,
        )
    model = load_model(req.model)  # type: ignore[arg-type]  # given: checked above
    if req.seq_len:
        model = model.with_seq_length(req.seq_len)
    return SearchSpace.create(
        model,
        gpus or [DEFAULT_GPU],
        min_gpus=req.min_gpus,
        max_gpus=req.max_gpus,
        gpu_step=req.gpu_step,
        setup=setup,
        **dims,
    )


def _default_gpu(req: SearchRequest) -> str:
    """The GPU of --profile when one is given (so a profile is not applied to another GPU)."""
    return load_profile(req.profile).gpu if req.profile else DEFAULT_GPU


def _switch(value: str | None) -> list[bool] | None:
    return {None: None, "on": [True], "off": [False], "both": [False, True]}[value]


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
