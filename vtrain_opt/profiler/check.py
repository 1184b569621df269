"""Self-check: time a real transformer layer and a small whole model on the device
(forward + backward + optimizer step), and compare with what the simulator predicts
from the measured profile for the same single-device plan.

The prediction runs the profile with its framework overheads set to 0: the check's
training loop is plain torch, not Megatron, so only the op model is being judged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vtrain_opt.profiler import kernels as K
from vtrain_opt.profiler.model import build
from vtrain_opt.profiler.timing import Timer
from vtrain_opt.profiles import Profile
from vtrain_opt.sim.costs import layer_costs
from vtrain_opt.sim.measured import measured_coverage
from vtrain_opt.sim.step import make_context, simulate_arrays
from vtrain_opt.spec.hardware import cluster_for_profile
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import ParallelPlan, PlanBatch
from vtrain_opt.spec.setup import Setup


@dataclass(frozen=True)
class CheckShape:
    """The model the check builds (Megatron's names)."""

    family: str = "gpt"
    hidden_size: int = 256
    num_attention_heads: int = 4
    num_layers: int = 2
    seq_length: int = 256
    micro_batch: int = 2
    vocab_size: int = 1000

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


# Defaults: inside the quick grid of each device kind (so every op is read from a table).
DEFAULT_SHAPES = {
    "cpu": CheckShape(),
    "cuda": CheckShape(
        hidden_size=4096,
        num_attention_heads=32,
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
    lc = layer_costs(spec, ops, one, [1], [False], [0])
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
    x = torch.randn(b, s, h, device=device, dtype=tdtype, requires_grad=True)
    dy = torch.randn(b, s, h, device=device, dtype=tdtype)

    def layer_step() -> None:
        layer(x).backward(dy)
        x.grad = None
        opt.step()

    layer_s = timer.time(layer_step).median_s

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


def self_check(
    torch: Any,
    device: Any,
    dtype: str,
    profile: Profile,
    shape: CheckShape,
    repeats: int = 10,
) -> dict[str, Any]:
    """Measure, predict, compare. Errors are (predicted - measured) / measured."""
    layer_pred, model_pred, coverage = predict(profile, shape, dtype)
    layer_meas, model_meas, impl = measure(torch, device, dtype, shape, repeats=repeats)
    spec = shape.model()
    return {
        "profile": profile.id,
        "dtype": dtype,
        "shape": {**asdict(shape), "params": spec.num_params()},
        "plan": f"one device: tp=pp=dp=1, micro-batch {shape.micro_batch}, no recompute",
        "layer": _row(layer_meas, layer_pred),
        "model": _row(model_meas, model_pred),
        "optimizer": impl,
        "repeats": repeats,
        "coverage": coverage,
        "note": "prediction with the profile's framework overheads set to 0 (plain torch loop)",
    }


def _row(measured_s: float, predicted_s: float) -> dict[str, float]:
    return {
        "measured_s": measured_s,
        "predicted_s": predicted_s,
        "error": (predicted_s - measured_s) / measured_s,
    }
