"""Per-micro-batch costs of the pieces of a pipeline stage, vectorized over plans.

For each plan (arrays of shape (N,)) this computes, on one GPU of a tensor-parallel
group: one transformer layer's forward and backward (compute and tensor-parallel
communication kept apart, recomputation apart), the extra work of the first stage
(embedding) and of the last stage (final norm, logits, vocab-parallel cross-entropy),
and the point-to-point transfer between stages. ``sim/schedule.py`` assembles these
into stage times and the pipeline schedule; ``sim/timeline.py`` replays them.

Layer model (Megatron-LM, per micro-batch of T = b*s tokens, tp = t):
  forward  = norm, QKV GEMM, [rotary], attention core, output GEMM, TP collective,
             bias-dropout-add, norm, MLP up GEMM, activation, MLP down GEMM,
             TP collective, bias-dropout-add
  backward = dgrad + wgrad GEMM for every forward GEMM, attention backward,
             about twice the bytes of each memory-bound op, and the mirrored TP
             collectives (all-reduce without sequence parallelism; all-gather and
             reduce-scatter with it). Those of the QKV and MLP-up layers (the input
             gradients) run behind the same layers' weight-gradient GEMMs (Megatron's
             async tensor-parallel all-reduce): only what the GEMM does not cover shows.
  recompute: none; selective = the attention core's forward again; full = the
             whole layer forward again (with its TP collectives) before its backward.

Stragglers: a synchronous step spanning n nodes waits for the slowest one. With node
speeds spread by ``node_straggler`` (relative standard deviation), every GPU op (not the
communication) takes ``straggler_factor`` = 1 + node_straggler * E[max of n standard
normals] times longer; one node (n = 1) is unaffected. The costs take the factor as
``compute_scale``; ``sim/step.py`` applies it to the last pipeline stage, which carries the
schedule's steady state, and runs the other stages (the fill and drain) at the mean speed.

Host-bound layers: the host dispatches a layer's forward in ``host_layer_s`` (twice
that for the backward, plus the recomputed part) while the GPU runs what was already
queued, so each pass takes max(host time, GPU time). The excess of the host time over
the GPU time is kept apart as ``host_stall_*`` (it shows as framework overhead).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from vtrain_opt.sim.fp8 import layer_cast_s
from vtrain_opt.sim.moe import layer_gemms as moe_layer_gemms
from vtrain_opt.sim.ops import OpModel, members_per_domain
from vtrain_opt.spec.model import ModelSpec

RECOMPUTE_NONE, RECOMPUTE_SELECTIVE, RECOMPUTE_FULL = 0, 1, 2
# Ops a Megatron GPT layer's forward dispatches (norms, GEMMs, attention, dropouts, residual
# adds, collectives, and the views between them), to scale the host time of extra ops.
HOST_OPS_PER_LAYER = 24.0


@dataclass
class LayerCosts:
    """Costs of one transformer layer for one micro-batch, each an array (N,) in seconds."""

    fwd_compute_s: np.ndarray
    fwd_comm_s: np.ndarray
    bwd_compute_s: np.ndarray  # backward proper, without recomputation
    bwd_comm_s: np.ndarray
    recompute_compute_s: np.ndarray  # the part of the forward redone in the backward
    recompute_comm_s: np.ndarray
    host_stall_fwd_s: np.ndarray  # time the GPU waits for the host to dispatch the forward
    host_stall_bwd_s: np.ndarray  # likewise for the backward (with recomputation)
    # context parallelism's ring attention, per layer (0 without cp): one ring step's
    # attention forward / backward (at the plan's compute pace), one step's send/recv of the
    # local K,V (forward) and of K,V + dK,dV (backward), and the last dK,dV sent home
    ring_attn_fwd_s: np.ndarray | float = 0.0
    ring_attn_bwd_s: np.ndarray | float = 0.0
    ring_send_fwd_s: np.ndarray | float = 0.0
    ring_send_bwd_s: np.ndarray | float = 0.0
    ring_home_s: np.ndarray | float = 0.0


@dataclass
class EdgeCosts:
    """Extra per-micro-batch work of the first stage (embedding) and last stage (head)."""

    embed_fwd_compute_s: np.ndarray
    embed_fwd_comm_s: np.ndarray
    embed_bwd_compute_s: np.ndarray
    embed_bwd_comm_s: np.ndarray
    head_fwd_compute_s: np.ndarray
    head_fwd_comm_s: np.ndarray
    head_bwd_compute_s: np.ndarray
    head_bwd_comm_s: np.ndarray


def _f(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def overlap(host_s: np.ndarray, gpu_s: np.ndarray, sharpness: float) -> np.ndarray:
    """Time of a pass whose host dispatch and GPU execution overlap imperfectly.

    A smooth maximum (host^k + gpu^k)^(1/k): k -> infinity is perfect overlap (the max),
    k = 1 no overlap at all (the sum). Never less than either part.
    """
    k = sharpness
    hi = np.maximum(host_s, gpu_s)
    lo = np.minimum(host_s, gpu_s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hi * (1.0 + np.where(hi > 0, lo / hi, 0.0) ** k) ** (1.0 / k)


def fused_softmax(batch_heads: np.ndarray, seq_length: np.ndarray | float) -> np.ndarray:
    """Whether Megatron's fused scale-mask-softmax kernel runs: micro-batch x local heads a
    multiple of 4 and 16 < s <= 4096 with s a multiple of 4; else PyTorch's unfused path."""
    s = np.asarray(seq_length)
    return (np.mod(batch_heads, 4) == 0) & (s > 16) & (s <= 4096) & (np.mod(s, 4) == 0)


