"""Compute-optimal model size under a real budget, with the utilization real plans reach.

For every candidate size (``shapes.ShapeRules``) the search engine finds its plans on the
budget's GPUs; their real throughput gives the tokens D the budget can train, hence the
predicted loss L(N, D) (``lossfit.LossFit``, Epoch AI's fit by default). The
loss-minimizing size N* is the real answer; beside it the idealized one: the same budget at
a constant utilization (MFU 100% by default) with C = 6 N D, the law's closed-form optimum
and the ~20 tokens/parameter rule; and the law's optimum at the MFU N*'s plan reaches (the
budget's peak FLOPs x that MFU), which compares the law with the real plans like for like.

Two budget forms (see the README for why):

* a fixed cluster for a time (``num_gpus`` GPUs, ``T`` seconds): each size runs its
  highest-throughput plan on at most ``num_gpus`` GPUs, D = tokens/s x T;
* money or GPU-hours (optionally within ``T``): each size runs the plan and GPU count that
  train the most tokens within the budget and the time, D = max over plans of
  min(B / cost per token, T / time per token). That maximum lies on the time-cost Pareto
  front of the size's plans (D falls as either rises), which the search returns exactly,
  so one search per size serves every budget.

Candidates are searched in parallel (Ray tasks, or in-process with ``workers=0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.search import GpuChoice, SearchSpace, search
from vtrain_opt.search.ray_backend import open_backend
from vtrain_opt.sim.step import make_context
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import PLAN_COLUMNS
from vtrain_opt.spec.setup import Setup
from vtrain_opt.studies.lossfit import (
    DEFAULT_FIT,
    FITS,
    FLOP_PER_PARAM_TOKEN,
    LossFit,
    rule_of_thumb,
)
from vtrain_opt.studies.shapes import ShapeRules
from vtrain_opt.units import DAY_S, HOUR_S, format_count, format_usd

# Tokens of the reference searches; every time and cost scales linearly with tokens.
REF_TOKENS = 1e12
KEEP_COLUMNS = (
    *PLAN_COLUMNS,
    "training_time_s",
    "cost_usd",
    "gpu_hours",
    "tokens_per_s",
    "mfu",
    "iteration_time_s",
    "memory_per_gpu_bytes",
)


# ---- budgets ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyBudget:
    """A fixed cluster for a time (``num_gpus`` and ``time_s``), or money / GPU-hours
    (``usd`` or ``gpu_hours``) optionally within ``time_s``."""

    num_gpus: int | None = None
    time_s: float | None = None
    usd: float | None = None
    gpu_hours: float | None = None

    def __post_init__(self) -> None:
        money = (self.usd is not None) + (self.gpu_hours is not None)
        if money > 1:
            raise ValueError("budget: give money or GPU-hours, not both")
        if self.num_gpus is not None:
            if money or self.time_s is None:
                raise ValueError(
                    "budget: a fixed cluster needs --num-gpus and --days (and no money budget)"
                )
        elif not money:
            raise ValueError(
                "budget: give a fixed cluster (--num-gpus N --days D) or a budget (--budget $5M)"
            )
        for name in ("time_s", "usd", "gpu_hours"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"budget: {name} must be positive, got {v!r}")

    @property
    def fixed_cluster(self) -> bool:
        return self.num_gpus is not None

    @property
    def value(self) -> float:
        """The quantity that varies along a frontier: days, dollars or GPU-hours."""
        if self.fixed_cluster:
            assert self.time_s is not None
            return self.time_s / DAY_S
        return float(self.usd if self.usd is not None else self.gpu_hours)  # type: ignore[arg-type]

    @property
    def unit(self) -> str:
        return "days" if self.fixed_cluster else ("USD" if self.usd is not None else "GPU-hours")

    def label(self) -> str:
        if self.fixed_cluster:
            return f"{self.num_gpus} GPUs x {self.value:g} days"
        money = format_usd(self.usd) if self.usd is not None else f"{self.gpu_hours:,.0f} GPU-hours"
        if self.time_s is not None:
            money += f" within {self.time_s / DAY_S:g} days"
        return money

    def gpu_seconds(self, price_per_gpu_hour_usd: float) -> float:
        """GPU time the budget buys (the ideal answer's compute is this x peak x MFU)."""
        if self.fixed_cluster:
            return float(self.num_gpus) * float(self.time_s)  # type: ignore[arg-type]
        if self.usd is not None:
            return self.usd / price_per_gpu_hour_usd * HOUR_S
        return float(self.gpu_hours) * HOUR_S  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "cluster" if self.fixed_cluster else "money",
            "num_gpus": self.num_gpus,
            "days": None if self.time_s is None else self.time_s / DAY_S,
            "usd": self.usd,
            "gpu_hours": self.gpu_hours,
            "label": self.label(),
        }


