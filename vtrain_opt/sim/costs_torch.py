"""The op list of a plain PyTorch model (``framework='torch'``), vectorized over plans.

What a nanoGPT-style training script launches, one GPU (data parallelism at most), per
micro-batch of T = b*s tokens:

  forward  = nn.LayerNorm, nn.Linear(h, 3h) (bias in the GEMM's epilogue), SDPA (flash),
             the transpose(1, 2).contiguous() of its output (a layout copy), nn.Linear(h, h),
             [dropout], residual add, nn.LayerNorm, nn.Linear(h, f), GELU (one kernel),
             nn.Linear(f, h), [dropout], residual add
  backward = dgrad + wgrad GEMM of every Linear plus the reduction of its output gradient
             into the bias gradient, the flash backward, the copy back, LayerNorm's and
             GELU's backward kernels, and one add where the residual stream's two
             gradients meet (per residual).
  recompute: full = ``torch.utils.checkpoint`` around each layer (the forward again);
             selective = the attention core again.

Memory-bound ops are asked of the op model by the same names as Megatron's where the
kernel is the same torch kernel (``layernorm``, ``residual_add``, ``dropout``,
``cross_entropy``, ``embedding``, the copy as ``memory``), and by their own names where
Megatron fuses differently (``gelu``, ``bias_grad``, ``adam``), so a measured profile
answers each with the table of the kernel that really runs.

Host: an eager PyTorch layer dispatches its ~20 ops through Python and the dispatcher
(``torch_host_layer_s`` per forward, twice that for the backward); a pass takes the
maximum of host and GPU time (the smooth maximum of ``sim/costs.py`` at its sharpest: the
host runs ahead of the GPU, nothing in an eager layer waits on it).
"""

from __future__ import annotations

import numpy as np

from vtrain_opt.profiles import PARAM_DEFS
from vtrain_opt.sim.costs import (
    RECOMPUTE_FULL,
    RECOMPUTE_SELECTIVE,
    EdgeCosts,
    LayerCosts,
    head_compute_s,
    overlap,
)
from vtrain_opt.sim.ops import OpModel
from vtrain_opt.spec.model import ModelSpec


def _linear_bias_grad(ops: OpModel, tokens: np.ndarray, n: float, bias: bool) -> np.ndarray:
    """The bias gradient of an nn.Linear: a column sum of its (tokens x n) output gradient."""
    if not bias:
        return np.zeros_like(tokens)
    return ops.memory_s(tokens * n * ops.setup.act_bytes, 1, "bias_grad")


def torch_layer_costs(
    model: ModelSpec,
    ops: OpModel,
    mb: np.ndarray,
    recompute: np.ndarray,
    compute_scale: np.ndarray | float = 1.0,
) -> LayerCosts:
    """One layer's costs for each plan (tp = 1: plain PyTorch has no tensor parallelism)."""
    b = np.asarray(mb, dtype=np.float64)
    s, h, f = float(model.seq_length), float(model.hidden_size), float(model.ffn)
    kvh, d = float(model.kv_hidden_size), float(model.head_dim)
    a = float(ops.setup.act_bytes)
    p_drop = ops.setup.dropout_p(model)
    bias = model.has_bias
    tokens = b * s
    rep = tokens * h * a  # one (T, h) activation

    up_n = (2.0 if model.swiglu else 1.0) * f
    shapes = ((h + 2 * kvh, h), (h, h), (up_n, h), (h, f))  # (N, K) of each Linear
    gemm_fwd = sum(ops.gemm_s(tokens, n, k) for n, k in shapes)
    gemm_bwd = sum(
        ops.gemm_s(tokens, k, n)
        + ops.gemm_s(k, n, tokens)
        + _linear_bias_grad(ops, tokens, n, bias)
        for n, k in shapes
    )

    heads = b * model.num_attention_heads
    attn_fwd = ops.flash_attention_s(heads, s, d) + ops.memory_s(2 * rep, 1, "memory")
    attn_bwd = ops.flash_attention_s(heads, s, d, backward=True) + ops.memory_s(
        2 * rep, 1, "memory"
    )

    norm = "layernorm" if bias else "rmsnorm"
    act = "gelu" if not model.swiglu else "swiglu"
    act_fwd_bytes = (3.0 if model.swiglu else 2.0) * tokens * f * a
    mem_fwd = (
        2 * ops.memory_s(2 * rep, 1, norm)
        + 2 * ops.memory_s(3 * rep, 1, "residual_add")
        + ops.memory_s(act_fwd_bytes, 1, act)
    )
    # backward: the norms' and the activation's own kernels, and an add where the residual
    # stream's gradient and a branch's meet (the residual add itself passes gradients through)
    mem_bwd = (
        2 * ops.memory_s(4 * rep, 2, f"{norm}_bwd")
        + 2 * ops.memory_s(6 * rep, 2, "residual_add_bwd")
        + ops.memory_s(2 * act_fwd_bytes, 2, f"{act}_bwd")
    )
    if p_drop > 0:
        # F.dropout on each branch before its residual add: read, write, 1-byte mask
        drop = 2 * ops.memory_s(2 * rep + tokens * h, 1, "dropout")
        mem_fwd = mem_fwd + drop
        mem_bwd = mem_bwd + 2 * ops.memory_s(2 * rep + tokens * h, 1, "dropout_bwd")
    if not model.learned_positions:
        rotary = 2 * tokens * (h + kvh) * a
        mem_fwd = mem_fwd + ops.memory_s(rotary, 1, "rotary")
        mem_bwd = mem_bwd + ops.memory_s(2 * rotary, 2, "rotary_bwd")

    fwd_compute = (gemm_fwd + attn_fwd + mem_fwd) * compute_scale
    bwd_compute = (gemm_bwd + attn_bwd + mem_bwd) * compute_scale
    rc = np.asarray(recompute)
    recompute_compute = np.where(
        rc == RECOMPUTE_FULL,
        fwd_compute,
        np.where(rc == RECOMPUTE_SELECTIVE, attn_fwd * compute_scale, 0.0),
    )
    host = ops.profile.torch_host_layer_s
    host_recompute = np.where(
        rc == RECOMPUTE_FULL, 1.0, np.where(rc == RECOMPUTE_SELECTIVE, 0.25, 0.0)
    )
    # Eager PyTorch queues kernels asynchronously and nothing in a layer waits on the GPU
    # (no tensor-parallel collective, no sync until the loss is read): the host runs ahead,
    # so a pass costs the larger of host and GPU time (the overlap's sharpest bound), not
    # the A100 Megatron fit's partial overlap (whose hosts wait on collectives).
    k = PARAM_DEFS["host_overlap"].upper
    gpu_bwd = bwd_compute + recompute_compute
    zero = np.zeros_like(fwd_compute)
    return LayerCosts(
        fwd_compute_s=fwd_compute,
        fwd_comm_s=zero,
        bwd_compute_s=bwd_compute,
        bwd_comm_s=zero,
        recompute_compute_s=recompute_compute,
        recompute_comm_s=zero,
        host_stall_fwd_s=overlap(host, fwd_compute, k) - fwd_compute,
        host_stall_bwd_s=overlap(host * (2.0 + host_recompute), gpu_bwd, k) - gpu_bwd,
    )