def straggler_factor(node_straggler: float, nodes: np.ndarray) -> np.ndarray:
    """How much longer GPU work takes when a synchronous step spans ``nodes`` nodes whose
    speeds vary with relative spread ``node_straggler``: it runs at the slowest node's pace.

    E[max of n standard normals] by Blom's approximation, ndtri((n - 0.375) / (n + 0.25)):
    0 at n = 1, within 5% of the exact value from n = 2 on (0.59 vs 0.56 at n = 2, 2.34 vs
    2.33 at n = 64).
    """
    n = np.maximum(np.asarray(nodes, dtype=np.float64), 1.0)
    return 1.0 + node_straggler * ndtri((n - 0.375) / (n + 0.25))


def layer_costs(
    model: ModelSpec,
    ops: OpModel,
    mb: np.ndarray,
    tp: np.ndarray,
    sp: np.ndarray,
    recompute: np.ndarray,
    compute_scale: np.ndarray | float = 1.0,
    cp: np.ndarray | float = 1.0,
) -> LayerCosts:
    """One layer's forward/backward/recompute costs for each plan.

    ``compute_scale`` multiplies the GPU ops (``straggler_factor`` of the plan's nodes).
    ``cp``: context parallelism, each GPU holds seq/cp tokens (``ring_attention``)."""
    b, t, c = _f(mb), _f(tp), _f(cp)
    h, f = float(model.hidden_size), float(model.ffn)
    s = float(model.seq_length) / c  # the tokens of a sequence on this GPU
    kvh = float(model.kv_hidden_size)
    d = float(model.head_dim)
    a_bytes = float(ops.setup.act_bytes)
    tokens = b * s
    tokens_rep = np.where(sp, tokens / t, tokens)  # tokens of the norm/dropout/residual ops
    local_heads = model.num_attention_heads / t
    dropout = ops.setup.dropout_p(model) > 0

    # ---- GEMMs: (M, N, K) of Y = X W for QKV, output projection, MLP up and down -------------
    qkv_n = (h + 2 * kvh) / t
    up_n = (2.0 if model.swiglu else 1.0) * f / t
    shapes = ((qkv_n, h), (h, h / t), (up_n, h), (h, f / t))  # (N, K) of each GEMM
    fp8 = ops.setup.fp8  # Transformer Engine's fp8 GEMMs, with their casts (sim/fp8.py)
    cast_fwd, cast_bwd = layer_cast_s(ops, tokens, shapes)
    gemm_fwd = sum(ops.gemm_s(tokens, n, k, fp8=fp8) for n, k in shapes) + cast_fwd
    gemm_bwd = (
        sum(
            ops.gemm_s(tokens, k, n, fp8=fp8) + ops.gemm_s(k, n, tokens, fp8=fp8) for n, k in shapes
        )
        + cast_bwd
    )
    # weight-gradient GEMMs of the column-parallel layers (QKV, MLP up): the input-gradient
    # collective runs behind them (Megatron's async tensor-parallel all-reduce)
    wgrad_col = [
        ops.gemm_s(k, n, tokens, fp8=fp8) * compute_scale for n, k in (shapes[0], shapes[2])
    ]
    if model.is_moe or not model._plain_heads:  # MLA, own head size, MoE's share (sim/moe.py)
        gemm_fwd, gemm_bwd, wgrad_col = moe_layer_gemms(model, ops, tokens, t, compute_scale)

    # ---- attention core ----------------------------------------------------------------------
    bh = b * local_heads
    softmax_host_ops: np.ndarray | float = 0.0  # ops dispatched beyond a standard layer
    if ops.setup.attention == "flash":
        attn_fwd = ops.flash_attention_s(bh, s, d)
        attn_bwd = ops.flash_attention_s(bh, s, d, backward=True)
    else:
        scores_bytes = bh * s * s * a_bytes
        elems = bh * s * s
        # Megatron's fused scale-mask-softmax kernel runs only when b * heads/tp is a multiple
        # of 4 (and 16 < s <= 4096); otherwise PyTorch's path upcasts to fp32 and runs scale,
        # mask-fill, softmax and casts as separate kernels: about 37 (forward) and 41
        # (backward) bytes per score instead of 2A and 3A, and more ops to dispatch in each
        # pass (``unfused_softmax_host_ops``, in units of a layer's HOST_OPS_PER_LAYER).
        fused = fused_softmax(bh, s)
        softmax_fwd = np.where(
            fused,
            ops.memory_s(2 * scores_bytes, 1, "softmax"),
            ops.memory_s(elems * (a_bytes + 35.0), 5, "softmax"),
        )
        softmax_bwd = np.where(
            fused,
            ops.memory_s(3 * scores_bytes, 1, "softmax_bwd"),
            ops.memory_s(elems * (a_bytes + 39.0), 5, "softmax_bwd"),
        )
        softmax_host_ops = np.where(fused, 0.0, ops.profile.unfused_softmax_host_ops)
        attn_fwd = (
            ops.gemm_s(s, s, d, batch=bh)  # Q K^T
            + softmax_fwd
            + (ops.memory_s(2.5 * scores_bytes, 1, "dropout") if dropout else 0.0)  # + mask
            + ops.gemm_s(s, d, s, batch=bh)  # P V
        )
        attn_bwd = (
            ops.gemm_s(s, s, d, batch=bh)  # dP = dO V^T
            + ops.gemm_s(s, d, s, batch=bh)  # dV = P^T dO
            + (ops.memory_s(2.5 * scores_bytes, 1, "dropout_bwd") if dropout else 0.0)
            + softmax_bwd
            + ops.gemm_s(s, d, s, batch=bh)  # dQ = dS K
            + ops.gemm_s(s, d, s, batch=bh)  # dK = dS^T Q
        )

    # ---- memory-bound ops: bytes moved; each backward moves about twice its forward ------------
    rep = tokens_rep * h * a_bytes  # one replicated activation tensor
    norm = "layernorm" if model.has_bias else "rmsnorm"
    mem_ops: list[tuple[str, np.ndarray, int]] = [(norm, 2 * rep, 2)]  # (op, fwd bytes, count)
    dropout_mask = tokens_rep * h if dropout else 0.0  # 1-byte mask
    if model.has_bias or dropout:
        mem_ops.append(("bias_dropout_add", 3 * rep + dropout_mask, 2))
    else:
        mem_ops.append(("residual_add", 3 * rep, 2))
    if model.swiglu:
        mem_ops.append(("swiglu", 3 * tokens * f / t * a_bytes, 1))  # read gate, up; write
    else:
        mem_ops.append(("bias_gelu", 2 * tokens * f / t * a_bytes, 1))
    if not model.learned_positions:
        mem_ops.append(("rotary", 2 * tokens * (h + kvh) / t * a_bytes, 1))  # on Q and K
    mem_fwd = sum(n * ops.memory_s(nbytes, 1, op) for op, nbytes, n in mem_ops)
    mem_bwd = sum(n * ops.memory_s(2 * nbytes, 2, f"{op}_bwd") for op, nbytes, n in mem_ops)

    # ---- tensor-parallel collectives ----------------------------------------------------------
    per_node = members_per_domain(tp, np.ones_like(tp), ops.cluster.domain_gpus)
    act = tokens * h * a_bytes
    ar = ops.collective_s("all_reduce", act, t, per_node)
    ag_rs = ops.collective_s("all_gather", act, t, per_node) + ops.collective_s(
        "reduce_scatter", act, t, per_node
    )
    tp_comm = 2 * np.where(sp, ag_rs, ar)  # two per layer, forward and backward alike
    one = tp_comm / 2
    bwd_comm = sum(np.maximum(one - w, 0.0) for w in wgrad_col)

    # ---- context parallelism: cp ring steps of the attention, K,V passed around -------------
    ring = RingCosts.none() if np.all(c == 1) else ring_attention(model, ops, tokens, t, c)
    attn_fwd_s, attn_bwd_s = attn_fwd * compute_scale, attn_bwd * compute_scale
    ring_fwd = (c - 1) * np.maximum(ring.send_fwd_s - attn_fwd_s, 0.0)  # exposed sends
    ring_bwd = (c - 1) * np.maximum(ring.send_bwd_s - attn_bwd_s, 0.0) + ring.home_s
    attn_fwd, attn_bwd = c * attn_fwd, c * attn_bwd
    # the host waits on the tensor-parallel collectives only: a slower GPU hides more of the
    # ring's sends, which must not shorten the host's dispatch (a layer never gets faster)
    host_wait_fwd, host_wait_bwd = tp_comm, bwd_comm
    tp_comm = tp_comm + ring_fwd
    bwd_comm = bwd_comm + ring_bwd

    fwd_compute = (gemm_fwd + attn_fwd + mem_fwd) * compute_scale
    rc = np.asarray(recompute)
    recompute_compute = np.where(
        rc == RECOMPUTE_FULL,
        fwd_compute,
        np.where(rc == RECOMPUTE_SELECTIVE, attn_fwd * compute_scale, 0.0),
    )
    recompute_comm = np.where(
        rc == RECOMPUTE_FULL, tp_comm, np.where(rc == RECOMPUTE_SELECTIVE, ring_fwd, 0.0)
    )
    bwd_compute = (gemm_bwd + attn_bwd + mem_bwd) * compute_scale
    # each ring step dispatches an attention kernel and a send/recv beyond a standard layer
    extra_ops = softmax_host_ops + 2.0 * (c - 1)
    host = ops.profile.host_layer_s * (1.0 + extra_ops / HOST_OPS_PER_LAYER)
    # selective recomputation re-dispatches only the attention core: about a quarter of a layer
    host_recompute = np.where(
        rc == RECOMPUTE_FULL, 1.0, np.where(rc == RECOMPUTE_SELECTIVE, 0.25, 0.0)
    )
    kappa = ops.profile.host_collective_wait
    gpu_fwd = fwd_compute + tp_comm
    gpu_bwd = bwd_compute + recompute_compute + bwd_comm + recompute_comm
    stall_fwd = overlap(host + kappa * host_wait_fwd, gpu_fwd, ops.profile.host_overlap) - gpu_fwd
    host_wait_bwd = host_wait_bwd + np.where(rc == RECOMPUTE_FULL, host_wait_fwd, 0.0)
    stall_bwd = (
        overlap(
            host * (2.0 + host_recompute) + kappa * host_wait_bwd,
            gpu_bwd,
            ops.profile.host_overlap,
        )
        - gpu_bwd
    )
    return LayerCosts(
        fwd_compute_s=fwd_compute,
        fwd_comm_s=tp_comm,
        bwd_compute_s=bwd_compute,
        bwd_comm_s=bwd_comm,
        recompute_compute_s=recompute_compute,
        recompute_comm_s=recompute_comm,
        host_stall_fwd_s=stall_fwd,
        host_stall_bwd_s=stall_bwd,
        ring_attn_fwd_s=np.where(c > 1, attn_fwd_s, 0.0),
        ring_attn_bwd_s=np.where(c > 1, attn_bwd_s, 0.0),
        ring_send_fwd_s=ring.send_fwd_s,
        ring_send_bwd_s=ring.send_bwd_s,
        ring_home_s=ring.home_s,
    )