@dataclass(frozen=True)
class StudyConfig:
    """Everything a compute-optimal study depends on."""

    gpu: GpuChoice
    budgets: tuple[StudyBudget, ...]
    rules: ShapeRules = field(default_factory=ShapeRules)
    fit: LossFit | None = None
    setup: Setup | None = None
    min_params: float = 0.5e9
    max_params: float = 1e12
    num_sizes: int = 24
    ideal_mfu: float = 1.0
    tokens_per_param_rule: float = 20.0
    min_tokens_per_param: float = 1.0
    min_gpus: int | None = None
    max_gpus: int | None = None  # money budgets: the largest GPU count tried

    def __post_init__(self) -> None:
        if not self.budgets:
            raise ValueError("budget: give at least one")
        kinds = {(b.fixed_cluster, b.num_gpus, b.usd is None) for b in self.budgets}
        if len(kinds) > 1:
            raise ValueError("--budgets: every budget must be of the same kind (days or money)")
        if not (0 < self.ideal_mfu <= 1):
            raise ValueError(f"--ideal-mfu: must be in (0, 1], got {self.ideal_mfu}")
        if not self.min_tokens_per_param >= 0:
            raise ValueError("--min-tokens-per-param: must be >= 0")

    @property
    def law(self) -> LossFit:
        return self.fit or FITS[DEFAULT_FIT]

    def gpu_range(self) -> tuple[int | None, int]:
        first = self.budgets[0]
        if first.fixed_cluster:
            return self.min_gpus, int(first.num_gpus)  # type: ignore[arg-type]
        return self.min_gpus, int(self.max_gpus or DEFAULT_MONEY_MAX_GPUS)


# The largest GPU count a money budget may buy, unless --max-gpus says otherwise.
DEFAULT_MONEY_MAX_GPUS = 16384


# ---- one candidate size -------------------------------------------------------------------
@dataclass
class SizeEval:
    """The plans of one model size on the budget's GPUs, at REF_TOKENS tokens."""

    model: ModelSpec
    front: pd.DataFrame  # feasible time-cost Pareto front (KEEP_COLUMNS)
    fastest: pd.Series | None  # the highest-throughput plan
    evaluated: int
    why_not: str  # when nothing fits: the search's explanation
    error: str = ""


def evaluate_size(
    model: ModelSpec,
    gpu: GpuChoice,
    setup: Setup | None,
    min_gpus: int | None,
    max_gpus: int,
) -> SizeEval:
    """Search every plan of ``model`` on 1..max_gpus GPUs (runs here or as a Ray task)."""
    try:
        # whole nodes, unless the budget's cluster is smaller than one node
        step = None if max_gpus >= gpu.cluster.gpus_per_node else 1
        space = SearchSpace.create(
            model, [gpu], min_gpus=min_gpus, max_gpus=max_gpus, gpu_step=step, setup=setup
        )
        result = search(space, tokens=REF_TOKENS, objective="pareto", workers=0)
    except ValueError as e:
        return SizeEval(model, pd.DataFrame(), None, 0, "", error=str(e))
    keep = [c for c in KEEP_COLUMNS if c in result.pareto.columns]
    front = result.pareto[keep].reset_index(drop=True) if result.ok else pd.DataFrame()
    fastest = result.best_time[keep] if result.ok else None  # type: ignore[index]
    return SizeEval(model, front, fastest, result.evaluated, result.explain())


