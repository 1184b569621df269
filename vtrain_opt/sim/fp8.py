"""FP8 training as NVIDIA's Transformer Engine runs it (``--dtype fp8``, Megatron-LM + TE).

The four GEMMs of each transformer layer (QKV, attention output, MLP up and down) run in
fp8 (E4M3 forward, E5M2 gradients), forward, dgrad and wgrad alike, at the GPU's fp8 peak
(``OpModel.gemm_s(..., fp8=True)``). Everything else stays in bf16: attention, norms,
activations, the logits and the loss, the activations kept for the backward (2 bytes an
element) and the communication.

What fp8 adds, per layer and micro-batch, as memory-bound kernels:

* forward: each GEMM's input activation (T x K) is quantized by TE's fused cast-transpose:
  it reads the bf16 tensor (2 B) and writes the fp8 copy and its transpose for the wgrad
  (1 + 1 B), recording the amax on the way: 4 bytes an element, one kernel;
* backward: likewise each GEMM's output gradient (T x N), for the dgrad and the wgrad;
* current scaling (``--fp8-recipe current``) needs the tensor's amax before its cast: one
  more kernel per cast reading the bf16 tensor (2 B an element). Delayed scaling takes the
  scale from the amax history of earlier iterations, fused into the cast.

Weights are cast once per iteration, not per micro-batch (Megatron passes TE
``is_first_microbatch``, and TE keeps the fp8 weight and its transpose across the
micro-batches): 4 bytes a parameter (plus the amax pass under current scaling), counted with
the optimizer step that produced the new weights. Memory keeps that fp8 copy and its
transpose beside the bf16 weights and the fp32 master copy (``Setup.fp8_weight_copy_bytes``,
2 bytes per GEMM parameter). The small amax-history bookkeeping and its all-reduce are not
modelled.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from vtrain_opt.sim.ops import OpModel

# bytes an element of a cast-transpose: read bf16, write fp8 and its fp8 transpose
CAST_BYTES = 4.0
# bytes an element of current scaling's amax pass: read bf16
AMAX_BYTES = 2.0


def _casts_s(ops: OpModel, elements: np.ndarray | float, count: float) -> np.ndarray:
    """``count`` casts of ``elements`` each (plus their amax passes under current scaling)."""
    t = count * ops.memory_s(CAST_BYTES * np.asarray(elements, dtype=np.float64), 1, "fp8_cast")
    if ops.setup.fp8_recipe == "current":
        amax = AMAX_BYTES * np.asarray(elements, dtype=np.float64)
        t = t + count * ops.memory_s(amax, 1, "fp8_amax")
    return t


def layer_cast_s(
    ops: OpModel, tokens: np.ndarray, shapes: Iterable[tuple[np.ndarray | float, float]]
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """(forward, backward) time of a layer's fp8 casts for one micro-batch of ``tokens``
    tokens, given the (N, K) of its GEMMs; (0, 0) outside fp8."""
    if not ops.setup.fp8:
        return 0.0, 0.0
    fwd: np.ndarray | float = 0.0
    bwd: np.ndarray | float = 0.0
    for n, k in shapes:
        fwd = fwd + _casts_s(ops, tokens * k, 1)  # the GEMM's input
        bwd = bwd + _casts_s(ops, tokens * n, 1)  # the gradient of its output
    return fwd, bwd


def weight_cast_s(
    ops: OpModel, gemm_params: np.ndarray, layers: np.ndarray | float
) -> np.ndarray | float:
    """Once per iteration: the fp8 copy and transpose of a stage's ``gemm_params`` local GEMM
    weights over its ``layers`` layers (4 GEMMs, so 4 casts, a layer); 0 outside fp8."""
    if not ops.setup.fp8:
        return 0.0
    p = np.asarray(gemm_params, dtype=np.float64)
    kernels = 4.0 * np.asarray(layers, dtype=np.float64)
    t = ops.memory_s(CAST_BYTES * p, kernels, "fp8_cast")
    if ops.setup.fp8_recipe == "current":
        t = t + ops.memory_s(AMAX_BYTES * p, kernels, "fp8_amax")
    return t
