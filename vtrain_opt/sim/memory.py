"""Bytes per GPU: weights, gradients, optimizer states and activations, per pipeline stage.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models"), generalized to grouped-query attention and SwiGLU. Per
layer and micro-batch, in bytes, with A bytes per activation element (2 for fp16/bf16),
sbh = seq x micro-batch x hidden:

* replicated part (norm inputs, GEMM inputs, dropout masks): (4A + 2) sbh for GPT,
  4A sbh for LLaMA (no dropout); divided by tp with sequence parallelism;
* tensor-parallel part: A sb (2h + 2h_kv) for Q, K, V and the projection input, plus the
  MLP's 2A sbf (GeLU) or 3A sbf (SwiGLU), divided by tp;
* attention scores (unfused kernel only): (2A + 1) a s^2 b for GPT (softmax, dropout mask
  and output), A a s^2 b without dropout; divided by tp. Flash attention keeps only the
  fp32 log-sum-exp, 4 a s b / tp.

For A = 2, MHA and f = 4h this is Korthikanti's s b h (10 + 24/t + 5 a s / (h t)).
Selective recomputation drops the scores; full recomputation keeps only each layer's
input (A sbh, /tp with sequence parallelism) and rebuilds one layer at a time.

Weights and optimizer: bytes per parameter from ``Setup`` (Megatron's table), sharded
over data parallelism by the ZeRO stage (1: optimizer states; 2: + gradients; 3: + weights).
FP8 (Transformer Engine) adds an fp8 copy and transpose of each GEMM weight, 2 bytes a
parameter, unsharded.
A pipeline stage holds min(pp - i, m) micro-batches in flight (1F1B), or, interleaved,
min(2 (pp - i - 1) + (vpp - 1) pp + 1, m vpp) model chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vtrain_opt.sim.costs import RECOMPUTE_FULL, RECOMPUTE_SELECTIVE
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.setup import Setup


@dataclass
class StageParams:
    """Parameters held by one GPU of the first, a middle and the last stage, arrays (N,)."""

    layer: np.ndarray  # one transformer layer's local parameters
    first: np.ndarray
    middle: np.ndarray
    last: np.ndarray
    embedding: np.ndarray  # local input embedding (first stage)
    output: np.ndarray  # local output layer (last stage): untied, or the tied copy when pp > 1


def stage_params(
    model: ModelSpec,
    tp: np.ndarray,
    pp: np.ndarray,
    layers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> StageParams:
    """Local parameter counts per stage under tensor and pipeline parallelism.

    ``layers``: the (first, middle, last) stages' layer counts (uneven stages,
    ``spec.plan.stage_layer_counts``); default an even share of ``num_layers / pp``.
    """
    t = np.asarray(tp, dtype=np.float64)
    p = np.asarray(pp)
    h, kvh, f = float(model.hidden_size), float(model.kv_hidden_size), float(model.ffn)
    # column-parallel biases are split over tp; row-parallel biases and norms are replicated
    replicated = (2 * h + 4 * h) if model.has_bias else 2 * h
    split_bias = ((h + 2 * kvh) + f) if model.has_bias else 0.0
    layer = (model.layer_matmul_params() + split_bias) / t + replicated
    vocab_padded = np.ceil(model.vocab_size / (128.0 * t)) * 128.0 * t
    embedding = vocab_padded * h / t + (model.seq_length * h if model.learned_positions else 0.0)
    needs_output = (not model.tied_embeddings) | (p > 1)
    output = np.where(needs_output, vocab_padded * h / t, 0.0)
    final_norm = float(model.final_norm_params())
    per_stage_layers = model.num_layers / p
    body = per_stage_layers * layer
    body_first = body_last = body
    if layers is not None:
        body_first, body, body_last = (n * layer for n in layers)
    single = p == 1
    first = body_first + embedding + np.where(single, output + final_norm, 0.0)
    last = np.where(single, first, body_last + output + final_norm)
    return StageParams(
        layer=layer, first=first, middle=body, last=last, embedding=embedding, output=output
    )


def state_bytes(params: np.ndarray, setup: Setup, zero: np.ndarray, dp: np.ndarray) -> np.ndarray:
    """Weights + gradients + optimizer states on one GPU, by ZeRO stage."""
    d = np.asarray(dp, dtype=np.float64)
    w, g, o = float(setup.weight_bytes), float(setup.grad_bytes), float(setup.optimizer_bytes)
    z = np.asarray(zero)
    per_param = np.select(
        [z == 0, z == 1, z == 2],
        [w + g + o, w + g + o / d, w + (g + o) / d],
        (w + g + o) / d,
    )
    return params * per_param


def fp8_weight_copy_bytes(
    model: ModelSpec, setup: Setup, tp: np.ndarray, layers: np.ndarray | float
) -> np.ndarray:
    """Bytes of the fp8 weight copies (and their transposes) of ``layers`` layers on one GPU
    of a tensor-parallel group of ``tp``; 0 outside fp8."""
    gemm = model.layer_matmul_params() / np.asarray(tp, dtype=np.float64)
    return np.asarray(layers, dtype=np.float64) * gemm * setup.fp8_weight_copy_bytes


def layer_activation_bytes(
    model: ModelSpec,
    setup: Setup,
    mb: np.ndarray,
    tp: np.ndarray,
    sp: np.ndarray,
    recompute: np.ndarray,
    cp: np.ndarray | float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(stored bytes per layer per micro-batch, transient bytes while one layer is rebuilt),
    of the seq/cp tokens a GPU holds under context parallelism ``cp``."""
    b, t = np.asarray(mb, dtype=np.float64), np.asarray(tp, dtype=np.float64)
    s, h = float(model.seq_length) / np.asarray(cp, dtype=np.float64), float(model.hidden_size)
    a = float(setup.act_bytes)
    sbh = s * b * h
    heads = float(model.num_attention_heads)
    dropout = setup.dropout_p(model) > 0
    if setup.torch:
        # what autograd saves in a plain PyTorch layer (tp = 1): the inputs of both norms,
        # of the QKV and MLP-up Linears and SDPA's own output (the projection's input, its
        # transposed copy, is in the tensor-parallel part), dropout masks
        replicated = (5 * a + (2 if dropout else 0)) * sbh
    else:
        replicated = (4 * a + 2) * sbh if dropout else 4 * a * sbh
    replicated = np.where(sp, replicated / t, replicated)
    tp_part = a * s * b * (2 * h + 2 * model.kv_hidden_size)
    tp_part = tp_part + (2 * a if not model.swiglu else 3 * a) * s * b * model.ffn
    tp_part = tp_part / t
    if setup.attention == "flash":
        scores = 4.0 * heads * s * b / t
    else:
        # the local queries' scores against the whole sequence's keys (every ring step's)
        scores = ((2 * a + 1) if dropout else a) * heads * s * model.seq_length * b / t
    full_layer = replicated + tp_part + scores
    rc = np.asarray(recompute)
    layer_input = np.where(sp, a * sbh / t, a * sbh)
    stored = np.select(
        [rc == RECOMPUTE_FULL, rc == RECOMPUTE_SELECTIVE],
        [layer_input, replicated + tp_part + (scores if setup.attention == "flash" else 0.0)],
        full_layer,
    )
    transient = np.select(
        [rc == RECOMPUTE_FULL, rc == RECOMPUTE_SELECTIVE],
        [full_layer, scores],
        0.0,
    )
    return stored, transient


