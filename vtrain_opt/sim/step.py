"""The vectorized core: iteration time, breakdown, memory and cost of N plans at once.

No Python loop runs over plans: every quantity is an array of shape (N,). The op costs
of a layer depend only on (micro-batch, tp, sequence parallelism, recompute) and, through
the node-straggler factor, the node count, so they are computed once per distinct
combination and gathered back to the plans. The last stage runs at the slowest node's
pace, the others at the mean speed (``sim/costs.py``, stragglers).

The iteration is the pipeline phase (``sim/schedule.py``), then each stage's exposed
data-parallel gradient communication and optimizer step, then a fixed per-iteration
framework overhead. The breakdown columns sum exactly to ``iteration_time_s``:

    compute_s + recompute_s + tp_comm_s + pp_comm_s + bubble_s
        + dp_comm_s + optimizer_s + overhead_s == iteration_time_s

where the first three and the per-micro-batch overhead are the busy time of the last
pipeline stage (the slowest: it carries the logits and the loss).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import TypeVar

import numpy as np
import pandas as pd

from vtrain_opt.profiles import Profile, load_profile
from vtrain_opt.sim.costs import (
    EdgeCosts,
    LayerCosts,
    edge_costs,
    layer_costs,
    p2p_costs,
    straggler_factor,
)
from vtrain_opt.sim.costs_torch import (
    torch_accumulate_s,
    torch_edge_costs,
    torch_layer_costs,
    torch_optimizer_s,
)
from vtrain_opt.sim.memory import (
    StageParams,
    layer_activation_bytes,
    memory_per_gpu,
    stage_params,
)
from vtrain_opt.sim.ops import OpModel, members_per_node
from vtrain_opt.sim.schedule import pipeline_times
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

# Megatron-LM's default gradient bucket for overlapping the reduction with the backward.
DP_BUCKET_PARAMS = 40e6
HOUR_S = 3600.0


@dataclass(frozen=True)
class SimContext:
    """Everything shared by the plans of one simulation: model, cluster, profile, setup."""

    model: ModelSpec
    cluster: ClusterSpec
    profile: Profile
    setup: Setup

    @cached_property
    def ops(self) -> OpModel:
        return OpModel(self.profile, self.cluster, self.setup)


def make_context(
    model: ModelSpec,
    cluster: ClusterSpec,
    profile: Profile | str | None = None,
    setup: Setup | None = None,
) -> SimContext:
    """Resolve defaults: the GPU's shipped profile, bf16 with flash attention where supported."""
    if not isinstance(profile, Profile):
        profile = load_profile(profile, gpu=cluster.gpu.name)
    if setup is None:
        setup = Setup(
            dtype=_default_dtype(cluster, profile),
            attention="flash" if cluster.gpu.flash_attention else "unfused",
        )
    if setup.attention == "flash" and not cluster.gpu.flash_attention:
        raise ValueError(
            f"{cluster.gpu.name} has no FlashAttention kernels; use attention 'unfused'"
        )
    cluster.gpu.peak(setup.dtype)  # raises if the GPU has no such dtype
    if profile.tables:
        device = profile.provenance.get("device", profile.gpu)
        if profile.gpu != cluster.gpu.name:
            raise ValueError(
                f"profile {profile.name!r} was measured on {device} ({profile.gpu}), not "
                f"{cluster.gpu.name}; use a profile of {cluster.gpu.name} or --gpu {profile.gpu}"
            )
        if setup.dtype not in profile.tables:
            raise ValueError(
                f"profile {profile.name!r} was measured in {', '.join(profile.tables)}, not "
                f"{setup.dtype}; use --dtype {next(iter(profile.tables))} or another profile"
            )
    return SimContext(model, cluster, profile, setup)


