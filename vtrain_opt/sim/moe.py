"""Mixture-of-Experts and Multi-head Latent Attention in the vectorized core.

A MoE layer, per micro-batch, on one GPU (Megatron-core's alltoall token dispatcher):

* router: a GEMM (T x h) @ (h x E) over the T tokens the GPU holds (seq/cp, /tp with
  sequence parallelism, which Megatron requires for MoE with tp > 1), its softmax/top-k;
* permute the T*k routed copies of the tokens (k = moe_router_topk) by expert, then the
  dispatch all-to-all over the expert-parallel (EP) group, T*k*h activations a rank
  (``OpModel.all_to_all_s``: NVLink inside the NVLink domain, the adapters across it);
  with expert tensor parallelism (ETP) an all-gather of them over the ETP group;
* the E/ep local experts as one grouped GEMM each way, at the GEMM efficiency of their
  per-expert token count T*k*ep*etp/E x imbalance (the busiest rank sets the pace; a
  capacity factor caps the imbalance: tokens beyond it are dropped), widths moe_ffn/etp;
* the reverse (reduce-scatter over ETP, combine all-to-all, unpermute and the weighted sum);
* shared experts as a dense tensor-parallel MLP of num_shared x moe_ffn on the layer's tokens.

The backward repeats both all-to-alls and does the dgrad and wgrad GEMMs. Not overlapped,
the all-to-all is exposed; with ``Setup.moe_a2a_overlap`` (DualPipe, Megatron-core's
overlapped EP communication) it runs behind another micro-batch's compute of a MoE layer
(attention and MoE block) and only its excess shows. With ``Setup.moe_node_limit`` the
dispatch is DeepEP's: a token crosses to each remote node of its experts once, to at most
that many nodes, so fewer bytes cross the network. The layers are averaged: each layer carries the MoE share of
the layers (``ModelSpec.moe_layer_share``) of the MoE block and the rest of the dense MLP.

Expert-data parallelism (Megatron-core): the tp x cp x dp GPUs of a stage are refolded for
the experts into etp x ep x edp, so edp = tp*cp*dp / (ep*etp). Expert weights are divided
over ep*etp; their gradients reduce, and their optimizer states shard (ZeRO >= 1), over
the edp GPUs holding the same experts, ep*etp apart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from vtrain_opt.sim.context import SimContext
from vtrain_opt.sim.fp8 import layer_cast_s
from vtrain_opt.sim.mtp import with_mtp
from vtrain_opt.sim.ops import OpModel, members_per_domain
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import PlanBatch
from vtrain_opt.spec.stages import stage_layer_counts

RECOMPUTE_SELECTIVE, RECOMPUTE_FULL = 1, 2
PlanCostsT = TypeVar("PlanCostsT", bound=Any)


def _f(x: object) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def layer_gemms(
    model: ModelSpec, ops: OpModel, tokens: np.ndarray, t: np.ndarray, compute_scale: Any
) -> tuple[Any, Any, list[Any]]:
    """(forward, backward, column-parallel wgrads) of a layer's attention GEMMs (MLA's down and
    up projections, or QKV with a head size of its own) and the dense MLP of the non-MoE
    share of the layers, for models the dense formulas do not cover."""
    h, f, a = float(model.hidden_size), float(model.ffn), float(model.num_attention_heads)
    fp8 = ops.setup.fp8
    col: list[tuple[Any, Any]] = []  # column-parallel (N, K): split over tp
    other: list[tuple[Any, Any]] = []  # row-parallel and duplicated ones
    mla: Any = model  # MLA's ranks are set (spec/moe.check)
    if model.multi_latent_attention:
        qk, rope, v = mla.qk_head_dim, mla.qk_pos_emb_head_dim, mla.v_head_dim
        kv_lora, q_lora = float(mla.kv_lora_rank), mla.q_lora_rank
        if q_lora is None:
            col.append((a * (qk + rope) / t, h))
        else:  # the down projections are duplicated on the tp ranks, as Megatron-core's
            other.append((float(q_lora), h))
            col.append((a * (qk + rope) / t, float(q_lora)))
        other.append((kv_lora + rope, h))
        col.append((a * (qk + v) / t, kv_lora))
        other.append((h, a * v / t))
    else:
        q, kvh = a * model.head_dim, float(model.kv_hidden_size)
        col.append(((q + 2 * kvh) / t, h))
        other.append((h, q / t))
    dense = 1.0 - model.moe_layer_share
    mlp: list[tuple[Any, Any]] = [((2.0 if model.swiglu else 1.0) * f / t, h), (h, f / t)]
    fwd: Any
    bwd: Any
    fwd, bwd = layer_cast_s(ops, tokens, col + other)
    mlp_cast_fwd, mlp_cast_bwd = layer_cast_s(ops, tokens, mlp)
    fwd, bwd = fwd + dense * mlp_cast_fwd, bwd + dense * mlp_cast_bwd
    weights = [1.0] * (len(col) + len(other)) + [dense, dense]
    for w, (n, k) in zip(weights, col + other + mlp, strict=True):
        fwd = fwd + w * ops.gemm_s(tokens, n, k, fp8=fp8)
        bwd = bwd + w * (ops.gemm_s(tokens, k, n, fp8=fp8) + ops.gemm_s(k, n, tokens, fp8=fp8))
    if model.is_moe:  # the dense MLP's activation, priced by costs.py on every layer
        act = (3.0 if model.swiglu else 2.0) * tokens * f / t * ops.setup.act_bytes
        op = "swiglu" if model.swiglu else "bias_gelu"
        fwd = fwd - model.moe_layer_share * ops.memory_s(act, 1, op)
        bwd = bwd - model.moe_layer_share * ops.memory_s(2 * act, 2, f"{op}_bwd")
    wgrad = [
        sum(ops.gemm_s(k, n, tokens, fp8=fp8) for n, k in col) * compute_scale,
        dense * ops.gemm_s(h, mlp[0][0], tokens, fp8=fp8) * compute_scale,
    ]
    return fwd, bwd, wgrad


@dataclass
class MoECosts:
    """A MoE layer's additions, averaged over the layers (x the MoE share), arrays (N,)."""

    fwd_compute_s: np.ndarray  # router, permutes, experts, shared experts
    bwd_compute_s: np.ndarray
    a2a_fwd_s: np.ndarray  # exposed dispatch + combine (and ETP gathers), forward
    a2a_bwd_s: np.ndarray
    recompute_compute_s: np.ndarray
    recompute_a2a_s: np.ndarray
    stored_bytes: np.ndarray  # activations kept for the backward, beyond the dense layer's
    transient_bytes: np.ndarray  # dispatch buffers (and the rebuilt layer under full recompute)

    def fwd_s(self, scale: np.ndarray | float = 1.0) -> np.ndarray:
        """The forward's addition to a layer, compute at the pace ``scale``."""
        return scale * self.fwd_compute_s + self.a2a_fwd_s

    def bwd_s(self, scale: np.ndarray | float = 1.0) -> np.ndarray:
        """The backward's (with recomputation) addition to a layer."""
        return scale * (self.bwd_compute_s + self.recompute_compute_s) + (
            self.a2a_bwd_s + self.recompute_a2a_s
        )


