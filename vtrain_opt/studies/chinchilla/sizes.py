"""One candidate model size: its plans on the budget's GPUs, and its row under a budget.

A size is searched once at ``REF_TOKENS`` tokens; every time and cost scales linearly with
tokens, so its time-cost Pareto front answers every budget (``plan_for_budget``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.search import GpuChoice, SearchSpace, search
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import PLAN_COLUMNS
from vtrain_opt.spec.setup import Setup
from vtrain_opt.studies.chinchilla.budget import StudyBudget
from vtrain_opt.studies.lossfit import FLOP_PER_PARAM_TOKEN, LossFit
from vtrain_opt.units import DAY_S

# Tokens of the reference searches; every time and cost scales linearly with tokens.
REF_TOKENS = 1e12
KEEP_COLUMNS = (
    *PLAN_COLUMNS,
    "dtype",
    "training_time_s",
    "cost_usd",
    "gpu_hours",
    "tokens_per_s",
    "mfu",
    "iteration_time_s",
    "memory_per_gpu_bytes",
)


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
    dims: dict[str, Any] | None = None,
) -> SizeEval:
    """Search every plan of ``model`` on 1..max_gpus GPUs (runs here or as a Ray task);
    ``dims``: more keyword arguments of the space (``StudyConfig.space_dims``)."""
    try:
        # whole nodes, unless the budget's cluster is smaller than one node
        step = None if max_gpus >= gpu.cluster.gpus_per_node else 1
        space = SearchSpace.create(
            model,
            [gpu],
            min_gpus=min_gpus,
            max_gpus=max_gpus,
            gpu_step=step,
            setup=setup,
            **(dims or {}),
        )
        result = search(space, tokens=REF_TOKENS, objective="pareto", workers=0)
    except ValueError as e:
        return SizeEval(model, pd.DataFrame(), None, 0, "", error=str(e))
    keep = [c for c in KEEP_COLUMNS if c in result.pareto.columns]
    front = result.pareto[keep].reset_index(drop=True) if result.ok else pd.DataFrame()
    fastest = result.best_time[keep] if result.ok else None  # type: ignore[index]
    return SizeEval(model, front, fastest, result.evaluated, result.explain())


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
    out = {c: plain(row[c]) for c in PLAN_COLUMNS}
    if "dtype" in row:
        out["dtype"] = str(row["dtype"])
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
    # the loss law on the active parameters (MoE: dense-equivalent; dense: all of them)
    n = float(m.active_params())
    row: dict[str, Any] = {
        "params": n,
        **({"total_params": float(m.num_params())} if m.is_moe else {}),
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


def plan_dict(row: pd.Series) -> dict[str, Any]:
    """The plan columns of a row with their own types (a frame with NaN rows holds floats)."""
    out: dict[str, Any] = {}
    for k in PLAN_COLUMNS:
        v = plain(row[k])
        if k in ("sequence_parallel", "dp_overlap"):
            out[k] = bool(v)
        elif k == "recompute":
            out[k] = str(v)
        else:
            out[k] = int(v)
    return out


def plain(v: Any) -> Any:
    """A numpy scalar as the Python value (JSON and equality need plain types)."""
    if isinstance(v, np.generic):
        return v.item()
    return v