@dataclass
class RingCosts:
    """One ring step's transfers of context parallelism, arrays (N,) or 0 without cp."""

    send_fwd_s: np.ndarray | float  # the local K,V to the next rank
    send_bwd_s: np.ndarray | float  # K,V and the accumulated dK,dV
    home_s: np.ndarray | float  # the last dK,dV back to its owner

    @classmethod
    def none(cls) -> RingCosts:
        return cls(0.0, 0.0, 0.0)


def ring_attention(
    model: ModelSpec, ops: OpModel, tokens: np.ndarray, tp: np.ndarray, cp: np.ndarray
) -> RingCosts:
    """Megatron-core's ring attention (Transformer Engine's KV-P2P context parallelism).

    The sequence is cut into 2cp chunks, GPU r holding chunks r and 2cp-1-r, so every GPU
    does the same causal work: cp steps each as much as a causal block of seq/cp (the
    diagonal step causal, the others half a full block), total causal work / cp. Each of
    the cp-1 sends of the local K,V to the next GPU runs behind the attention of the block
    in hand; the backward passes K,V and the accumulated dK,dV (twice the bytes) and sends
    the last dK,dV home. Ranks are ordered tp-cp-dp-pp: ring neighbours sit tp GPUs apart
    and the ring stays on NVLink when tp*cp fits the NVLink domain, else it crosses the
    network (its slowest hop sets the pace, as the pipeline's)."""
    kv_bytes = tokens * 2.0 * model.kv_hidden_size / tp * ops.setup.act_bytes
    inter = tp * cp > ops.cluster.domain_gpus
    on = cp > 1
    send = np.where(on, ops.p2p_s(kv_bytes, inter, tp), 0.0)
    return RingCosts(
        send_fwd_s=send,
        send_bwd_s=np.where(on, ops.p2p_s(2.0 * kv_bytes, inter, tp), 0.0),
        home_s=send,
    )