def _node_limit(model: Any, setup: Any, ep: np.ndarray, ep_node: np.ndarray) -> Any:
    """The most nodes a token's dispatch reaches: ``Setup.moe_node_limit`` where given, else
    the model's group-limited routing (``moe_router_group_topk`` groups, each of
    num_experts / moe_router_num_groups experts, spanning as many nodes as its experts fill:
    DeepSeek-V3's 8 groups over ep 64 on 8 nodes are 4 nodes), else None (no limit)."""
    if setup.moe_node_limit is not None:
        return setup.moe_node_limit
    if not model.moe_router_group_topk:
        return None
    groups = float(model.moe_router_num_groups)
    nodes_per_group = np.maximum(ep / (groups * ep_node), 1.0)
    return model.moe_router_group_topk * nodes_per_group


def _block(
    model: ModelSpec,
    ops: OpModel,
    mb: np.ndarray,
    tp: np.ndarray,
    sp: np.ndarray,
    rc: np.ndarray,
    cp: np.ndarray,
    ep: np.ndarray,
    etp: np.ndarray,
) -> MoECosts:
    """The MoE block of one layer for distinct (mb, tp, sp, recompute, cp, ep, etp)."""
    setup = ops.setup
    b, t, c, e, et = _f(mb), _f(tp), _f(cp), _f(ep), _f(etp)
    h, a_bytes = float(model.hidden_size), float(setup.act_bytes)
    n_exp, k = float(model.num_experts or 1), float(model.moe_router_topk or 1)
    f = float(model.moe_ffn)
    tokens = b * model.seq_length / c  # the sequence shard of one GPU
    local = np.where(sp, tokens / t, tokens)  # the tokens it routes
    imb = setup.moe_imbalance
    if setup.moe_capacity_factor is not None:
        imb = min(imb, setup.moe_capacity_factor)
    per_expert = local * k * e * et / n_exp * imb  # tokens of one local expert, busiest rank
    experts = n_exp / e  # local experts
    routed = per_expert * experts  # token copies the GPU's experts process
    fp8 = setup.fp8
    gate = 2.0 if model.swiglu else 1.0
    up: tuple[Any, Any] = (gate * f / et, h)  # (N, K) of each expert GEMM
    down: tuple[Any, Any] = (h, f / et)

    def grouped(m: Any, n: Any, kk: Any, backward: bool) -> Any:
        if not backward:
            return ops.gemm_s(m, n, kk, batch=experts, fp8=fp8)
        return ops.gemm_s(m, kk, n, batch=experts, fp8=fp8) + ops.gemm_s(
            kk, n, m, batch=experts, fp8=fp8
        )

    cast_fwd, cast_bwd = layer_cast_s(ops, routed, (up, down))
    act = (3.0 if model.swiglu else 2.0) * routed * f / et * a_bytes
    op = "swiglu" if model.swiglu else "bias_gelu"
    expert_fwd = grouped(per_expert, *up, False) + grouped(per_expert, *down, False)
    expert_fwd = expert_fwd + cast_fwd + ops.memory_s(act, 1, op)
    expert_bwd = grouped(per_expert, *up, True) + grouped(per_expert, *down, True)
    expert_bwd = expert_bwd + cast_bwd + ops.memory_s(2 * act, 2, f"{op}_bwd")
    # router (fp32 logits, softmax and top-k over E) and the permutes of the routed copies
    router_fwd = ops.gemm_s(local, n_exp, h) + ops.memory_s(local * n_exp * 12.0, 3, "router")
    router_bwd = ops.gemm_s(local, h, n_exp) + ops.gemm_s(h, n_exp, local)
    router_bwd = router_bwd + ops.memory_s(local * n_exp * 16.0, 3, "router_bwd")
    moved = local * k * imb * h * a_bytes
    permute = ops.memory_s(2 * moved, 1, "moe_permute") + ops.memory_s(
        3 * moved, 2, "moe_unpermute"
    )
    shared_fwd: Any = 0.0
    shared_bwd: Any = 0.0
    if model.num_shared_experts:
        fs = float(model.num_shared_experts) * f
        sh: list[tuple[Any, Any]] = [(gate * fs / t, h), (h, fs / t)]
        sh_act = (3.0 if model.swiglu else 2.0) * tokens * fs / t * a_bytes
        sh_cast_fwd, sh_cast_bwd = layer_cast_s(ops, tokens, sh)
        shared_fwd = sum(ops.gemm_s(tokens, n, kk, fp8=fp8) for n, kk in sh) + sh_cast_fwd
        shared_fwd = shared_fwd + ops.memory_s(sh_act, 1, op)
        shared_bwd = sum(
            ops.gemm_s(tokens, kk, n, fp8=fp8) + ops.gemm_s(kk, n, tokens, fp8=fp8) for n, kk in sh
        )
        shared_bwd = shared_bwd + sh_cast_bwd + ops.memory_s(2 * sh_act, 2, f"{op}_bwd")
    fwd = router_fwd + permute + expert_fwd + shared_fwd
    bwd = router_bwd + permute + expert_bwd + shared_bwd

    # dispatch and combine over the EP group (ranks etp apart), ETP gathers inside its group
    domain = ops.cluster.domain_gpus
    ep_node = members_per_domain(e, et, domain)
    dispatch, combine, inter_scale = moved, moved, 1.0
    node_limit = _node_limit(model, setup, e, ep_node)
    if node_limit is not None:  # DeepEP-style dispatch (DeepSeek-V3 Sec. 3.2.2)
        # a token crosses to each remote node of its experts once (at most node_limit nodes)
        # and is forwarded over NVLink there; under fp8 the dispatch is in fp8, the combine
        # in bf16. Uniform routing: a token's k experts touch N (1 - (1 - 1/N)^k) of N nodes
        nodes = np.maximum(np.ceil(e / ep_node), 1.0)
        touched = np.minimum(nodes * (1.0 - (1.0 - 1.0 / nodes) ** k), node_limit)
        per_expert = k * (e - ep_node) / np.maximum(e, 1.0)  # remote copies without it
        dedup = touched * (nodes - 1) / nodes
        inter_scale = np.divide(dedup, per_expert, out=np.ones_like(dedup), where=per_expert > 0)
        if setup.fp8:
            dispatch = moved / a_bytes
    a2a = ops.all_to_all_s(dispatch, e, ep_node, et, inter_scale)
    a2a = a2a + ops.all_to_all_s(combine, e, ep_node, et, inter_scale)
    etp_node = members_per_domain(et, np.ones_like(et), domain)
    gathered = moved * et
    a2a = (
        a2a
        + ops.collective_s("all_gather", gathered, et, etp_node)
        + ops.collective_s("reduce_scatter", gathered, et, etp_node)
    )
    a2a_fwd = a2a_bwd = a2a  # exposed; ``moe_costs`` hides it behind compute if overlapped
    share = model.moe_layer_share
    rcode = np.asarray(rc)
    full = rcode == RECOMPUTE_FULL
    # kept for the backward: routed copies at the experts (input, gate/up output, activation
    # output), router probabilities, the shared experts' MLP; minus the dense MLP's part
    kept = routed * (h + (gate + 1.0) * f / et) * a_bytes + local * n_exp * 4.0
    if model.num_shared_experts:
        kept = kept + (gate + 1.0) * tokens * model.num_shared_experts * f / t * a_bytes
    dense_mlp = (3.0 if model.swiglu else 2.0) * a_bytes * tokens * model.ffn / t
    delta = share * (kept - dense_mlp)
    buffers = 2.0 * routed * h * a_bytes  # dispatch receive and combine send buffers
    return MoECosts(
        fwd_compute_s=share * fwd,
        bwd_compute_s=share * bwd,
        a2a_fwd_s=share * a2a_fwd,
        a2a_bwd_s=share * a2a_bwd,
        recompute_compute_s=np.where(full, share * fwd, 0.0),
        recompute_a2a_s=np.where(full, share * a2a_fwd, 0.0),
        stored_bytes=np.where(full, 0.0, delta),
        transient_bytes=buffers + np.where(full, delta, 0.0),
    )


