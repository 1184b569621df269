"""Per-plan op costs of the vectorized core, shared by the closed forms and the replay.

The op costs of a layer depend only on (micro-batch, tp, sequence parallelism, recompute)
and, through the node-straggler factor, the node count, so they are computed once per
distinct combination and gathered back to the plans; the data-parallel collectives and
the optimizer once per distinct (tp, pp, dp). The setup's framework picks the op list
(``sim/costs.py`` for Megatron, ``sim/costs_torch.py`` for plain PyTorch).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TypeVar

import numpy as np
import pandas as pd

from vtrain_opt.sim.context import SimContext
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
from vtrain_opt.sim.fp8 import weight_cast_s
from vtrain_opt.sim.memory import StageParams, layer_activation_bytes, stage_params
from vtrain_opt.sim.moe import MoECosts, moe_costs, with_experts
from vtrain_opt.sim.ops import OpModel, members_per_domain
from vtrain_opt.spec.plan import PlanBatch
from vtrain_opt.spec.stages import chunk_layers, stage_layer_counts

# Megatron-LM's default gradient bucket for overlapping the reduction with the backward.
DP_BUCKET_PARAMS = 40e6


@dataclass
class PlanCosts:
    """Per-plan costs shared by the closed forms and the reference replay; arrays (N,)."""

    chunk_fwd_s: np.ndarray  # one model chunk of a middle stage, forward, incl. overhead
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
    # one layer (forward, backward; at the last stage's pace and at the mean speed) and the
    # per-micro-batch overhead of each chunk: uneven stages (``sim/uneven.py``)
    layer_fwd_s: np.ndarray
    layer_bwd_s: np.ndarray
    layer_fwd_mean_s: np.ndarray
    layer_bwd_mean_s: np.ndarray
    microbatch_overhead_s: float
    # context parallelism's ring, per layer (0 without cp; ``sim/costs.py``): the replay's
    # ring tasks. Attention steps at the last stage's pace and at the mean speed.
    ring_attn_fwd_s: np.ndarray
    ring_attn_bwd_s: np.ndarray
    ring_attn_fwd_mean_s: np.ndarray
    ring_attn_bwd_mean_s: np.ndarray
    ring_send_fwd_s: np.ndarray
    ring_send_bwd_s: np.ndarray
    ring_home_s: np.ndarray
    # for the memory model
    params: StageParams
    layer_bytes: tuple[np.ndarray, np.ndarray]  # activation bytes per layer: stored, transient
    # MoE models (sim/moe.py): the MoE block's per-layer costs (the replay's all-to-all
    # tasks) and the routed experts' states per GPU of the first, a middle and the last stage
    moe: MoECosts | None = None
    expert_state_bytes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def _layer_costs(
    ctx: SimContext,
    mb: np.ndarray,
    tp: np.ndarray,
    sp: np.ndarray,
    recompute: np.ndarray,
    scale: np.ndarray | float = 1.0,
    cp: np.ndarray | float = 1.0,
) -> LayerCosts:
    """One layer's costs under the setup's framework (its op list)."""
    if ctx.setup.torch:
        return torch_layer_costs(ctx.model, ctx.ops, mb, recompute, scale)
    return layer_costs(ctx.model, ctx.ops, mb, tp, sp, recompute, scale, cp)


def _edge_costs(
    ctx: SimContext,
    mb: np.ndarray,
    tp: np.ndarray,
    sp: np.ndarray,
    scale: np.ndarray | float = 1.0,
    cp: np.ndarray | float = 1.0,
) -> EdgeCosts:
    """The first and last stages' extra work under the setup's framework."""
    if ctx.setup.torch:
        return torch_edge_costs(ctx.model, ctx.ops, mb, scale)
    return edge_costs(ctx.model, ctx.ops, mb, tp, sp, scale, cp)


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
    combinations (the node count matters only through the straggler factor), and cp where
    a plan has context parallelism."""
    model, ops, profile, setup = ctx.model, ctx.ops, ctx.profile, ctx.setup
    gpn = ctx.cluster.gpus_per_node
    any_cp = batch.any_cp
    if profile.node_straggler > 0:
        nodes = -(-(batch.tp.astype(np.int64) * batch.pp * batch.dp * batch.cp) // gpn)
    else:
        nodes = np.ones(batch.n, dtype=np.int64)
    key = (
        (nodes << 40)
        | (batch.mb.astype(np.int64) << 16)
        | (batch.tp.astype(np.int64) << 3)
        | (batch.sp.astype(np.int64) << 2)
        | batch.recompute.astype(np.int64)
    )
    if any_cp:  # and cp: the keys of the distinct combinations, then cp beside them
        key_codes, key_uniq = pd.factorize(key, sort=False)
        key = (key_codes.astype(np.int64) << 20) | batch.cp.astype(np.int64)
    codes, uniq = pd.factorize(key, sort=False)
    uniq = np.asarray(uniq, dtype=np.int64)
    u_cp: np.ndarray | float = 1.0
    if any_cp:
        u_cp, uniq = uniq & 0xFFFFF, np.asarray(key_uniq, dtype=np.int64)[uniq >> 20]
    u_mb, u_tp, u_sp, u_rc = _decode(uniq)
    u_scale = straggler_factor(profile.node_straggler, uniq >> 40)
    # Node stragglers: the last stage runs at the slowest node's pace (it carries the steady
    # state of the schedule), the others at the mean speed (the fill and drain pass them once).
    lc = _layer_costs(ctx, u_mb, u_tp, u_sp, u_rc, u_scale, u_cp)
    ec = _edge_costs(ctx, u_mb, u_tp, u_sp, u_scale, u_cp)
    if profile.node_straggler > 0:
        # the mean-speed costs do not depend on the node count: one per (mb, tp, sp, rc, cp)
        sub_key = uniq & ((1 << 40) - 1)
        if any_cp:
            sub_key = (sub_key << 20) | np.asarray(u_cp, dtype=np.int64)
        sub_codes, sub = pd.factorize(sub_key, sort=False)
        sub = np.asarray(sub, dtype=np.int64)
        s_cp: np.ndarray | float = 1.0
        if any_cp:
            s_cp, sub = sub & 0xFFFFF, sub >> 20
        s_mb, s_tp, s_sp, s_rc = _decode(sub)
        lc_mean = _take(_layer_costs(ctx, s_mb, s_tp, s_sp, s_rc, 1.0, s_cp), sub_codes, len(sub))
        ec_mean = _take(_edge_costs(ctx, s_mb, s_tp, s_sp, 1.0, s_cp), sub_codes, len(sub))
    else:
        lc_mean, ec_mean = lc, ec
    u_stored, u_transient = layer_activation_bytes(model, setup, u_mb, u_tp, u_sp, u_rc, u_cp)

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
    windows = gather(lc.fwd_compute_s), gather(lc.bwd_compute_s)
    moe = moe_costs(ctx, batch, windows) if model.is_moe else None
    if moe is not None:  # MoE layers: router, experts, all-to-all (sim/moe.py)
        scale = gather(np.asarray(u_scale, dtype=np.float64))
        layer_fwd, layer_bwd = layer_fwd + moe.fwd_s(scale), layer_bwd + moe.bwd_s(scale)
        layer_fwd_mean, layer_bwd_mean = layer_fwd_mean + moe.fwd_s(), layer_bwd_mean + moe.bwd_s()
        layer_compute = layer_compute + scale * (moe.fwd_compute_s + moe.bwd_compute_s)
        layer_recompute = layer_recompute + scale * moe.recompute_compute_s
        layer_comm = layer_comm + moe.a2a_fwd_s + moe.a2a_bwd_s + moe.recompute_a2a_s
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
    n_first, n_mid, n_last = stage_layer_counts(batch, model.num_layers)
    layers_per_chunk = n_mid / v if batch.any_uneven else model.num_layers / (p * v)
    # Megatron's per-micro-batch scheduling; a plain PyTorch loop's is in its host dispatch
    mb_overhead = 0.0 if setup.torch else profile.microbatch_overhead_s
    chunk_fwd = layers_per_chunk * layer_fwd + mb_overhead
    chunk_bwd = layers_per_chunk * layer_bwd
    chunk_fwd_mean = layers_per_chunk * layer_fwd_mean + mb_overhead
    chunk_bwd_mean = layers_per_chunk * layer_bwd_mean
    c = p2p_costs(model, ops, batch.mb, t, d, p, batch.cp)

    # Busy time of the last stage per micro-batch (the single stage's when pp = 1).
    stage_layers = n_last
    busy_compute = (
        stage_layers * layer_compute + head_compute + np.where(single, embed_compute, 0.0)
    )
    busy_recompute = stage_layers * layer_recompute
    busy_tp_comm = stage_layers * layer_comm + head_comm + np.where(single, embed_comm, 0.0)
    busy_overhead = v * mb_overhead + stage_layers * layer_stall

    # ---- data-parallel gradient communication and optimizer, first and last stage -----------
    # The collectives depend only on (tp, pp, dp): computed once per distinct triple. With
    # context parallelism the gradients reduce (and ZeRO shards) over the dp x cp GPUs
    # holding the same weights, tp apart (ranks ordered tp-cp-dp-pp), as Megatron-core does.
    if any_cp:
        d = d * batch.cp
    key2 = (t.astype(np.int64) << 40) | (p.astype(np.int64) << 20) | d.astype(np.int64)
    any_uneven = batch.any_uneven
    if any_uneven:  # and the first and last stages' layers
        tpd_codes, tpd = pd.factorize(key2, sort=False)
        key2 = (
            (tpd_codes.astype(np.int64) << 24)
            | (batch.first.astype(np.int64) << 12)
            | batch.last.astype(np.int64)
        )
    codes2, uniq2 = pd.factorize(key2, sort=False)
    uniq2 = np.asarray(uniq2, dtype=np.int64)
    if any_uneven:
        u_first, u_last = (uniq2 >> 12) & 0xFFF, uniq2 & 0xFFF
        uniq2 = np.asarray(tpd, dtype=np.int64)[uniq2 >> 24]
    u_t, u_p, u_d = uniq2 >> 40, (uniq2 >> 20) & 0xFFFFF, uniq2 & 0xFFFFF
    if any_uneven:
        u_layers = stage_layer_counts(
            PlanBatch(tp=u_t, pp=u_p, dp=u_d, mb=1, gb=1, first=u_first, last=u_last),
            model.num_layers,
        )
        u_params = stage_params(model, u_t, u_p, u_layers)
    else:
        u_params = stage_params(model, u_t, u_p)
    u_opt_scale = straggler_factor(profile.node_straggler, -(-(u_t * u_p * u_d) // gpn))
    domain = ctx.cluster.domain_gpus  # what the collectives see as one node
    u_per_node = members_per_domain(u_d, u_t, domain)

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
    if any_uneven:  # the first and last stages' own layers
        uneven = batch.uneven
        lb_first = np.where(single, layer_bwd, layer_bwd_mean)
        lf_first = np.where(single, layer_fwd, layer_fwd_mean)
        window_first = np.where(uneven, n_first * lb_first + first_bwd, window_first)
        window_last = np.where(uneven, n_last * layer_bwd + last_bwd, window_last)
        step_first = np.where(
            uneven,
            n_first * (lf_first + lb_first) + v * mb_overhead + first_fwd + first_bwd,
            step_first,
        )
        step_last = np.where(
            uneven,
            n_last * (layer_fwd + layer_bwd) + v * mb_overhead + last_fwd + last_bwd,
            step_last,
        )

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

    def optimizer(stage: np.ndarray, layers: np.ndarray | None = None) -> np.ndarray:
        """The step of a stage of ``stage`` local parameters and ``layers`` layers (default:
        an even share)."""
        if setup.torch:
            return _torch_optimizer(ops, batch, gather2(stage), gather2(u_d), m) * gather2(
                u_opt_scale
            )
        # fused Adam over the local (ZeRO: sharded) parameters, plus zeroing the gradients
        per_param = 2 * setup.grad_bytes + 2 * setup.optimizer_bytes + setup.weight_bytes
        full = ops.memory_s(stage * (per_param + setup.grad_bytes), 4, "optimizer")
        sharded = ops.memory_s(stage * (per_param / u_d + setup.grad_bytes), 4, "optimizer")
        if setup.fp8:  # the new weights' fp8 copies and transposes (sim/fp8.py)
            layers = model.num_layers / u_p if layers is None else layers
            cast = weight_cast_s(ops, layers * model.layer_matmul_params() / u_t, layers)
            full, sharded = full + cast, sharded + cast
        return np.where(
            batch.zero >= 1, gather2(sharded * u_opt_scale), gather2(full * u_opt_scale)
        )

    tied = model.tied_embeddings
    sync_per_node = np.where(u_t * u_d * (u_p - 1) < domain, 2, 1)
    u_sync = ops.collective_s(
        "all_reduce",
        u_params.embedding * setup.grad_bytes,
        2,
        sync_per_node,
        np.maximum(u_t * u_d * (u_p - 1), 1),  # the first and the last stage
    )
    sync = gather2(np.where(tied & (u_p > 1), u_sync, 0.0))
    costs = PlanCosts(
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
        optimizer_first_s=optimizer(u_params.first, u_layers[0] if any_uneven else None),
        optimizer_last_s=optimizer(u_params.last, u_layers[2] if any_uneven else None),
        embedding_sync_s=sync,
        busy_compute_s=busy_compute,
        busy_recompute_s=busy_recompute,
        busy_tp_comm_s=busy_tp_comm,
        busy_overhead_s=busy_overhead,
        layer_fwd_s=layer_fwd,
        layer_bwd_s=layer_bwd,
        layer_fwd_mean_s=layer_fwd_mean,
        layer_bwd_mean_s=layer_bwd_mean,
        microbatch_overhead_s=mb_overhead,
        ring_attn_fwd_s=gather(lc.ring_attn_fwd_s),
        ring_attn_bwd_s=gather(lc.ring_attn_bwd_s),
        ring_attn_fwd_mean_s=gather(lc_mean.ring_attn_fwd_s),
        ring_attn_bwd_mean_s=gather(lc_mean.ring_attn_bwd_s),
        ring_send_fwd_s=gather(lc.ring_send_fwd_s),
        ring_send_bwd_s=gather(lc.ring_send_bwd_s),
        ring_home_s=gather(lc.ring_home_s),
        params=StageParams(
            **{f.name: gather2(getattr(u_params, f.name)) for f in fields(StageParams)}
        ),
        layer_bytes=(gather(u_stored), gather(u_transient)),
    )
    if moe is None:
        return costs
    tails = (window_first, window_last)
    return with_experts(ctx, batch, costs, moe, (n_first, n_last), tails, DP_BUCKET_PARAMS)


def stage_chunk_times(
    k: PlanCosts, batch: PlanBatch, num_layers: int, idx: np.ndarray, p: int, v: int
) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward time of model chunk j on stage i for one micro-batch, arrays
    (p, v, len(idx)) for the plans ``idx`` (all with pipeline p and v virtual stages).

    Stages run at the mean speed; the last stage's last chunk carries the slowest node's
    extra time (as the closed forms carry it) and the head; the first stage's chunk 0 the
    embedding."""
    grid = chunk_layer_grid(batch, num_layers, idx, p, v)
    ovh = k.microbatch_overhead_s
    fwd = grid * k.layer_fwd_mean_s[idx] + ovh
    bwd = grid * k.layer_bwd_mean_s[idx]
    n_last = grid[p - 1].sum(axis=0)
    fwd[p - 1, v - 1] += n_last * (k.layer_fwd_s[idx] - k.layer_fwd_mean_s[idx])
    bwd[p - 1, v - 1] += n_last * (k.layer_bwd_s[idx] - k.layer_bwd_mean_s[idx])
    fwd[0, 0] += k.first_fwd_s[idx]
    bwd[0, 0] += k.first_bwd_s[idx]
    fwd[p - 1, v - 1] += k.last_fwd_s[idx]
    bwd[p - 1, v - 1] += k.last_bwd_s[idx]
    return fwd, bwd


def chunk_layer_grid(
    batch: PlanBatch, num_layers: int, idx: np.ndarray, p: int, v: int
) -> np.ndarray:
    """Layers of model chunk j on stage i, array (p, v, len(idx)) for the plans ``idx``."""
    layers = {name: x[idx] for name, x in chunk_layers(batch, num_layers).items()}
    grid = np.empty((p, v, len(idx)))
    grid[:] = layers["middle"]
    grid[0, :] = layers["first"]
    grid[0, 0] = layers["first0"]
    grid[p - 1, :] = layers["last"]
    grid[p - 1, v - 1] = layers["last_end"]
    return grid
