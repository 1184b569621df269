"""The vectorized core: iteration time, breakdown, memory and cost of N plans at once.

No Python loop runs over plans: every quantity is an array of shape (N,). The per-plan
op costs come from ``sim/plan_costs.py`` (once per distinct combination of what they
depend on). The last stage runs at the slowest node's pace, the others at the mean speed
(``sim/costs.py``, stragglers).

The iteration is the pipeline phase (``sim/schedule.py``), then each stage's exposed
data-parallel gradient communication and optimizer step, then a fixed per-iteration
framework overhead. The breakdown columns sum exactly to ``iteration_time_s``:

    compute_s + recompute_s + tp_comm_s + pp_comm_s + bubble_s
        + dp_comm_s + optimizer_s + overhead_s == iteration_time_s

where the first three and the per-micro-batch overhead are the busy time of the last
pipeline stage (the slowest: it carries the logits and the loss).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vtrain_opt.profiles import Profile
from vtrain_opt.sim.context import SimContext, make_context
from vtrain_opt.sim.memory import memory_per_gpu
from vtrain_opt.sim.plan_costs import PlanCosts, plan_costs
from vtrain_opt.sim.schedule import pipeline_times
from vtrain_opt.sim.uneven import uneven_pipeline_times
from vtrain_opt.spec.hardware import ClusterSpec
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import (
    REASON_OOM,
    REASON_TORCH_ONLY_DP,
    REASONS,
    RECOMPUTE_MODES,
    ParallelPlan,
    PlanBatch,
    torch_framework_violations,
)
from vtrain_opt.spec.setup import Setup
from vtrain_opt.spec.stages import stage_layer_counts

HOUR_S = 3600.0


# Plans evaluated per numpy pass: small enough for the temporaries to stay in cache.
CHUNK_PLANS = 1 << 16


def simulate_arrays(
    ctx: SimContext, batch: PlanBatch, tokens: float | None = None
) -> dict[str, np.ndarray]:
    """The core: result columns as arrays (N,). See ``simulate`` for the columns."""
    n = batch.n
    if n <= CHUNK_PLANS:
        return _simulate_chunk(ctx, batch, tokens)
    out: dict[str, np.ndarray] = {}
    for start in range(0, n, CHUNK_PLANS):
        part = _simulate_chunk(ctx, batch.take(slice(start, start + CHUNK_PLANS)), tokens)
        if not out:
            out = {k: np.empty(n, dtype=v.dtype) for k, v in part.items()}
        for k, v in part.items():
            out[k][start : start + len(v)] = v
    return out


def _simulate_chunk(
    ctx: SimContext, batch: PlanBatch, tokens: float | None
) -> dict[str, np.ndarray]:
    """Simulate the plans that pass the rules; the others get their reason and NaN times."""
    reason = batch.check(ctx.model)
    if ctx.setup.torch:
        reason = np.where(
            (reason == 0) & torch_framework_violations(batch), REASON_TORCH_ONLY_DP, reason
        ).astype(reason.dtype)
    valid = reason == 0
    if valid.all():
        return _simulate_valid(ctx, batch, tokens)
    idx = np.flatnonzero(valid)
    part = _simulate_valid(ctx, batch.take(idx), tokens)
    out: dict[str, np.ndarray] = {}
    for name, values in part.items():
        if values.dtype.kind == "f":
            full = np.full(batch.n, np.nan)
        else:
            full = np.zeros(batch.n, dtype=values.dtype)
        full[idx] = values
        out[name] = full
    out["reason_code"] = np.where(valid, out["reason_code"], reason).astype(np.int16)
    out["memory_capacity_bytes"][:] = float(ctx.cluster.gpu.hbm_bytes)
    return out


def _simulate_valid(
    ctx: SimContext, batch: PlanBatch, tokens: float | None
) -> dict[str, np.ndarray]:
    model, profile, setup = ctx.model, ctx.profile, ctx.setup
    with np.errstate(all="ignore"):
        microbatches = batch.num_microbatches
        m = microbatches.astype(np.float64)
        k = plan_costs(ctx, batch, m)
        p, v = batch.pp, batch.vpp
        # The slowest node sets the pace of the steady state; the fill and drain pass through
        # the other stages at the mean speed. So the stages run at the mean speed and the last
        # stage (the critical one) carries the straggler's extra time as extra work.
        chunk_mean = k.chunk_fwd_mean_s + k.chunk_bwd_mean_s
        straggle = v * (k.chunk_fwd_s + k.chunk_bwd_s - chunk_mean)
        pipe = pipeline_times(
            chunk_s=chunk_mean,
            chunk_bwd_s=k.chunk_bwd_mean_s,
            first_extra_fwd_s=k.first_fwd_s,
            first_extra_bwd_s=k.first_bwd_s,
            last_extra_s=k.last_fwd_s + k.last_bwd_s + straggle,
            p2p_s=k.p2p_s,
            pp=p,
            vpp=v,
            m=m,
        )
        any_uneven = batch.any_uneven
        if any_uneven:  # the slowest stage sets the pace: the schedule's exact recurrence
            pipe = uneven_pipeline_times(k, batch, model.num_layers, m, pipe)
        tail_first = k.dp_first_s + k.optimizer_first_s
        tail_last = k.dp_last_s + k.optimizer_last_s
        has_sync = k.embedding_sync_s > 0
        end_first = pipe.pipeline_s + tail_first
        end_last = pipe.last_stage_end_s + tail_last
        synced = pipe.pipeline_s + k.embedding_sync_s + np.maximum(tail_first, tail_last)
        end = np.where(has_sync, synced, np.maximum(end_first, end_last))
        last_binds = np.where(has_sync, tail_last > tail_first, end_last > end_first)
        optimizer_s = np.where(last_binds, k.optimizer_last_s, k.optimizer_first_s)
        dp_comm_s = end - pipe.pipeline_s - optimizer_s
        iteration = end + profile.iteration_overhead_s

        mem = memory_per_gpu(
            model,
            setup,
            profile.runtime_reserved_bytes,
            tp=batch.tp,
            pp=p,
            dp=batch.dp,
            mb=batch.mb,
            vpp=v,
            zero=batch.zero,
            sp=batch.sp,
            recompute=batch.recompute,
            num_microbatches=microbatches,
            params=k.params,
            layer_bytes=k.layer_bytes,
            layers=stage_layer_counts(batch, model.num_layers) if any_uneven else None,
            cp=batch.cp,
            expert_states=k.expert_state_bytes,
        )
        capacity = float(ctx.cluster.gpu.hbm_bytes)
        reason = np.where(mem.total_bytes > capacity, REASON_OOM, 0).astype(np.int16)

        gpus = batch.num_gpus.astype(np.float64)
        tokens_per_iteration = batch.gb.astype(np.float64) * model.seq_length
        tokens_per_s = tokens_per_iteration / iteration
        # against the bf16 peak under fp8, as NVIDIA's tables report FP8 training
        peak = ctx.cluster.gpu.peak(setup.compute_dtype)
        model_flop = model.training_flop_per_token()
        mfu = tokens_per_s * model_flop / (gpus * peak)
        hfu = (
            tokens_per_s
            * (model_flop + _recompute_flop_per_token(model, batch.recompute))
            / (gpus * peak)
        )

        out: dict[str, np.ndarray] = {
            "iteration_time_s": iteration,
            "compute_s": m * k.busy_compute_s,
            "recompute_s": m * k.busy_recompute_s,
            "tp_comm_s": m * k.busy_tp_comm_s,
            "pp_comm_s": pipe.p2p_exposed_s,
            "bubble_s": pipe.bubble_s,
            "dp_comm_s": dp_comm_s,
            "optimizer_s": optimizer_s,
            "overhead_s": m * k.busy_overhead_s + profile.iteration_overhead_s,
            "memory_per_gpu_bytes": mem.total_bytes,
            "memory_states_bytes": mem.states_bytes,
            "memory_activations_bytes": mem.activations_bytes,
            "memory_capacity_bytes": np.full(batch.n, capacity),
            "feasible": reason == 0,
            "reason_code": reason,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "hfu": hfu,
            "tflops_per_gpu": mfu * peak / 1e12,  # model FLOPs (as MFU)
            "hw_tflops_per_gpu": hfu * peak / 1e12,  # with recompute, as Megatron reports
        }
        if setup.fp8:  # the same model FLOPs against the fp8 peak, shown beside it
            out["mfu_fp8_peak"] = mfu * peak / ctx.cluster.gpu.peak("fp8")
        for key in BREAKDOWN_COLUMNS:
            out[key] = denoise(out[key], iteration)
        if tokens is not None:
            training_time = tokens / tokens_per_s
            gpu_hours = gpus * training_time / HOUR_S
            out["training_time_s"] = training_time
            out["gpu_hours"] = gpu_hours
            out["cost_usd"] = gpu_hours * ctx.cluster.price_per_gpu_hour_usd
    return out


# The parts of ``iteration_time_s`` (they sum to it).
BREAKDOWN_COLUMNS = (
    "compute_s",
    "recompute_s",
    "tp_comm_s",
    "pp_comm_s",
    "bubble_s",
    "dp_comm_s",
    "optimizer_s",
    "overhead_s",
)
# A part smaller than this fraction of the iteration is rounding noise (a difference of
# nearly equal times, e.g. a fully hidden gradient all-reduce: ~1e-17 of the iteration)
NOISE_REL = 1e-12


def denoise(x: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    """``x`` with the values within ``NOISE_REL x |scale|`` of zero, and -0.0, set to 0.0."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.abs(x) <= NOISE_REL * np.abs(scale), 0.0, x) + 0.0


