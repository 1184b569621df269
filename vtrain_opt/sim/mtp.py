"""DeepSeek-V3's multi-token prediction (``ModelSpec.mtp_num_layers``) on the last stage.

Each MTP module predicts one more token: the next token's embedding (shared with the main
model) and the main model's last hidden state, each RMSNorm-ed, concatenated and projected
(2h -> h), one MoE transformer layer, then the shared output head and its cross-entropy
(DeepSeek-V3 report, Sec. 2.2). It runs on the last pipeline stage, beside the output head,
so per micro-batch that stage does, per module, one more layer (the mean layer's cost, MoE
block and all-to-all included), one more head (final norm, logits, loss) and the
projection, forward and backward; the time is counted as compute. Memory: the modules'
weights, gradients and optimizer states (the routed experts over ep x etp with their ZeRO
over edp, the rest over tp with ZeRO over dp x cp) and one micro-batch's activations
(the layer's and the second head's logits).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from vtrain_opt.sim.context import SimContext
from vtrain_opt.spec.moe import expert_params
from vtrain_opt.spec.plan import PlanBatch


def _per_param(setup: Any, zero: np.ndarray, shards: np.ndarray) -> np.ndarray:
    """Bytes per parameter of weights, gradients and optimizer states under ZeRO."""
    w, g, o = float(setup.weight_bytes), float(setup.grad_bytes), float(setup.optimizer_bytes)
    d = np.asarray(shards, dtype=np.float64)
    return (
        np.select(
            [zero == 0, zero == 1, zero == 2],
            [w + g + o, w + g + o / d, w + (g + o) / d],
            (w + g + o) / d,
        )
        + setup.fp8_weight_copy_bytes
    )


def with_mtp(ctx: SimContext, batch: PlanBatch, costs: Any) -> Any:
    """``costs`` (a PlanCosts) with the MTP modules' work on the last stage and their bytes
    in the last stage's extra states (``expert_state_bytes``)."""
    model, ops, setup = ctx.model, ctx.ops, ctx.setup
    n = float(model.mtp_num_layers)
    h = float(model.hidden_size)
    cp = np.asarray(getattr(batch, "cp", 1), dtype=np.float64)
    t = batch.tp.astype(np.float64)
    tokens = batch.mb * model.seq_length / cp
    proj_fwd = ops.gemm_s(tokens, h / t, 2 * h)  # column-parallel projection, as the QKV
    proj_bwd = ops.gemm_s(tokens, 2 * h, h / t) + ops.gemm_s(2 * h, h / t, tokens)
    fwd = n * (costs.layer_fwd_s + costs.last_fwd_s + proj_fwd)
    bwd = n * (costs.layer_bwd_s + costs.last_bwd_s + proj_bwd)

    routed = float((model.num_experts or 0) * expert_params(model))
    rest = float(model.moe_layer_params(active=False)) - routed + 2 * h * h + 2 * h
    edp = np.maximum(batch.tp * cp * batch.dp // np.maximum(batch.ep * batch.etp, 1), 1)
    states = n * (
        rest / t * _per_param(setup, batch.zero, batch.dp * cp)
        + routed / (batch.ep * batch.etp) * _per_param(setup, batch.zero, edp)
    )
    a = float(setup.act_bytes)
    vocab_local = np.ceil(model.vocab_size / (128.0 * t)) * 128.0
    acts = n * (costs.layer_bytes[0] + (a + 4.0) * tokens * vocab_local + 3 * a * tokens * h)
    first, middle, last = costs.expert_state_bytes
    single = batch.pp == 1  # the only stage is also the last
    return replace(
        costs,
        last_fwd_s=costs.last_fwd_s + fwd,
        last_bwd_s=costs.last_bwd_s + bwd,
        busy_compute_s=costs.busy_compute_s + fwd + bwd,
        expert_state_bytes=(
            np.where(single, first + states + acts, first),
            middle,
            last + states + acts,
        ),
    )