def edge_costs(
    model: ModelSpec,
    ops: OpModel,
    mb: np.ndarray,
    tp: np.ndarray,
    sp: np.ndarray,
    compute_scale: np.ndarray | float = 1.0,
    cp: np.ndarray | float = 1.0,
) -> EdgeCosts:
    """Embedding (first stage) and final norm + logits + cross-entropy (last stage) costs
    of the seq/cp tokens on one GPU; ``compute_scale`` multiplies the GPU ops, as in
    ``layer_costs``."""
    b, t = _f(mb), _f(tp)
    s, h = float(model.seq_length) / _f(cp), float(model.hidden_size)
    a_bytes = float(ops.setup.act_bytes)
    tokens = b * s
    vocab = model.padded_vocab(1)
    # Megatron pads the vocabulary to a multiple of 128 * tp
    vocab_padded = np.ceil(vocab / (128.0 * t)) * 128.0 * t
    vocab_local = vocab_padded / t
    act = tokens * h * a_bytes
    per_node = members_per_domain(tp, np.ones_like(tp), ops.cluster.domain_gpus)
    ar = ops.collective_s("all_reduce", act, t, per_node)
    rs = ops.collective_s("reduce_scatter", act, t, per_node)
    ag = ops.collective_s("all_gather", act, t, per_node)

    # Embedding: row gather (+ learned positions, dropout for GPT); vocab-parallel, so the
    # partial rows are summed over tp (all-reduce, or reduce-scatter with SP).
    emb_bytes = 2 * act + ((3 * act + 2.5 * act) if model.learned_positions else 0.0)
    emb_fwd = ops.memory_s(emb_bytes, 3 if model.learned_positions else 1, "embedding")
    emb_bwd = ops.memory_s(tokens * h * (a_bytes + 8.0), 2, "embedding_bwd")  # fp32 scatter-add
    emb_fwd_comm = np.where(sp, rs, ar)
    emb_bwd_comm = np.where(sp, ag, 0.0)

    # Head: final norm, logits GEMM over the local vocabulary shard, vocab-parallel
    # cross-entropy in fp32 (max, exp-sum, target logit: three small all-reduces).
    tokens_rep = np.where(sp, tokens / t, tokens)
    head_fwd, head_bwd = head_compute_s(model, ops, tokens, tokens_rep, vocab_local)
    small = ops.collective_s("all_reduce", tokens * 4.0, t, per_node)
    head_fwd_comm = np.where(sp, ag, 0.0) + 3 * small
    head_bwd_comm = np.where(sp, rs, ar)
    return EdgeCosts(
        embed_fwd_compute_s=emb_fwd * compute_scale,
        embed_fwd_comm_s=emb_fwd_comm,
        embed_bwd_compute_s=emb_bwd * compute_scale,
        embed_bwd_comm_s=emb_bwd_comm,
        head_fwd_compute_s=head_fwd * compute_scale,
        head_fwd_comm_s=head_fwd_comm,
        head_bwd_compute_s=head_bwd * compute_scale,
        head_bwd_comm_s=head_bwd_comm,
    )


