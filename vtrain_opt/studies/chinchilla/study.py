"""The compute-optimal study: search every candidate size once, then answer each budget.

The real answer N* is the candidate of least predicted loss; beside it the ideal answers
(``ideal``) and the law's optimum at the MFU N*'s plan reaches, like for like.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.search.ray_backend import open_backend
from vtrain_opt.sim.step import make_context
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.studies.chinchilla.budget import StudyBudget, StudyConfig
from vtrain_opt.studies.chinchilla.ideal import ideal_answer, law_optimum
from vtrain_opt.studies.chinchilla.sizes import (
    REF_TOKENS,
    SizeEval,
    candidate_row,
    evaluate_size,
    plain,
    plan_dict,
)
from vtrain_opt.units import DAY_S, format_count, format_usd


@dataclass
class BudgetAnswer:
    """The real and ideal answers for one budget; ``at_real_mfu`` is the law's optimum at
    the budget's peak FLOPs x the MFU of N*'s plan (like for like with the real answer)."""

    budget: StudyBudget
    candidates: pd.DataFrame
    optimal: dict[str, Any]
    ideal: dict[str, Any]
    gap: dict[str, Any]
    notes: list[str]
    at_real_mfu: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyResult:
    config: StudyConfig
    answers: list[BudgetAnswer]
    peak_flop_per_s: float
    dtype: str
    elapsed_s: float
    backend: str
    workers: int

    @property
    def main(self) -> BudgetAnswer:
        """The answer for the largest budget (the only one, with a single budget)."""
        return self.answers[-1]


def run_study(
    config: StudyConfig,
    *,
    workers: int = 0,
    ray_address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StudyResult:
    """Search every candidate size (in parallel on Ray unless ``workers=0``), then answer
    each budget: the real loss-minimizing size and the idealized one beside it."""
    t0 = time.perf_counter()
    fit = config.law
    rules = config.rules
    models = rules.candidates(config.min_params, config.max_params, config.num_sizes)
    ctx = make_context(models[0], config.gpu.cluster, config.gpu.profile, config.setup)
    # the peak MFU is measured against (bf16 under fp8, as NVIDIA reports FP8 training)
    peak = ctx.cluster.gpu.peak(ctx.setup.compute_dtype)
    price = config.gpu.price_per_gpu_hour_usd
    budgets = sorted(config.budgets, key=lambda b: b.value)

    # the idealized answers (closed form), and the shapes at their sizes ("probes")
    ideals = [ideal_answer(b, peak, price, config, fit) for b in budgets]
    probes: dict[tuple[int, int], ModelSpec] = {}
    for ideal in ideals:
        for key in ("law", "rule"):
            m = rules.for_params(ideal[key]["params"])
            probes.setdefault((m.hidden_size, m.num_layers), m)
    shapes = {(m.hidden_size, m.num_layers): m for m in models}
    todo = {**shapes, **{k: v for k, v in probes.items() if k not in shapes}}

    lo, hi = config.gpu_range()
    dims = config.space_dims()
    calls = [(m, config.gpu, config.setup, lo, hi, dims) for m in todo.values()]
    evals: dict[tuple[int, int], SizeEval] = {}
    with open_backend(workers, ray_address) as backend:
        if progress:
            progress(0, len(calls))
        for ev in backend.map(evaluate_size, calls):
            evals[(ev.model.hidden_size, ev.model.num_layers)] = ev
            if progress:
                progress(len(evals), len(calls))
        backend_name, n_workers = backend.name, backend.workers

    answers = []
    for budget, ideal in zip(budgets, ideals, strict=True):
        rows = [candidate_row(evals[k], budget, fit, config.min_tokens_per_param) for k in shapes]
        cands = pd.DataFrame(rows).sort_values("params").reset_index(drop=True)
        ok = cands[cands["status"] == "ok"]
        if ok.empty:
            raise ValueError(_too_small(cands, evals, shapes, budget, config))
        best = ok.loc[ok["loss"].idxmin()]
        optimal = _answer(best)
        notes = []
        if best["params"] == ok["params"].max() and best["params"] < cands["params"].max():
            notes.append("N* is the largest size with enough tokens")
        elif best["params"] == cands["params"].max():
            notes.append("N* is the largest size tried: raise --max-params")
        if best["params"] == cands["params"].min():
            notes.append("N* is the smallest size tried: lower --min-params")
        for key in ("law", "rule"):
            m = rules.for_params(ideal[key]["params"])
            real = candidate_row(
                evals[(m.hidden_size, m.num_layers)], budget, fit, config.min_tokens_per_param
            )
            ideal[key]["real"] = {
                "params": real["params"],
                "tokens": real["tokens"],
                "loss": real["loss"],
                "tokens_per_param": real["tokens_per_param"],
                "mfu": real.get("mfu", np.nan),
                "status": real["status"],
            }
        peak_flop = ideal["compute_flop"] / config.ideal_mfu  # the budget at 100%
        at_real = law_optimum(fit, peak_flop, float(optimal["mfu"]))
        gap = {
            "params_ratio": optimal["params"] / ideal["params"],
            "tokens_ratio": optimal["tokens"] / ideal["tokens"],
            "loss_delta": optimal["loss"] - ideal["loss"],
            "params_ratio_at_real_mfu": optimal["params"] / at_real["params"],
            "tokens_ratio_at_real_mfu": optimal["tokens"] / at_real["tokens"],
            "loss_delta_at_real_mfu": optimal["loss"] - at_real["loss"],
            "utilization_6nd": optimal["effective_flop"] / ideal["compute_flop"] * config.ideal_mfu,
            "loss_delta_vs_law_size": ideal["law"]["real"]["loss"] - optimal["loss"],
            "loss_delta_vs_rule_size": ideal["rule"]["real"]["loss"] - optimal["loss"],
        }
        answers.append(BudgetAnswer(budget, cands, optimal, ideal, gap, notes, at_real))
    return StudyResult(
        config=config,
        answers=answers,
        peak_flop_per_s=peak,
        dtype="/".join(config.dtypes) or ctx.setup.dtype,
        elapsed_s=time.perf_counter() - t0,
        backend=backend_name,
        workers=n_workers,
    )


def _answer(row: pd.Series) -> dict[str, Any]:
    keys = (
        "params",
        "name",
        "hidden_size",
        "num_layers",
        "num_attention_heads",
        "kv_heads",
        "ffn_hidden_size",
        "seq_length",
        "tokens",
        "tokens_per_param",
        "loss",
        "mfu",
        "tokens_per_s",
        "days",
        "training_time_s",
        "cost_usd",
        "gpu_hours",
        "effective_flop",
        "memory_per_gpu_bytes",
    )
    out = {k: plain(row[k]) for k in keys}
    out["plan"] = plan_dict(row)
    return out


def _too_small(
    cands: pd.DataFrame,
    evals: dict[tuple[int, int], SizeEval],
    shapes: dict[tuple[int, int], ModelSpec],
    budget: StudyBudget,
    config: StudyConfig,
) -> str:
    """Why no candidate can be trained, and the smallest budget that would work."""
    where = f"{config.gpu.name}"
    runnable = cands[cands["status"] != "no plan"]
    if runnable.empty:
        smallest = min(shapes.values(), key=lambda m: m.num_params())
        why = evals[(smallest.hidden_size, smallest.num_layers)]
        reason = why.error or why.why_not or "no feasible plan"
        lo, hi = config.gpu_range()
        return (
            f"no candidate size has a plan on {lo or 1}..{hi} {where} GPUs: the smallest "
            f"({format_count(smallest.num_params())} parameters): {reason}"
        )
    row = runnable.iloc[0]
    n = float(row["params"])
    need = config.min_tokens_per_param * n
    ev = next(e for e in evals.values() if float(e.model.active_params()) == n)
    have = (
        f"{budget.label()} trains the smallest candidate ({format_count(n)} parameters) on "
        f"{row['tokens_per_param']:.2g} tokens per parameter, below --min-tokens-per-param "
        f"{config.min_tokens_per_param:g}"
    )
    if budget.fixed_cluster:
        assert ev.fastest is not None
        days = need / float(ev.fastest["tokens_per_s"]) / DAY_S
        return f"budget too small: {have}; the smallest budget that works is {days:.3g} days on {budget.num_gpus} GPUs"
    front = ev.front
    t = front["training_time_s"].to_numpy() / REF_TOKENS * need
    cost_col = "cost_usd" if budget.usd is not None else "gpu_hours"
    c = front[cost_col].to_numpy() / REF_TOKENS * need
    ok = np.ones(len(front), dtype=bool) if budget.time_s is None else t <= budget.time_s
    if not ok.any():
        return (
            f"budget too small: {have}; within {budget.time_s / DAY_S:g} days even its fastest "  # type: ignore[operator]
            f"plan needs {t.min() / DAY_S:.3g} days: raise --max-days or --max-gpus"
        )
    least = float(c[ok].min())
    shown = format_usd(least) if budget.usd is not None else f"{least:,.0f} GPU-hours"
    return f"budget too small: {have}; the smallest budget that works is {shown}"