def _recompute_flop_per_token(model: ModelSpec, recompute: np.ndarray) -> np.ndarray:
    """FLOPs redone per token by activation recomputation (full: every layer's forward;
    selective: the attention core's forward)."""
    L = model.num_layers
    core = model.attention_core_flop_per_token()
    full = L * (2.0 * model.active_layer_matmul_params() + core)
    selective = L * core
    rc = np.asarray(recompute)
    return np.where(rc == 2, full, np.where(rc == 1, selective, 0.0))


def as_batch(plans: PlanBatch | ParallelPlan | list[ParallelPlan] | pd.DataFrame) -> PlanBatch:
    if isinstance(plans, PlanBatch):
        return plans
    if isinstance(plans, ParallelPlan):
        return PlanBatch.from_plans([plans])
    if isinstance(plans, pd.DataFrame):
        return PlanBatch.from_frame(plans)
    return PlanBatch.from_plans(list(plans))


def simulate(
    model: ModelSpec,
    cluster: ClusterSpec,
    plans: PlanBatch | ParallelPlan | list[ParallelPlan] | pd.DataFrame,
    *,
    profile: Profile | str | None = None,
    setup: Setup | None = None,
    tokens: float | None = None,
) -> pd.DataFrame:
    """Predict one training iteration of every plan; one row per plan.

    Columns: the plan (num_gpus, tp, cp, pp, dp, micro_batch, global_batch, num_microbatches,
    recompute, sequence_parallel, vpp, zero, dp_overlap); ``iteration_time_s`` and its
    breakdown (``compute_s``, ``recompute_s``, ``tp_comm_s``, ``pp_comm_s``, ``bubble_s``,
    ``dp_comm_s``, ``optimizer_s``, ``overhead_s``), ``memory_per_gpu_bytes`` (worst stage,
    with ``memory_states_bytes``, ``memory_activations_bytes``, ``memory_capacity_bytes``),
    ``feasible`` and ``reason`` (why not), ``tokens_per_s``, ``mfu`` (model FLOPs
    utilization, no recompute in the numerator), ``hfu`` (hardware FLOPs utilization, with
    recompute), ``tflops_per_gpu`` and ``hw_tflops_per_gpu`` (the same two as TFLOP/s per
    GPU; Megatron-LM's published figures count recompute, like the latter); with
    ``tokens``: ``training_time_s``, ``gpu_hours`` and ``cost_usd``.
    Plans that break a rule are kept with ``feasible=False``, their reason, and NaN times.
    """
    batch = as_batch(plans)
    ctx = make_context(model, cluster, profile, setup)
    cols = simulate_arrays(ctx, batch, tokens)
    return results_frame(batch, cols)


def results_frame(batch: PlanBatch, cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """Plan columns + result columns, with ``reason`` as a readable categorical."""
    df = batch.to_frame()
    codes = cols.pop("reason_code")
    for name, arr in cols.items():
        df[name] = arr
    df["reason"] = pd.Categorical.from_codes(codes, categories=list(REASONS))
    return df


__all__ = [
    "RECOMPUTE_MODES",
    "PlanCosts",
    "SimContext",
    "as_batch",
    "make_context",
    "plan_costs",
    "results_frame",
    "simulate",
    "simulate_arrays",
]