def in_flight(pp: np.ndarray, vpp: np.ndarray, m: np.ndarray, stage: np.ndarray) -> np.ndarray:
    """Model chunks whose activations stage ``stage`` holds at its peak (1F1B / interleaved)."""
    p, v, i = np.asarray(pp), np.asarray(vpp), np.asarray(stage)
    plain = np.minimum(p - i, m)
    interleaved = np.minimum(2 * (p - i - 1) + (v - 1) * p + 1, m * v)
    return np.where(v > 1, interleaved, plain)


@dataclass
class MemoryBreakdown:
    """Bytes per GPU of the worst stage, each an array (N,)."""

    total_bytes: np.ndarray
    states_bytes: np.ndarray  # weights + gradients + optimizer states
    activations_bytes: np.ndarray
    reserved_bytes: float
    worst_stage: np.ndarray  # 0 = first stage, otherwise the last stage's index


def memory_per_gpu(
    model: ModelSpec,
    setup: Setup,
    reserved_bytes: float,
    *,
    tp: np.ndarray,
    pp: np.ndarray,
    dp: np.ndarray,
    mb: np.ndarray,
    vpp: np.ndarray,
    zero: np.ndarray,
    sp: np.ndarray,
    recompute: np.ndarray,
    num_microbatches: np.ndarray,
    params: StageParams | None = None,
    layer_bytes: tuple[np.ndarray, np.ndarray] | None = None,
    layers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    cp: np.ndarray | float = 1.0,
    expert_states: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> MemoryBreakdown:
    """Peak bytes on one GPU of the worst stage (the first or the last; with uneven
    ``layers`` = (first, middle, last) stage layer counts, also the second stage, the
    middle stage with the most micro-batches in flight; a stage's in-flight chunks hold
    its layers / vpp each).

    ``params`` and ``layer_bytes`` (from ``stage_params`` and ``layer_activation_bytes``)
    may be passed in when the caller has them already. Context parallelism ``cp``: a GPU
    holds seq/cp tokens' activations and its optimizer states shard over dp x cp (ZeRO).
    """
    params = params if params is not None else stage_params(model, tp, pp)
    if layer_bytes is None:
        layer_bytes = layer_activation_bytes(model, setup, mb, tp, sp, recompute, cp)
    stored, transient = layer_bytes
    p = np.asarray(pp)
    v = np.asarray(vpp)
    layers_per_chunk = model.num_layers / (p * v)
    first_per_chunk = last_per_chunk = layers_per_chunk
    if layers is not None:
        first_per_chunk, last_per_chunk = layers[0] / v, layers[2] / v
    b, t = np.asarray(mb, dtype=np.float64), np.asarray(tp, dtype=np.float64)
    s, h, a = float(model.seq_length), float(model.hidden_size), float(setup.act_bytes)
    if np.any(np.asarray(cp) > 1):  # the tokens on one GPU; ZeRO shards over dp x cp
        s, dp = s / np.asarray(cp, dtype=np.float64), dp * np.asarray(cp)
    sbh = s * b * h

    first_chunks = in_flight(p, v, num_microbatches, np.zeros_like(p))
    last_chunks = in_flight(p, v, num_microbatches, p - 1)
    # the embedding's dropout mask
    embed_act = np.where(sp, sbh / t, sbh) if setup.dropout_p(model) > 0 else 0.0
    # first stage: one embedding output per in-flight micro-batch (chunk 0 of each)
    first_act = (
        first_chunks * first_per_chunk * stored + embed_act * np.ceil(first_chunks / v) + transient
    )
    vocab_local = np.ceil(model.vocab_size / (128.0 * t)) * 128.0
    if setup.torch:
        # final norm and head inputs; bf16 logits (returned), their fp32 copy and the
        # log-softmax cross-entropy keeps
        head_act = 2 * a * sbh + (a + 8.0) * s * b * float(model.vocab_size)
    else:
        head_act = (
            a * np.where(sp, sbh / t, sbh) + (a + 4.0) * s * b * vocab_local
        )  # norm in, logits, fp32 CE
    last_act = last_chunks * last_per_chunk * stored + head_act + transient
    single = p == 1
    first_act = np.where(single, first_act + head_act, first_act)

    gather = np.where(np.asarray(zero) == 3, 2.0 * params.layer * setup.weight_bytes, 0.0)
    first_states = state_bytes(params.first, setup, zero, dp) + gather
    last_states = state_bytes(params.last, setup, zero, dp) + gather
    # Transformer Engine's fp8 copy and transpose of every local GEMM weight of the stage,
    # kept whole (not sharded by ZeRO); 0 outside fp8
    stage_layers = (model.num_layers / p,) * 3 if layers is None else layers
    fp8_copies = [
        fp8_weight_copy_bytes(model, setup, t, n) if setup.fp8 else 0.0 for n in stage_layers
    ]
    if setup.fp8:
        first_states = first_states + fp8_copies[0]
        last_states = last_states + fp8_copies[2]
    if expert_states is not None:  # MoE: the routed experts' states per stage (sim/moe.py)
        first_states, last_states = first_states + expert_states[0], last_states + expert_states[2]
        fp8_copies[1] = fp8_copies[1] + expert_states[1]
    first_total = first_states + first_act
    last_total = np.where(single, first_total, last_states + last_act)
    last_worse = last_total > first_total
    total = np.maximum(first_total, last_total)
    states = np.where(last_worse, last_states, first_states)
    activations = np.where(last_worse, last_act, first_act)
    worst = np.where(last_worse, p - 1, 0)
    if layers is not None:  # the second stage (a middle one) may hold more than both
        mid_act = in_flight(p, v, num_microbatches, np.ones_like(p)) * (layers[1] / v) * stored
        mid_act = mid_act + transient
        mid_states = state_bytes(params.middle, setup, zero, dp) + gather + fp8_copies[1]
        mid_total = np.where(p >= 3, mid_states + mid_act, 0.0)
        mid_worse = mid_total > total
        total = np.maximum(total, mid_total)
        states = np.where(mid_worse, mid_states, states)
        activations = np.where(mid_worse, mid_act, activations)
        worst = np.where(mid_worse, 1, worst)
    return MemoryBreakdown(
        total_bytes=total + reserved_bytes,
        states_bytes=states,
        activations_bytes=activations,
        reserved_bytes=reserved_bytes,
        worst_stage=worst,
    )