def _default_dtype(cluster: ClusterSpec, profile: Profile) -> str:
    """bf16 where the GPU has it, else fp16; a device with neither (a measured CPU profile
    has only the dtypes it was measured in) gets its measured dtype."""
    peaks = cluster.gpu.peak_flop_per_s
    usable = [d for d in ("bf16", "fp16", "fp32") if d in peaks]
    if not usable or usable[0] != "fp32":
        return "bf16" if "bf16" in peaks else "fp16"
    measured = [d for d in usable if d in profile.tables]
    return measured[0] if measured else usable[0]


@dataclass
class PlanCosts:
    """Per-plan costs shared by the closed forms and the reference replay; arrays (N,)."""

    chunk_fwd_s: np.ndarray  # one model chunk (L/(pp*vpp) layers), forward, incl. overhead
    chunk_bwd_s: np.ndarray  # its backward, incl. recomputation
    # the same on a node of mean speed (no straggler factor): the stages off the critical path
    chunk_fwd_mean_s: np.ndarray
    chunk_bwd_mean_s: np.ndarray
    first_fwd_s: np.ndarray  # first stage's extra (embedding)
    first_bwd_s: np.ndarray
    last_fwd_s: np.ndarray  # last stage's extra (final norm, logits, loss)
    last_bwd_s: np.ndarray
    p2p_s: np.ndarray
    dp_first_s: np.ndarray  # exposed gradient communication of the first stage
    dp_last_s: np.ndarray
    optimizer_first_s: np.ndarray
    optimizer_last_s: np.ndarray
    embedding_sync_s: np.ndarray  # tied embeddings with pp > 1: first <-> last all-reduce
    # breakdown of the last stage's busy time per micro-batch
    busy_compute_s: np.ndarray
    busy_recompute_s: np.ndarray
    busy_tp_comm_s: np.ndarray
    busy_overhead_s: np.ndarray
    # for the memory model
    params: StageParams
    layer_bytes: tuple[np.ndarray, np.ndarray]  # activation bytes per layer: stored, transient


def _layer_costs(
    ctx: SimContext,
    mb: np.ndarray,
    tp: np.ndarray,
    sp: np.ndarray,
    recompute: np.ndarray,
    scale: np.ndarray | float = 1.0,
) -> LayerCosts:
    """One layer's costs under the setup's framework (its op list)."""
    if ctx.setup.torch:
        return torch_layer_costs(ctx.model, ctx.ops, mb, recompute, scale)
    return layer_costs(ctx.model, ctx.ops, mb, tp, sp, recompute, scale)


def _edge_costs(
    ctx: SimContext, mb: np.ndarray, tp: np.ndarray, sp: np.ndarray, scale: np.ndarray | float = 1.0
) -> EdgeCosts:
    """The first and last stages' extra work under the setup's framework."""
    if ctx.setup.torch:
        return torch_edge_costs(ctx.model, ctx.ops, mb, scale)
    return edge_costs(ctx.model, ctx.ops, mb, tp, sp, scale)


def _torch_optimizer(
    ops: OpModel, batch: PlanBatch, params: np.ndarray, dp: np.ndarray, m: np.ndarray
) -> np.ndarray:
    """A plain PyTorch step's tail: autograd's gradient accumulation of every micro-batch
    after the first, then fused AdamW (over a 1/dp shard with ZeRO >= 1)."""
    local = np.where(batch.zero >= 1, params / dp, params)
    return (m - 1.0) * torch_accumulate_s(ops, params) + torch_optimizer_s(ops, local)


def _decode(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mb, tp, sp, recompute) of ``plan_costs``' combination keys."""
    return (key >> 16) & 0xFFFFFF, (key >> 3) & 0x1FFF, ((key >> 2) & 1).astype(bool), key & 3


_Costs = TypeVar("_Costs", LayerCosts, EdgeCosts)


def _take(costs: _Costs, index: np.ndarray, n: int) -> _Costs:
    """The costs of ``n`` combinations (fields may be scalars) for the combinations ``index``
    names."""

    def column(x: np.ndarray | float) -> np.ndarray:
        return np.broadcast_to(np.asarray(x, dtype=np.float64), (n,))[index]

    return replace(costs, **{f.name: column(getattr(costs, f.name)) for f in fields(costs)})


