"""Self-check: time a real transformer layer and a small whole model on the device
(forward + backward + optimizer step), and compare with what the simulator predicts
from the measured profile for the same single-device plan.

``torch`` (the independent check): a model written with standard modules
(``torch_model.py``: nn.Linear with bias, nn.LayerNorm, SDPA, GELU, fused AdamW on
parameters in the compute dtype; the shared Hopper runs' implementation), timed as whole
training iterations (``accumulation`` micro-batches, the optimizer step; synchronized,
median of a few), against ``simulate`` with ``Setup(framework='torch', dropout=0,
master_weights='none')`` and the profile as it is (host dispatch, in-step GEMM scale).

``megatron``: a model built from the very kernels the profiler timed (``model.py``),
against the Megatron op list with the profile's framework overheads set to 0 (the loop
is plain torch). It agrees by construction and mostly checks the op sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vtrain_opt.profiler import kernels as K
from vtrain_opt.profiler import torch_model as TM
from vtrain_opt.profiler.model import build
from vtrain_opt.profiler.timing import Timer
from vtrain_opt.profiles import Profile
from vtrain_opt.sim.costs import layer_costs
from vtrain_opt.sim.costs_torch import torch_layer_costs, torch_optimizer_s
from vtrain_opt.sim.measured import measured_coverage
from vtrain_opt.sim.step import make_context, simulate_arrays
from vtrain_opt.spec.hardware import cluster_for_profile
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import ParallelPlan, PlanBatch
from vtrain_opt.spec.setup import Setup


@dataclass(frozen=True)
class CheckShape:
    """The model the check builds (Megatron's names); ``accumulation`` micro-batches per
    iteration in the standard-module check."""

    family: str = "gpt"
    hidden_size: int = 128
    num_attention_heads: int = 2
    num_layers: int = 2
    seq_length: int = 256
    micro_batch: int = 2
    vocab_size: int = 1000
    accumulation: int = 2

    def model(self) -> ModelSpec:
        return ModelSpec(
            family=self.family,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            vocab_size=self.vocab_size,
            seq_length=self.seq_length,
            name="self-check",
        )


# Defaults: inside the quick grid of each device kind (so every op is read from a table;
# on a GPU the accumulation of a micro-batch's gradients is beyond the quick grid).
DEFAULT_SHAPES = {
    "cpu": CheckShape(),
    "cuda": CheckShape(
        hidden_size=2048,
        num_attention_heads=16,
        num_layers=4,
        seq_length=2048,
        micro_batch=2,
        vocab_size=16000,
    ),
}


def predict(profile: Profile, shape: CheckShape, dtype: str) -> tuple[float, float, dict[str, Any]]:
    """Predicted seconds of (one layer, the whole model) for a training step on one device."""
    spec = shape.model()
    cluster = cluster_for_profile(profile)
    quiet = profile.with_params(microbatch_overhead_s=0.0, iteration_overhead_s=0.0)
    attention = "flash" if cluster.gpu.flash_attention else "unfused"
    ctx = make_context(spec, cluster, quiet, Setup(dtype=dtype, attention=attention))
    ops, setup = ctx.ops, ctx.setup
    one = [shape.micro_batch]
    lc = layer_costs(spec, ops, np.array(one), np.array([1]), np.array([False]), np.array([0]))
    per_param = 3 * setup.grad_bytes + 2 * setup.optimizer_bytes + setup.weight_bytes
    optimizer = ops.memory_s(spec.layer_params() * per_param, 4, "optimizer")
    stalls = sum(getattr(lc, k, 0.0) for k in ("host_stall_fwd_s", "host_stall_bwd_s"))
    layer_s = float((lc.fwd_compute_s + lc.bwd_compute_s + stalls + optimizer)[0])
    plan = ParallelPlan(
        tp=1, pp=1, dp=1, micro_batch=shape.micro_batch, global_batch=shape.micro_batch
    )
    out = simulate_arrays(ctx, PlanBatch.from_plans([plan]))
    return layer_s, float(out["iteration_time_s"][0]), measured_coverage(ops) or {}


def measure(
    torch: Any,
    device: Any,
    dtype: str,
    shape: CheckShape,
    warmup: int = 3,
    repeats: int = 10,
) -> tuple[float, float, str]:
    """Measured seconds of a training step of (one layer, the whole model), optimizer impl."""
    spec = shape.model()
    tdtype = K.torch_dtype(torch, dtype)
    timer = Timer(torch, device, warmup=warmup, repeats=repeats, min_sample_s=0.0)
    b, s, h = shape.micro_batch, spec.seq_length, spec.hidden_size

    layer = build(torch, spec, device, tdtype, whole=False)
    opt = K.MixedAdam(torch, list(layer.parameters()))
    layer_s = timer.time(_layer_step(torch, layer, opt.step, (b, s, h), device, tdtype)).median_s

    model = build(torch, spec, device, tdtype, whole=True)
    model_opt = K.MixedAdam(torch, list(model.parameters()))
    vocab = spec.padded_vocab(1)
    ids = torch.randint(0, spec.vocab_size, (b, s), device=device)
    target = torch.randint(0, spec.vocab_size, (b, s), device=device)

    def model_step() -> None:
        model(ids, target).backward()
        model_opt.step()

    model_s = timer.time(model_step).median_s
    assert vocab >= spec.vocab_size
    return layer_s, model_s, model_opt.impl


def predict_torch(
    profile: Profile, shape: CheckShape, dtype: str
) -> tuple[float, float, dict[str, Any]]:
    """Predicted seconds of (one layer's step, a whole iteration) of the standard-module
    model: the torch op list, the profile as it is."""
    spec = shape.model()
    setup = Setup(
        dtype=dtype, attention="flash", framework="torch", dropout=0.0, master_weights="none"
    )
    ctx = make_context(spec, cluster_for_profile(profile), profile, setup)
    ops = ctx.ops
    lc = torch_layer_costs(spec, ops, np.array([shape.micro_batch]), np.array([0]))
    stalls = lc.host_stall_fwd_s + lc.host_stall_bwd_s
    optimizer = torch_optimizer_s(ops, np.array([float(spec.layer_params())]))
    layer_s = float((lc.fwd_compute_s + lc.bwd_compute_s + stalls + optimizer)[0])
    b = shape.micro_batch
    plan = ParallelPlan(tp=1, pp=1, dp=1, micro_batch=b, global_batch=b * shape.accumulation)
    out = simulate_arrays(ctx, PlanBatch.from_plans([plan]))
    return layer_s, float(out["iteration_time_s"][0]), measured_coverage(ops) or {}


def measure_torch(
    torch: Any, device: Any, dtype: str, shape: CheckShape, warmup: int = 2, repeats: int = 5
) -> tuple[float, float, str]:
    """Measured seconds of (one standard-module layer's forward + backward + AdamW step, a
    whole training iteration of the model), and the AdamW implementation."""
    spec = shape.model()
    tdtype = K.torch_dtype(torch, dtype)
    b, s, h = shape.micro_batch, spec.seq_length, spec.hidden_size

    layer = TM.build_layer(torch, spec, device, tdtype)
    opt, _ = TM.adamw(torch, list(layer.parameters()))

    def opt_step() -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    step = _layer_step(torch, layer, opt_step, (b, s, h), device, tdtype)
    layer_s = TM.median(TM.time_calls(torch, device, step, warmup, repeats))
    model = TM.build_model(torch, spec, device, tdtype)
    model_opt, impl = TM.adamw(torch, list(model.parameters()))
    step = TM.training_iteration(torch, model, model_opt, spec, b, shape.accumulation, device)
    model_s = TM.median(TM.time_calls(torch, device, step, warmup, repeats))
    return layer_s, model_s, impl


def self_check(
    torch: Any,
    device: Any,
    dtype: str,
    profile: Profile,
    shape: CheckShape,
    repeats: int = 10,
    frameworks: tuple[str, ...] = ("megatron", "torch"),
) -> dict[str, Any]:
    """Measure, predict, compare. Errors are (predicted - measured) / measured. With the
    torch framework the standard-module check is the result and the Megatron-kernel
    check, if asked too, sits under ``megatron_kernels``."""
    spec = shape.model()
    base: dict[str, Any] = {
        "profile": profile.id,
        "dtype": dtype,
        "shape": {**asdict(shape), "params": spec.num_params()},
    }
    megatron = None
    if "megatron" in frameworks:
        layer_pred, model_pred, coverage = predict(profile, shape, dtype)
        layer_meas, model_meas, impl = measure(torch, device, dtype, shape, repeats=repeats)
        megatron = {
            "framework": "megatron",
            "implementation": "the profiler's Megatron-style kernels (kernels.py, model.py)",
            "plan": f"one device: tp=pp=dp=1, micro-batch {shape.micro_batch}, no recompute",
            "layer": _row(layer_meas, layer_pred),
            "model": _row(model_meas, model_pred),
            "optimizer": impl,
            "repeats": repeats,
            "coverage": coverage,
            "note": "prediction with the profile's framework overheads set to 0 (plain torch "
            "loop); the model is built from the kernels the profile timed",
        }
    if "torch" not in frameworks:
        assert megatron is not None
        return {**base, **megatron}
    layer_pred, model_pred, coverage = predict_torch(profile, shape, dtype)
    torch_repeats = max(3, min(repeats, 5))
    layer_meas, model_meas, impl = measure_torch(torch, device, dtype, shape, repeats=torch_repeats)
    out = {
        **base,
        "framework": "torch",
        "implementation": "standard modules: nn.Embedding, nn.LayerNorm, nn.Linear with bias, "
        "SDPA (causal), GELU (tanh), tied head, fp32 cross-entropy, AdamW on parameters in "
        f"{dtype}; no dropout",
        "plan": f"one device: tp=pp=dp=1, micro-batch {shape.micro_batch}, "
        f"{shape.accumulation} micro-batches per iteration, no recompute",
        "setup": "framework torch, dropout 0, master weights none",
        "layer": _row(layer_meas, layer_pred),
        "model": _row(model_meas, model_pred),
        "optimizer": impl,
        "repeats": torch_repeats,
        "coverage": coverage,
        "note": "whole training iterations (wall clock, synchronized, median) against "
        "simulate with the profile as it is",
    }
    if megatron is not None:
        out["megatron_kernels"] = megatron
    return out


def _row(measured_s: float, predicted_s: float) -> dict[str, float]:
    return {
        "measured_s": measured_s,
        "predicted_s": predicted_s,
        "error": (predicted_s - measured_s) / measured_s,
    }


def _layer_step(
    torch: Any,
    layer: Any,
    optimizer_step: Callable[[], None],
    shape: tuple[int, int, int],
    device: Any,
    dtype: Any,
) -> Callable[[], None]:
    """One training step of a lone layer: forward on a fixed input of ``shape`` (b, s, h),
    backward from a fixed output gradient, then ``optimizer_step``."""
    x = torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(*shape, device=device, dtype=dtype)

    def step() -> None:
        layer(x).backward(dy)
        x.grad = None
        optimizer_step()

    return step