def moe_costs(
    ctx: SimContext, batch: PlanBatch, windows: tuple[np.ndarray, np.ndarray]
) -> MoECosts:
    """The MoE additions of every plan, computed once per distinct (mb, tp, sp, recompute,
    cp, ep, etp). ``windows``: the rest of a layer's forward and backward compute, which an
    overlapped all-to-all runs behind (with the MoE block's)."""
    cp = getattr(batch, "cp", np.ones(batch.n, dtype=np.int64))
    cols = np.stack([batch.mb, batch.tp, batch.sp, batch.recompute, cp, batch.ep, batch.etp])
    uniq, codes = np.unique(cols.astype(np.int64), axis=1, return_inverse=True)
    codes = codes.ravel()
    u = _block(ctx.model, ctx.ops, *(uniq[i] for i in range(7)))
    out = MoECosts(**{k: np.broadcast_to(v, (uniq.shape[1],))[codes] for k, v in vars(u).items()})
    share = ctx.model.moe_layer_share
    if ctx.setup.moe_a2a_overlap:  # a MoE layer's all-to-all behind another micro-batch's
        for name, window, block in (
            ("a2a_fwd_s", windows[0], out.fwd_compute_s),
            ("a2a_bwd_s", windows[1], out.bwd_compute_s),
        ):
            layer = window + block / share  # the compute of one MoE layer
            setattr(out, name, share * np.maximum(getattr(out, name) / share - layer, 0.0))
        full = batch.recompute == RECOMPUTE_FULL
        out.recompute_a2a_s = np.where(full, out.a2a_fwd_s, 0.0)
    return out


