"""``search``: the programmatic entry point, and ``SearchResult``, what every search returns.

One call finds the fastest plan, the cheapest plan and the time-cost Pareto front of a
space under limits, with the exhaustive or the Optuna strategy, here or on Ray. It never
touches files except an Optuna storage you name, and with ``workers=0`` (the default)
it never imports Ray, so it can run inside a Ray task.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.search.collect import KEEP_ALL_MAX, TOP_K, Partial
from vtrain_opt.search.evaluate import COST, TIME, concat_rows, sort_rows
from vtrain_opt.search.exhaustive import raw_size, run_exhaustive
from vtrain_opt.search.limits import SEARCH_REASONS, Limits
from vtrain_opt.search.ray_backend import open_backend
from vtrain_opt.search.space import SearchSpace
from vtrain_opt.units import DAY_S, format_bytes, format_usd

OBJECTIVES = ("time", "cost", "pareto")
STRATEGIES = ("auto", "exhaustive", "optuna")
# `auto` enumerates spaces up to this many raw combinations (a few seconds at the
# exhaustive rate measured by benchmarks/bench_search.py), else runs Optuna.
AUTO_EXHAUSTIVE_MAX = 20_000_000
# Plans listed as the closest ones when no plan is feasible.
CLOSEST = 5

Progress = Callable[[int, int], None]


@dataclass
class SearchResult:
    """The answer of a search. Rows are plan columns + simulated metrics + feasibility."""

    space: SearchSpace
    tokens: float
    limits: Limits
    objective: str
    strategy: str  # the strategy that ran (auto resolved)
    evaluated: int  # distinct plans simulated
    space_size: int | None  # plans in the space, when known (exhaustive: exact)
    reason_counts: dict[str, int]  # evaluated plans per outcome ('feasible' or a reason)
    best_time: pd.Series | None  # fastest feasible plan (ties: cheaper)
    best_cost: pd.Series | None  # cheapest feasible plan (ties: faster)
    pareto: pd.DataFrame  # feasible non-dominated plans, by increasing time
    plans: pd.DataFrame  # every evaluated plan, or the best ones (see plans_complete)
    plans_complete: bool
    sample: pd.DataFrame  # points for the time-vs-cost plot
    closest: pd.DataFrame  # when nothing is feasible: the plans nearest to the limits
    binding: list[str]  # when nothing is feasible: which limit binds, by how much
    elapsed_s: float
    backend: str
    workers: int
    trials: int | None = None  # Optuna trials in the study (after this run)
    sampler: str | None = None
    seed: int | None = None
    study_name: str | None = None
    storage: str | None = None
    history: pd.DataFrame | None = None  # Optuna: one row per trial
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def feasible(self) -> int:
        return int(self.reason_counts.get("feasible", 0))

    @property
    def ok(self) -> bool:
        return self.best_time is not None

    @property
    def infeasible_reasons(self) -> dict[str, int]:
        return {k: v for k, v in self.reason_counts.items() if k != "feasible" and v}

    def chosen(self) -> pd.DataFrame:
        """The plans the objective picks: the fastest, the cheapest, or the front."""
        if not self.ok:
            return self.pareto.iloc[0:0]
        if self.objective == "time":
            return pd.DataFrame([self.best_time]).reset_index(drop=True)
        if self.objective == "cost":
            return pd.DataFrame([self.best_cost]).reset_index(drop=True)
        return self.pareto

    def explain(self) -> str:
        """One line: why nothing is feasible (empty when something is)."""
        return "; ".join(self.binding)


def search(
    space: SearchSpace,
    tokens: float | None = None,
    *,
    limits: Limits | None = None,
    objective: str = "pareto",
    strategy: str = "auto",
    workers: int = 0,
    ray_address: str | None = None,
    trials: int = 300,
    sampler: str = "tpe",
    seed: int = 0,
    batch_size: int = 16,
    storage: str | None = None,
    study_name: str | None = None,
    progress: Progress | None = None,
    top_k: int = TOP_K,
    keep_all_max: int = KEEP_ALL_MAX,
    inner: tuple[str, ...] | None = None,
) -> SearchResult:
    """Find the fastest, the cheapest and the Pareto-optimal plans of ``space``.

    ``tokens`` is the training work (default: the space's); ``limits`` the budget, time and
    GPU limits. ``strategy``: ``exhaustive`` (exact), ``optuna`` (``trials`` trials asked
    ``batch_size`` at a time from ``sampler`` with ``seed``; ``storage`` makes the study
    resumable; each trial completes the ``inner`` dimensions itself, default recompute and
    sequence parallelism), or ``auto`` (exhaustive when the space is small enough to finish
    in seconds). ``workers=0`` runs here without Ray; ``workers>0`` or ``ray_address`` on Ray.
    """
    t0 = _time.perf_counter()
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    tokens = space.tokens if tokens is None else tokens
    if tokens is None or not (np.isfinite(tokens) and tokens > 0):
        raise ValueError("tokens: give the number of training tokens (e.g. 300e9)")
    limits = limits or Limits()
    space = narrow(space, limits)
    raw = raw_size(space)
    if strategy == "auto":
        strategy = "exhaustive" if raw <= AUTO_EXHAUSTIVE_MAX else "optuna"
    with open_backend(workers, ray_address) as backend:
        extra: dict[str, Any] = {}
        if strategy == "exhaustive":
            part = run_exhaustive(space, tokens, limits, backend, progress, top_k, keep_all_max)
            size: int | None = part.evaluated
        else:
            from vtrain_opt.search.optuna_search import DEFAULT_INNER, run_optuna
            from vtrain_opt.search.study_store import redact

            run = run_optuna(
                space,
                tokens,
                limits,
                objective,
                backend,
                trials=trials,
                sampler=sampler,
                seed=seed,
                batch_size=batch_size,
                storage=storage,
                study_name=study_name,
                progress=progress,
                top_k=top_k,
                inner=DEFAULT_INNER if inner is None else inner,
            )
            part = run.partial
            size = space.size if raw <= AUTO_EXHAUSTIVE_MAX else None
            extra = {
                "trials": run.trials,
                "sampler": sampler,
                "seed": seed,
                "study_name": run.study_name,
                "storage": redact(storage) if storage else storage,  # no password in results
                "history": run.history,
            }
        backend_name, n_workers = backend.name, backend.workers
    return _result(
        space,
        tokens,
        limits,
        objective,
        strategy,
        part,
        size,
        _time.perf_counter() - t0,
        backend_name,
        n_workers,
        **extra,
    )


def narrow(space: SearchSpace, limits: Limits) -> SearchSpace:
    """The space within the limits' GPU range (so no plan is enumerated in vain)."""
    lo = max(space.min_gpus, limits.min_gpus or 1)
    hi = min(space.max_gpus, limits.max_gpus or space.max_gpus)
    if lo > hi:
        raise ValueError(
            f"the GPU limits ({limits.min_gpus or 1} to {limits.max_gpus}) leave nothing of "
            f"the space's {space.min_gpus} to {space.max_gpus} GPUs"
        )
    if (lo, hi) == (space.min_gpus, space.max_gpus):
        return space
    return space.with_changes(min_gpus=lo, max_gpus=hi)


def _result(
    space: SearchSpace,
    tokens: float,
    limits: Limits,
    objective: str,
    strategy: str,
    part: Partial,
    size: int | None,
    elapsed_s: float,
    backend: str,
    workers: int,
    **extra: Any,
) -> SearchResult:
    counts = {
        ("feasible" if i == 0 else SEARCH_REASONS[i]): int(n)
        for i, n in enumerate(part.reason_counts)
        if n or i == 0
    }
    if part.all_rows is not None:
        plans, complete = part.all_rows, True
    else:
        plans = concat_rows([part.front, part.top_time, part.top_cost, part.front_fits])
        plans = sort_rows(plans.drop_duplicates(subset=_plan_cols(plans)) if len(plans) else plans)
        complete = False
    best_time = part.top_time.iloc[0] if len(part.top_time) else None
    best_cost = part.top_cost.iloc[0] if len(part.top_cost) else None
    binding: list[str] = []
    closest = part.front_fits.iloc[0:0]
    if best_time is None:
        binding, closest = diagnose(part, limits)
    return SearchResult(
        space=space,
        tokens=tokens,
        limits=limits,
        objective=objective,
        strategy=strategy,
        evaluated=part.evaluated,
        space_size=size,
        reason_counts=counts,
        best_time=best_time,
        best_cost=best_cost,
        pareto=part.front,
        plans=plans,
        plans_complete=complete,
        sample=part.sample,
        closest=closest,
        binding=binding,
        elapsed_s=elapsed_s,
        backend=backend,
        workers=workers,
        **extra,
    )


def _plan_cols(df: pd.DataFrame) -> list[str]:
    from vtrain_opt.search.evaluate import PLAN_KEY

    return [c for c in PLAN_KEY if c in df.columns]


def diagnose(part: Partial, limits: Limits) -> tuple[list[str], pd.DataFrame]:
    """Which limit binds, by how much, and the plans nearest to meeting every limit."""
    if part.evaluated == 0:
        return ["the space holds no valid plan"], pd.DataFrame()
    fits = part.front_fits
    if fits.empty and part.least_memory.empty:
        # nothing was simulated: every plan broke a rule of the plan or of the setup
        code = int(np.argmax(part.reason_counts))
        return [
            f"no plan of the space passes the rules: {part.reason_counts[code]} of "
            f"{part.evaluated} break {SEARCH_REASONS[code]!r}"
        ], pd.DataFrame()
    if fits.empty:
        lean = part.least_memory.iloc[0]
        need, have = float(lean["memory_per_gpu_bytes"]), float(lean["memory_capacity_bytes"])
        return [
            f"no plan fits in GPU memory: the leanest needs {format_bytes(need)} per GPU of "
            f"{format_bytes(have)} ({_excess(need / have)})"
        ], part.least_memory
    msgs = []
    checks = [
        (limits.budget_usd, COST, "budget", format_usd, "the cheapest plan costs"),
        (limits.budget_gpu_hours, "gpu_hours", "budget", _gpu_h, "the cheapest plan takes"),
        (limits.max_time_s, TIME, "max time", _days, "the fastest plan takes"),
    ]
    excess = []
    for limit, col, name, fmt, what in checks:
        if limit is None:
            continue
        over = fits[col].to_numpy() / limit - 1.0
        excess.append(over)
        best = float(fits[col].min())
        if best > limit:
            msgs.append(f"{name} {fmt(limit)} binds: {what} {fmt(best)} ({_excess(best / limit)})")
    worst = np.max(excess, axis=0) if excess else np.zeros(len(fits))
    order = np.argsort(worst, kind="stable")[:CLOSEST]
    closest = fits.iloc[order].reset_index(drop=True)
    if not msgs and excess:
        # each limit alone can be met, but not all together
        row = closest.iloc[0]
        parts = []
        for limit, col, name, fmt, _ in checks:
            if limit is not None:
                parts.append(f"{name} {fmt(limit)} vs {fmt(float(row[col]))}")
        msgs.append(
            "no plan meets every limit at once: the closest is "
            f"{float(worst[order[0]]):.1%} over ({'; '.join(parts)})"
        )
    if not msgs:
        msgs.append("no plan meets the limits")
    return msgs, closest


def _excess(ratio: float) -> str:
    """How far over a limit: '+12.5%', or '3.4x the limit' when far over."""
    return f"{ratio:.1f}x the limit" if ratio >= 2 else f"{ratio - 1:+.1%}"


def _days(seconds: float) -> str:
    return f"{seconds / DAY_S:,.1f} days"


def _gpu_h(hours: float) -> str:
    return f"{hours:,.0f} GPU-hours"