def head_compute_s(
    model: ModelSpec,
    ops: OpModel,
    tokens: np.ndarray,
    tokens_norm: np.ndarray,
    vocab_local: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """The last stage's extra GPU work per micro-batch, forward and backward: the final norm
    (over ``tokens_norm`` tokens: a 1/tp shard with sequence parallelism), the logits GEMM
    over ``vocab_local`` columns and the cross-entropy on the logits cast to fp32."""
    h = float(model.hidden_size)
    a_bytes = float(ops.setup.act_bytes)
    norm_op = "layernorm" if model.has_bias else "rmsnorm"
    norm_fwd = ops.memory_s(2 * tokens_norm * h * a_bytes, 1, norm_op)
    norm_bwd = ops.memory_s(4 * tokens_norm * h * a_bytes, 2, f"{norm_op}_bwd")
    logits_fwd = ops.gemm_s(tokens, vocab_local, h)
    logits_bwd = ops.gemm_s(tokens, h, vocab_local) + ops.gemm_s(h, vocab_local, tokens)
    elems = tokens * vocab_local
    # The cross-entropy in fp32, per logit: cast (read A, write 4), max (read 4), subtract,
    # exp and normalize in place (read 4 + write 4 each), sum (read 4): the softmax is kept
    # for the backward, which copies it, subtracts the target, scales by the loss gradient
    # (read 4 + write 4 each) and casts back (read 4, write A). Megatron's vocab-parallel
    # kernel and F.cross_entropy(logits.float()) move the same bytes.
    ce_fwd = ops.memory_s(elems * (a_bytes + 36.0), 6, "cross_entropy")
    ce_bwd = ops.memory_s(elems * (28.0 + a_bytes), 4, "cross_entropy_bwd")
    return norm_fwd + logits_fwd + ce_fwd, norm_bwd + logits_bwd + ce_bwd


def p2p_costs(
    model: ModelSpec,
    ops: OpModel,
    mb: np.ndarray,
    tp: np.ndarray,
    dp: np.ndarray,
    pp: np.ndarray,
    cp: np.ndarray | int = 1,
) -> np.ndarray:
    """One activation (or gradient) transfer between adjacent pipeline stages, per micro-batch.

    Megatron sends 1/tp of the activation of the rank's seq/cp tokens (scatter-gather
    optimization, or the sequence-parallel shard). Neighbouring stages are tp*cp*dp ranks
    apart; when the whole pipeline does not fit in one NVLink domain the slowest boundary
    crosses the network, and that boundary sets the pace, so all boundaries use its time.
    """
    nbytes = _f(mb) * model.seq_length * model.hidden_size * ops.setup.act_bytes / _f(tp)
    if np.any(np.asarray(cp) > 1):
        nbytes, dp = nbytes / _f(cp), dp * cp
    inter = tp * dp * pp > ops.cluster.domain_gpus
    return np.where(pp > 1, ops.p2p_s(nbytes, inter, tp * dp), 0.0)