def expert_params(
    model: ModelSpec, layers: np.ndarray, ep: np.ndarray, etp: np.ndarray
) -> np.ndarray:
    """Routed-expert weights on one GPU of a stage of ``layers`` layers."""
    return _f(layers) * model.routed_expert_params_per_layer() / (_f(ep) * _f(etp))


def expert_data_parallel(batch: PlanBatch) -> np.ndarray:
    """Megatron-core's expert-data-parallel size: tp*cp*dp / (ep*etp)."""
    cp = getattr(batch, "cp", 1)
    return np.maximum(batch.tp * cp * batch.dp // np.maximum(batch.ep * batch.etp, 1), 1)


def expert_tails(
    ctx: SimContext,
    batch: PlanBatch,
    layers: tuple[np.ndarray, np.ndarray],
    windows: tuple[np.ndarray, np.ndarray],
    bucket_params: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gradient communication first, last; optimizer first, last) of the routed experts'
    weights of the first and last stage: reduced (all-reduce, or reduce-scatter +
    all-gather with ZeRO) over the edp GPUs ep*etp apart, overlapped with the last
    backward as the dense gradients are; Adam over them (sharded over edp with ZeRO)."""
    ops, setup = ctx.ops, ctx.setup
    edp = expert_data_parallel(batch)
    stride = batch.ep * batch.etp
    per_node = members_per_domain(edp, stride, ctx.cluster.domain_gpus)
    out_dp, out_opt = [], []
    for n, window in zip(layers, windows, strict=True):
        params = expert_params(ctx.model, n, batch.ep, batch.etp)
        g = params * setup.grad_bytes
        ar = ops.collective_s("all_reduce", g, edp, per_node, stride)
        rs_ag = ops.collective_s("reduce_scatter", g, edp, per_node, stride) + ops.collective_s(
            "all_gather", params * setup.weight_bytes, edp, per_node, stride
        )
        whole = np.where(batch.zero == 0, ar, rs_ag)
        share = np.minimum(1.0, bucket_params / np.maximum(params, 1.0))
        overlapped = np.maximum(whole - window, whole * share)
        out_dp.append(np.where(batch.dp_overlap, overlapped, whole))
        per_param = 2 * setup.grad_bytes + 2 * setup.optimizer_bytes + setup.weight_bytes
        sharded = np.where(batch.zero >= 1, per_param / edp, per_param) + setup.grad_bytes
        opt = ops.memory_s(params * sharded, 4, "optimizer")
        if setup.fp8:  # the new weights' fp8 copies and transposes
            opt = opt + ops.memory_s(4.0 * params, 1, "fp8_cast")
        out_opt.append(np.where(params > 0, opt, 0.0))
    return out_dp[0], out_dp[1], out_opt[0], out_opt[1]


def expert_state_bytes(
    ctx: SimContext, batch: PlanBatch, layers: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bytes of the routed experts' weights, gradients and optimizer states on one GPU of
    the first, a middle and the last stage (ZeRO over the edp group; fp8 copies whole)."""
    setup = ctx.setup
    edp = _f(expert_data_parallel(batch))
    w, g, o = float(setup.weight_bytes), float(setup.grad_bytes), float(setup.optimizer_bytes)
    z = batch.zero
    per_param = (
        np.select(
            [z == 0, z == 1, z == 2],
            [w + g + o, w + g + o / edp, w + (g + o) / edp],
            (w + g + o) / edp,
        )
        + setup.fp8_weight_copy_bytes
    )
    return tuple(expert_params(ctx.model, n, batch.ep, batch.etp) * per_param for n in layers)  # type: ignore[return-value]


def with_experts(
    ctx: SimContext,
    batch: PlanBatch,
    costs: PlanCostsT,
    moe: MoECosts,
    layers: tuple[np.ndarray, np.ndarray],
    windows: tuple[np.ndarray, np.ndarray],
    bucket_params: float,
) -> PlanCostsT:
    """``costs`` (a PlanCosts) with the routed experts' gradient communication and optimizer
    step in the first and last stages' tails, their states and the MoE activations."""
    dp_first, dp_last, opt_first, opt_last = expert_tails(
        ctx, batch, layers, windows, bucket_params
    )
    stored, transient = costs.layer_bytes
    out = replace(
        costs,
        dp_first_s=costs.dp_first_s + dp_first,
        dp_last_s=costs.dp_last_s + dp_last,
        optimizer_first_s=costs.optimizer_first_s + opt_first,
        optimizer_last_s=costs.optimizer_last_s + opt_last,
        layer_bytes=(stored + moe.stored_bytes, transient + moe.transient_bytes),
        moe=moe,
        expert_state_bytes=expert_state_bytes(
            ctx, batch, stage_layer_counts(batch, ctx.model.num_layers)
        ),
    )
    # DeepSeek-V3's multi-token prediction on the last stage (sim/mtp.py)
    return with_mtp(ctx, batch, out) if ctx.model.mtp_num_layers else out