def plan_costs(ctx: SimContext, batch: PlanBatch, m: np.ndarray | None = None) -> PlanCosts:
    """Op costs of every plan, gathered from the distinct (mb, tp, sp, recompute, nodes)
    combinations (the node count matters only through the straggler factor)."""
    model, ops, profile, setup = ctx.model, ctx.ops, ctx.profile, ctx.setup
    gpn = ctx.cluster.gpus_per_node
    if profile.node_straggler > 0:
        nodes = -(-(batch.tp.astype(np.int64) * batch.pp * batch.dp) // gpn)
    else:
        nodes = np.ones(batch.n, dtype=np.int64)
    key = (
        (nodes << 40)
        | (batch.mb.astype(np.int64) << 16)
        | (batch.tp.astype(np.int64) << 3)
        | (batch.sp.astype(np.int64) << 2)
        | batch.recompute.astype(np.int64)
    )
    codes, uniq = pd.factorize(key, sort=False)
    uniq = np.asarray(uniq, dtype=np.int64)
    u_mb, u_tp, u_sp, u_rc = _decode(uniq)
    u_scale = straggler_factor(profile.node_straggler, uniq >> 40)
    # Node stragglers: the last stage runs at the slowest node's pace (it carries the steady
    # state of the schedule), the others at the mean speed (the fill and drain pass them once).
    lc = _layer_costs(ctx, u_mb, u_tp, u_sp, u_rc, u_scale)
    ec = _edge_costs(ctx, u_mb, u_tp, u_sp, u_scale)
    if profile.node_straggler > 0:
        # the mean-speed costs do not depend on the node count: one per (mb, tp, sp, rc)
        sub_codes, sub = pd.factorize(uniq & ((1 << 40) - 1), sort=False)
        s_mb, s_tp, s_sp, s_rc = _decode(np.asarray(sub, dtype=np.int64))
        lc_mean = _take(_layer_costs(ctx, s_mb, s_tp, s_sp, s_rc), sub_codes, len(sub))
        ec_mean = _take(_edge_costs(ctx, s_mb, s_tp, s_sp), sub_codes, len(sub))
    else:
        lc_mean, ec_mean = lc, ec
    u_stored, u_transient = layer_activation_bytes(model, setup, u_mb, u_tp, u_sp, u_rc)

    def gather(x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(x, uniq.shape)[codes]

    def embedding(c: EdgeCosts, part: str) -> np.ndarray:
        return gather(getattr(c, f"embed_{part}_compute_s") + getattr(c, f"embed_{part}_comm_s"))

    def fwd_bwd(c: LayerCosts) -> tuple[np.ndarray, np.ndarray]:
        fwd = c.fwd_compute_s + c.fwd_comm_s + c.host_stall_fwd_s
        bwd = (
            c.bwd_compute_s
            + c.bwd_comm_s
            + c.recompute_compute_s
            + c.recompute_comm_s
            + c.host_stall_bwd_s
        )
        return gather(fwd), gather(bwd)

    p, v, t, d = batch.pp, batch.vpp, batch.tp, batch.dp
    single = p == 1
    layer_fwd, layer_bwd = fwd_bwd(lc)
    layer_fwd_mean, layer_bwd_mean = fwd_bwd(lc_mean)
    layer_stall = gather(lc.host_stall_fwd_s + lc.host_stall_bwd_s)
    layer_compute = gather(lc.fwd_compute_s + lc.bwd_compute_s)
    layer_recompute = gather(lc.recompute_compute_s)
    layer_comm = gather(lc.fwd_comm_s + lc.bwd_comm_s + lc.recompute_comm_s)
    # the first stage runs at the mean speed unless it is also the last (pp = 1)
    first_fwd = np.where(single, embedding(ec, "fwd"), embedding(ec_mean, "fwd"))
    first_bwd = np.where(single, embedding(ec, "bwd"), embedding(ec_mean, "bwd"))
    last_fwd = gather(ec.head_fwd_compute_s + ec.head_fwd_comm_s)
    last_bwd = gather(ec.head_bwd_compute_s + ec.head_bwd_comm_s)
    head_compute = gather(ec.head_fwd_compute_s + ec.head_bwd_compute_s)
    head_comm = gather(ec.head_fwd_comm_s + ec.head_bwd_comm_s)
    embed_compute = gather(ec.embed_fwd_compute_s + ec.embed_bwd_compute_s)
    embed_comm = gather(ec.embed_fwd_comm_s + ec.embed_bwd_comm_s)

    m = batch.num_microbatches.astype(np.float64) if m is None else m
    layers_per_chunk = model.num_layers / (p * v)
    # Megatron's per-micro-batch scheduling; a plain PyTorch loop's is in its host dispatch
    mb_overhead = 0.0 if setup.torch else profile.microbatch_overhead_s
    chunk_fwd = layers_per_chunk * layer_fwd + mb_overhead
    chunk_bwd = layers_per_chunk * layer_bwd
    chunk_fwd_mean = layers_per_chunk * layer_fwd_mean + mb_overhead
    chunk_bwd_mean = layers_per_chunk * layer_bwd_mean
    c = p2p_costs(model, ops, batch.mb, t, d, p)

    # Busy time of the last stage per micro-batch (the single stage's when pp = 1).
    stage_layers = model.num_layers / p
    busy_compute = (
        stage_layers * layer_compute + head_compute + np.where(single, embed_compute, 0.0)
    )
    busy_recompute = stage_layers * layer_recompute
    busy_tp_comm = stage_layers * layer_comm + head_comm + np.where(single, embed_comm, 0.0)
    busy_overhead = v * mb_overhead + stage_layers * layer_stall

    # ---- data-parallel gradient communication and optimizer, first and last stage -----------
    # The collectives depend only on (tp, pp, dp): computed once per distinct triple.
    key2 = (t.astype(np.int64) << 40) | (p.astype(np.int64) << 20) | d.astype(np.int64)
    codes2, uniq2 = pd.factorize(key2, sort=False)
    uniq2 = np.asarray(uniq2, dtype=np.int64)
    u_t, u_p, u_d = uniq2 >> 40, (uniq2 >> 20) & 0xFFFFF, uniq2 & 0xFFFFF
    u_params = stage_params(model, u_t, u_p)
    u_opt_scale = straggler_factor(profile.node_straggler, -(-(u_t * u_p * u_d) // gpn))
    u_per_node = members_per_node(u_d, u_t, gpn)

    def gather2(x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(x, uniq2.shape)[codes2]

    def collectives(stage: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        grad_bytes = stage * setup.grad_bytes
        weight_bytes = stage * setup.weight_bytes
        return (
            # data-parallel ranks sit tp GPUs apart
            gather2(ops.collective_s("all_reduce", grad_bytes, u_d, u_per_node, u_t)),
            gather2(ops.collective_s("reduce_scatter", grad_bytes, u_d, u_per_node, u_t)),
            gather2(ops.collective_s("all_gather", weight_bytes, u_d, u_per_node, u_t)),
        )

    chunk_fwd_first = np.where(single, chunk_fwd, chunk_fwd_mean)
    chunk_bwd_first = np.where(single, chunk_bwd, chunk_bwd_mean)
    window_first = v * chunk_bwd_first + first_bwd  # the last backward, for overlap
    window_last = v * chunk_bwd + last_bwd
    step_first = v * (chunk_fwd_first + chunk_bwd_first) + first_fwd + first_bwd
    step_last = v * (chunk_fwd + chunk_bwd) + last_fwd + last_bwd

    zero3 = batch.zero == 3
    any_zero3 = bool(zero3.any())

    def exposed_dp(stage: np.ndarray, window: np.ndarray, step: np.ndarray) -> np.ndarray:
        all_reduce, rs, ag = collectives(stage)
        bucket_share = gather2(np.minimum(1.0, DP_BUCKET_PARAMS / np.maximum(stage, 1.0)))
        whole = np.where(batch.zero == 0, all_reduce, rs + ag)
        overlapped = np.maximum(whole - window, whole * bucket_share)
        per_iteration = np.where(batch.dp_overlap, overlapped, whole)
        if not any_zero3:
            return per_iteration
        # ZeRO-3 gathers the weights for every forward and backward and reduce-scatters the
        # gradients of every micro-batch, prefetching behind the compute when overlapped.
        z3 = 2 * ag + rs
        z3_exposed = np.where(batch.dp_overlap, np.maximum(z3 - step, z3 * bucket_share), z3)
        return np.where(zero3, m * z3_exposed, per_iteration)

    def optimizer(stage: np.ndarray) -> np.ndarray:
        if setup.torch:
            return _torch_optimizer(ops, batch, gather2(stage), gather2(u_d), m) * gather2(
                u_opt_scale
            )
        # fused Adam over the local (ZeRO: sharded) parameters, plus zeroing the gradients
        per_param = 2 * setup.grad_bytes + 2 * setup.optimizer_bytes + setup.weight_bytes
        full = ops.memory_s(stage * (per_param + setup.grad_bytes), 4, "optimizer")
        sharded = ops.memory_s(stage * (per_param / u_d + setup.grad_bytes), 4, "optimizer")
        return np.where(
            batch.zero >= 1, gather2(sharded * u_opt_scale), gather2(full * u_opt_scale)
        )

    tied = model.tied_embeddings
    sync_per_node = np.where(u_t * u_d * (u_p - 1) < gpn, 2, 1)
    u_sync = ops.collective_s(
        "all_reduce",
        u_params.embedding * setup.grad_bytes,
        2,
        sync_per_node,
        np.maximum(u_t * u_d * (u_p - 1), 1),  # the first and the last stage
    )
    sync = gather2(np.where(tied & (u_p > 1), u_sync, 0.0))
    return PlanCosts(
        chunk_fwd_s=chunk_fwd,
        chunk_bwd_s=chunk_bwd,
        chunk_fwd_mean_s=chunk_fwd_mean,
        chunk_bwd_mean_s=chunk_bwd_mean,
        first_fwd_s=first_fwd,
        first_bwd_s=first_bwd,
        last_fwd_s=last_fwd,
        last_bwd_s=last_bwd,
        p2p_s=c,
        dp_first_s=exposed_dp(u_params.first, window_first, step_first),
        dp_last_s=exposed_dp(u_params.last, window_last, step_last),
        optimizer_first_s=optimizer(u_params.first),
        optimizer_last_s=optimizer(u_params.last),
        embedding_sync_s=sync,
        busy_compute_s=busy_compute,
        busy_recompute_s=busy_recompute,
        busy_tp_comm_s=busy_tp_comm,
        busy_overhead_s=busy_overhead,
        params=StageParams(
            **{f.name: gather2(getattr(u_params, f.name)) for f in fields(StageParams)}
        ),
        layer_bytes=(gather(u_stored), gather(u_transient)),
    )


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
        )
        capacity = float(ctx.cluster.gpu.hbm_bytes)
        reason = np.where(mem.total_bytes > capacity, REASON_OOM, 0).astype(np.int16)

        gpus = batch.num_gpus.astype(np.float64)
        tokens_per_iteration = batch.gb.astype(np.float64) * model.seq_length
        tokens_per_s = tokens_per_iteration / iteration
        peak = ctx.cluster.gpu.peak(setup.dtype)
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
    s, h, L = model.seq_length, model.hidden_size, model.num_layers
    full = L * (2.0 * model.layer_matmul_params() + 4.0 * s * h)
    selective = L * 4.0 * s * h
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

    Columns: the plan (num_gpus, tp, pp, dp, micro_batch, global_batch, num_microbatches,
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