# ---- the answer for one budget ------------------------------------------------------------
def plan_for_budget(ev: SizeEval, budget: StudyBudget) -> dict[str, Any] | None:
    """The plan that trains the most tokens of ``ev.model`` within ``budget``, with D."""
    if ev.fastest is None:
        return None
    if budget.fixed_cluster:
        row = ev.fastest
        time_s = float(budget.time_s)  # type: ignore[arg-type]
        tokens = float(row["tokens_per_s"]) * time_s
    else:
        front = ev.front
        t_tok = front["training_time_s"].to_numpy() / REF_TOKENS
        if budget.usd is not None:
            c_tok = front["cost_usd"].to_numpy() / REF_TOKENS
            limit = budget.usd
        else:
            c_tok = front["gpu_hours"].to_numpy() / REF_TOKENS
            limit = float(budget.gpu_hours)  # type: ignore[arg-type]
        d = limit / c_tok
        if budget.time_s is not None:
            d = np.minimum(d, budget.time_s / t_tok)
        i = int(np.lexsort((c_tok, -d))[0])  # most tokens, then cheaper
        row = front.iloc[i]
        tokens = float(d[i])
        time_s = tokens * float(t_tok[i])
    scale = tokens / REF_TOKENS
    out = {c: _plain(row[c]) for c in PLAN_COLUMNS}
    out.update(
        tokens=tokens,
        training_time_s=time_s,
        days=time_s / DAY_S,
        gpu_hours=float(row["gpu_hours"]) * scale,
        cost_usd=float(row["cost_usd"]) * scale,
        tokens_per_s=float(row["tokens_per_s"]),
        mfu=float(row["mfu"]),
        iteration_time_s=float(row["iteration_time_s"]),
        memory_per_gpu_bytes=float(row["memory_per_gpu_bytes"]),
    )
    return out


def candidate_row(
    ev: SizeEval, budget: StudyBudget, fit: LossFit, min_tpp: float
) -> dict[str, Any]:
    """One candidate size under one budget: shape, plan, tokens, loss, status."""
    m = ev.model
    n = float(m.num_params())
    row: dict[str, Any] = {
        "params": n,
        "name": m.name,
        "hidden_size": m.hidden_size,
        "num_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "kv_heads": m.kv_heads,
        "ffn_hidden_size": m.ffn,
        "seq_length": m.seq_length,
        "evaluated": ev.evaluated,
    }
    plan = plan_for_budget(ev, budget)
    if plan is None:
        row.update(status="no plan", reason=ev.error or ev.why_not or "no feasible plan")
        row.update({k: np.nan for k in ("tokens", "tokens_per_param", "loss")})
        row["global_batch"] = m.global_batch
        return row
    row.update(plan)
    row["tokens_per_param"] = plan["tokens"] / n
    row["loss"] = fit.loss(n, plan["tokens"])
    row["effective_flop"] = FLOP_PER_PARAM_TOKEN * n * plan["tokens"]
    if row["tokens_per_param"] < min_tpp:
        row.update(
            status="too few tokens",
            reason=f"{row['tokens_per_param']:.2g} tokens per parameter < {min_tpp:g}",
        )
    else:
        row.update(status="ok", reason="")
    return row


