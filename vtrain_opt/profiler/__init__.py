"""The profiler: measure, with torch, the time of every op the simulator models on this
machine's device, and write a measured profile (``python -m vtrain_opt profile``).

torch is optional (``pip install vtrain_opt[profile]``) and imported only here, lazily:
``grid.py`` (the shapes), ``timing.py`` (warm-up, repeats, median and spread),
``kernels.py`` (Megatron-style torch ops, shared by the benchmarks and ``model.py``),
``torch_model.py`` (a plain PyTorch GPT of standard modules), ``ops.py`` (the op
benchmarks), ``collectives.py`` (torch.distributed collectives), ``host.py`` (host
dispatch per layer), ``instep.py`` (GEMMs inside a real step: ``step_gemm_scale``),
``device.py`` (what the device is), ``writer.py`` (the profile), ``check.py`` (the
self-check against real models), ``steps.py`` (real training iterations as a CSV).
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = (
    "pip install 'vtrain_opt[profile]' (a CPU-only build: "
    "pip install torch --index-url https://download.pytorch.org/whl/cpu)"
)


def require_torch() -> Any:
    """Import torch, or raise a one-line ValueError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"torch is not installed; the profiler needs it: {INSTALL_HINT}") from None
    return torch