def torch_edge_costs(
    model: ModelSpec, ops: OpModel, mb: np.ndarray, compute_scale: np.ndarray | float = 1.0
) -> EdgeCosts:
    """Embedding (token + learned positions, added) and final norm, logits (bf16) and
    cross-entropy on the logits cast to fp32, as a plain PyTorch model computes them."""
    b = np.asarray(mb, dtype=np.float64)
    s, h = float(model.seq_length), float(model.hidden_size)
    a = float(ops.setup.act_bytes)
    tokens = b * s
    act = tokens * h * a

    emb_fwd = ops.memory_s(2 * act, 1, "embedding")
    emb_bwd = ops.memory_s(tokens * h * (a + 8.0), 2, "embedding_bwd")
    if model.learned_positions:
        emb_fwd = emb_fwd + ops.memory_s(3 * act, 1, "residual_add")  # + wpe(pos)
        emb_bwd = emb_bwd + ops.memory_s(act, 1, "bias_grad")  # positions: sum over b
    if ops.setup.dropout_p(model) > 0:
        emb_fwd = emb_fwd + ops.memory_s(2 * act + tokens * h, 1, "dropout")
        emb_bwd = emb_bwd + ops.memory_s(2 * act + tokens * h, 1, "dropout_bwd")

    head_fwd, head_bwd = head_compute_s(model, ops, tokens, tokens, float(model.vocab_size))
    zero = np.zeros_like(tokens)
    return EdgeCosts(
        embed_fwd_compute_s=emb_fwd * compute_scale,
        embed_fwd_comm_s=zero,
        embed_bwd_compute_s=emb_bwd * compute_scale,
        embed_bwd_comm_s=zero,
        head_fwd_compute_s=head_fwd * compute_scale,
        head_fwd_comm_s=zero,
        head_bwd_compute_s=head_bwd * compute_scale,
        head_bwd_comm_s=zero,
    )


def torch_accumulate_s(ops: OpModel, params: np.ndarray) -> np.ndarray:
    """Autograd's accumulation of one micro-batch's weight gradients into ``.grad``
    (``grad += new``: read two, write one), for every micro-batch after the first."""
    return ops.memory_s(3.0 * params * ops.setup.grad_bytes, 1, "residual_add")


def torch_optimizer_s(ops: OpModel, params: np.ndarray) -> np.ndarray:
    """``torch.optim.AdamW(fused=True)`` over the parameters in their own dtype (read the
    parameter, gradient and two moments, write back three); ``zero_grad`` frees the
    gradients (``set_to_none``), no kernel."""
    w, g, o = ops.setup.weight_bytes, ops.setup.grad_bytes, ops.setup.optimizer_bytes
    return ops.memory_s(params * (2 * w + g + 2 * o), 4, "adam")