# ---- the study ---------------------------------------------------------------------------
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
    import time

    t0 = time.perf_counter()
    fit = config.law
    rules = config.rules
    models = rules.candidates(config.min_params, config.max_params, config.num_sizes)
    ctx = make_context(models[0], config.gpu.cluster, config.gpu.profile, config.setup)
    peak = ctx.cluster.gpu.peak(ctx.setup.dtype)
    price = config.gpu.price_per_gpu_hour_usd
    budgets = sorted(config.budgets, key=lambda b: b.value)

    # the idealized answers (closed form), and the shapes at their sizes ("probes")
    ideals = [_ideal(b, peak, price, config, fit) for b in budgets]
    probes: dict[tuple[int, int], ModelSpec] = {}
    for ideal in ideals:
        for key in ("law", "rule"):
            m = rules.for_params(ideal[key]["params"])
            probes.setdefault((m.hidden_size, m.num_layers), m)
    shapes = {(m.hidden_size, m.num_layers): m for m in models}
    todo = {**shapes, **{k: v for k, v in probes.items() if k not in shapes}}

    lo, hi = config.gpu_range()
    calls = [(m, config.gpu, config.setup, lo, hi) for m in todo.values()]
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
        at_real = _law_optimum(fit, peak_flop, float(optimal["mfu"]))
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
        dtype=ctx.setup.dtype,
        elapsed_s=time.perf_counter() - t0,
        backend=backend_name,
        workers=n_workers,
    )


def _ideal(
    budget: StudyBudget, peak: float, price: float, config: StudyConfig, fit: LossFit
) -> dict[str, Any]:
    gpu_s = budget.gpu_seconds(price)
    compute = gpu_s * peak * config.ideal_mfu
    n, d = fit.optimum(compute)
    nr, dr = rule_of_thumb(compute, config.tokens_per_param_rule)
    return {
        "mfu": config.ideal_mfu,
        "gpu_hours": gpu_s / HOUR_S,
        "compute_flop": compute,
        "params": n,
        "tokens": d,
        "tokens_per_param": d / n,
        "loss": fit.loss(n, d),
        "law": {"params": n, "tokens": d, "tokens_per_param": d / n, "loss": fit.loss(n, d)},
        "rule": {
            "tokens_per_param": config.tokens_per_param_rule,
            "params": nr,
            "tokens": dr,
            "loss": fit.loss(nr, dr),
        },
    }


def _law_optimum(fit: LossFit, peak_flop: float, mfu: float) -> dict[str, Any]:
    """The law's closed-form optimum at ``peak_flop`` x ``mfu`` FLOPs."""
    compute = peak_flop * mfu
    n, d = fit.optimum(compute)
    return {
        "mfu": mfu,
        "compute_flop": compute,
        "params": n,
        "tokens": d,
        "tokens_per_param": d / n,
        "loss": fit.loss(n, d),
    }


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
    out = {k: _plain(row[k]) for k in keys}
    out["plan"] = plan_dict(row)
    return out


def plan_dict(row: pd.Series) -> dict[str, Any]:
    """The plan columns of a row with their own types (a frame with NaN rows holds floats)."""
    out: dict[str, Any] = {}
    for k in PLAN_COLUMNS:
        v = _plain(row[k])
        if k in ("sequence_parallel", "dp_overlap"):
            out[k] = bool(v)
        elif k == "recompute":
            out[k] = str(v)
        else:
            out[k] = int(v)
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
    ev = next(e for e in evals.values() if float(e.model.num_params()) == n)
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


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def frontier_frame(result: StudyResult) -> pd.DataFrame:
    """One row per budget: N*, D*, loss and the ideal answers (for the frontier plot)."""
    rows = []
    for a in result.answers:
        rows.append(
            {
                "budget": a.budget.value,
                "unit": a.budget.unit,
                "label": a.budget.label(),
                "params": a.optimal["params"],
                "tokens": a.optimal["tokens"],
                "tokens_per_param": a.optimal["tokens_per_param"],
                "loss": a.optimal["loss"],
                "mfu": a.optimal["mfu"],
                "ideal_params": a.ideal["params"],
                "ideal_tokens": a.ideal["tokens"],
                "ideal_tokens_per_param": a.ideal["tokens_per_param"],
                "ideal_loss": a.ideal["loss"],
                "real_mfu_law_params": a.at_real_mfu["params"],
                "real_mfu_law_tokens": a.at_real_mfu["tokens"],
                "real_mfu_law_tokens_per_param": a.at_real_mfu["tokens_per_param"],
                "rule_params": a.ideal["rule"]["params"],
                "rule_tokens": a.ideal["rule"]["tokens"],
            }
        )
    return pd.DataFrame(rows)
