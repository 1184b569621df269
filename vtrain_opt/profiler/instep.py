"""GEMMs inside a real training step against the isolated GEMM table: ``step_gemm_scale``.

A real layer's forward + backward runs under ``torch.profiler`` at a few shapes of the
grid; the device time of its GEMM kernels (on a CPU, the CPU time of the GEMM ops) is
summed per step and compared with what the simulator's op model answers for that layer's
GEMMs from the just-measured tables. The GEMMs are the aten ops that launch them
(``aten::mm``, ``aten::addmm`` with the bias epilogue, ...): a kernel's device time is
attributed to the op that launched it (the ops' rows are summed, not the kernels' own),
so the mapping does not depend on cuBLAS's kernel names. On a CPU running torch on one thread, the profiler's wall-clock times are scaled
by the thread's share of the core over the round (its CPU time / wall time), as the
tables are timed by CPU time. The layer is the framework's: the standard-module layer (``torch_model.py``) for
``torch``, the Megatron-style kernels (``model.py``) for ``megatron`` alone.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np

from vtrain_opt.profiler import kernels as K
from vtrain_opt.profiler import torch_model as TM
from vtrain_opt.profiles import PARAM_DEFS, Profile
from vtrain_opt.sim.ops import OpModel
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.setup import Setup

GEMM_OPS = frozenset(
    {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}
)


def _spec(shape: tuple[int, int, int, int]) -> ModelSpec:
    h, heads, s, _ = shape
    return ModelSpec(
        family="gpt",
        num_layers=1,
        hidden_size=h,
        num_attention_heads=heads,
        seq_length=s,
        vocab_size=128,
        name="in-step",
    )


def _self_time_us(evt: Any, cuda: bool) -> float:
    if not cuda:
        return float(evt.self_cpu_time_total)
    value = getattr(evt, "self_device_time_total", None)
    return float(value if value is not None else evt.self_cuda_time_total)


def _profiled_round(
    profile: Any, activities: list[Any], step: Any, steps: int, torch: Any, device: Any
) -> tuple[Any, float, float]:
    """``steps`` steps under ``torch.profiler``: the profiler, wall and thread CPU time."""
    with profile(activities=activities) as prof:
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(steps):
            step()
        TM.sync(torch, device)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    return prof, wall, cpu


def measure_step_gemms(
    torch: Any,
    device: Any,
    dtype: str,
    shapes: tuple[tuple[int, int, int, int], ...],
    framework: str,
    warmup: int = 2,
    steps: int = 3,
    rounds: int = 3,
) -> list[dict[str, Any]]:
    """Per shape (hidden, heads, seq, micro-batch): GEMM time per forward + backward of one
    layer, as the profiler sees it inside the step (the round of ``steps`` steps with the
    least), and the time of all its ops in that round."""
    # Kineto logs each start and stop on stderr at its default level; keep a user's choice
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    thread_clock = TM.clock(torch, device) is time.thread_time
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    tdtype = K.torch_dtype(torch, dtype)
    out = []
    for shape in shapes:
        spec = _spec(shape)
        if framework == "torch":
            layer = TM.build_layer(torch, spec, device, tdtype)
        else:
            from vtrain_opt.profiler.model import build

            layer = build(torch, spec, device, tdtype, whole=False)
        b, s, h = shape[3], spec.seq_length, spec.hidden_size
        x = torch.randn(b, s, h, device=device, dtype=tdtype, requires_grad=True)
        dy = torch.randn(b, s, h, device=device, dtype=tdtype)

        def step(layer: Any = layer, x: Any = x, dy: Any = dy) -> None:
            layer(x).backward(dy)
            x.grad = None
            for p in layer.parameters():
                p.grad = None

        for _ in range(warmup):
            step()
        best: tuple[float, float, int] | None = None
        for _ in range(rounds):  # the least disturbed round (other processes only add time)
            TM.sync(torch, device)
            with warnings.catch_warnings():
                # torch warns that each profiling cycle starts afresh: that is what we want
                warnings.filterwarnings("ignore", message=".*Profiler clears events")
                prof, wall, cpu = _profiled_round(profile, activities, step, steps, torch, device)
            # one CPU thread: the tables were timed by its CPU time, the profiler gives wall
            # time; count only the share of the round the thread had the core
            share = min(1.0, cpu / wall) if thread_clock and wall > 0 else 1.0
            gemm_us = all_us = 0.0
            calls = 0
            for evt in prof.key_averages():
                if not str(getattr(evt, "device_type", "CPU")).endswith("CPU"):
                    continue  # a kernel's own row: its time is already its launching op's
                t = _self_time_us(evt, cuda) * share
                all_us += t
                if evt.key in GEMM_OPS:
                    gemm_us += t
                    calls += evt.count
            if best is None or gemm_us < best[0]:
                best = (gemm_us, all_us, calls)
        assert best is not None
        out.append(
            {
                "hidden": h,
                "heads": spec.num_attention_heads,
                "seq": s,
                "micro_batch": b,
                "gemm_s": best[0] * 1e-6 / steps,
                "gemms": best[2] // steps,
                "all_ops_s": best[1] * 1e-6 / steps,
            }
        )
        del layer, x, dy, prof
        if cuda:
            torch.cuda.empty_cache()
    return out


def predicted_gemm_s(
    profile: Profile, cluster: Any, dtype: str, framework: str, shape: tuple[int, int, int, int]
) -> tuple[float, int, int]:
    """The op model's GEMM time for one layer's forward + backward (``step_gemm_scale`` = 1),
    the GEMMs counted, and how many were read from the tables. The GEMMs are those both op
    lists (``sim/costs.py``, ``sim/costs_torch.py``) count for a layer's four Linears
    (N x K weights): forward (T, N, K), input gradient (T, K, N), weight gradient (K, N, T)
    for T tokens."""
    setup = Setup(dtype=dtype, attention="flash", framework=framework, dropout=0.0)
    ops = OpModel(profile.with_params(step_gemm_scale=1.0), cluster, setup)
    h, _, s, b = shape
    t, f = float(b * s), 4.0 * h
    linears = ((3.0 * h, h), (h, h), (f, h), (h, f))
    m, n, k = np.array([g for nn, kk in linears for g in ((t, nn, kk), (t, kk, nn), (kk, nn, t))]).T
    times = ops.gemm_s(m, n, k)
    from_tables = 0
    if ops.measured is not None:
        from_tables = ops.measured.coverage().get("gemm", {}).get("measured", 0)
    return float(np.sum(times)), int(times.size), from_tables


def gemm_scale(
    profile: Profile,
    cluster: Any,
    dtype: str,
    framework: str,
    measured: list[dict[str, Any]],
    on_device: bool | None = None,
) -> tuple[float, str, dict[str, Any]]:
    """``step_gemm_scale`` (clipped to its bounds), its source line, and the details.
    ``on_device``: whether ``measured`` are kernel times (default: ``profile`` was measured
    on a GPU)."""
    if on_device is None:
        on_device = profile_is_cuda(profile)
    rows = []
    for m in measured:
        shape = (m["hidden"], m["heads"], m["seq"], m["micro_batch"])
        predicted, n, from_tables = predicted_gemm_s(profile, cluster, dtype, framework, shape)
        rows.append(
            {
                **m,
                "predicted_gemm_s": predicted,
                "predicted_gemms": n,
                "from_tables": from_tables,
                "ratio": m["gemm_s"] / predicted,
            }
        )
    ratio = sum(r["gemm_s"] for r in rows) / sum(r["predicted_gemm_s"] for r in rows)
    d = PARAM_DEFS["step_gemm_scale"]
    value = float(min(max(ratio, d.lower), d.upper))
    what = "standard-module" if framework == "torch" else "Megatron-style (profiler kernels)"
    per_shape = ", ".join(
        f"h={r['hidden']} seq={r['seq']} mb={r['micro_batch']}: {r['ratio']:.3f}" for r in rows
    )
    clipped = "" if value == ratio else f"; clipped from {ratio:.3f} to the bounds"
    source = (
        f"measured: GEMM {'kernel (device)' if on_device else 'op (CPU)'} time "
        f"inside a {what} GPT layer's forward + backward (torch.profiler) / the op model's "
        f"time for the same GEMMs from the measured tables, {ratio:.3f} over all shapes "
        f"({per_shape}){clipped}"
    )
    details = {"framework": framework, "ratio": ratio, "shapes": rows}
    return value, source, details


def profile_is_cuda(profile: Profile) -> bool:
    return profile.provenance.get("kind", profile.device.get("kind")) == "cuda"
