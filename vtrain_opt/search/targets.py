"""Targets: each (GPU type, compute dtype) pair of a space, simulated with its own context.

A space's ``dtypes`` (say bf16 and fp8) is a plan dimension the simulator cannot take per
plan: the dtype is a setting of the whole batch (``SimContext.setup``). So a search runs
each GPU type once per dtype, as a *target*, and compares the plans of all targets. With
no dtype dimension there is one target per GPU type, in the same order (target index ==
GPU index). A GPU that lacks a listed dtype (fp8 on an A100) keeps its target, marked
``unsupported`` with the reason: its plans are counted as infeasible with that reason,
never simulated, and the rest of the search goes on. A dtype no GPU of the space has is
an error (``check_dtypes``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from vtrain_opt.spec.setup import DTYPES, Setup

# The reason an unsupported target's plans are rejected with (limits.SEARCH_REASONS).
NO_DTYPE_REASON = "dtype not on this GPU"


@dataclass(frozen=True)
class Target:
    """One GPU type of the space under one compute dtype (None: the space's setup)."""

    gpu_index: int
    dtype: str | None
    unsupported: str | None = None  # why this GPU cannot run the dtype; None: it can

    @property
    def ok(self) -> bool:
        return self.unsupported is None


def _lacks(gpu: Any, dtype: str) -> str | None:
    """Why ``gpu`` (a GPUSpec) cannot compute in ``dtype``; None when it can."""
    if dtype == "fp8" and "fp8" not in gpu.peak_flop_per_s:
        return f"{gpu.name} has no fp8 peak; FP8 needs Hopper or Blackwell"
    if dtype != "fp8" and dtype not in gpu.peak_flop_per_s:
        return f"{gpu.name} has no {dtype} peak"
    return None


def space_targets(space: Any) -> tuple[Target, ...]:
    """The targets of a space, GPU-major: (gpu 0, dtype 0), (gpu 0, dtype 1), ..."""
    if not space.dtypes:
        return tuple(Target(g, None) for g in range(len(space.gpus)))
    return tuple(
        Target(g, d, _lacks(choice.cluster.gpu, d))
        for g, choice in enumerate(space.gpus)
        for d in space.dtypes
    )


def check_dtypes(space: Any) -> None:
    """A listed dtype must be known, and some GPU of the space must have it (one line)."""
    for d in space.dtypes:
        if d not in DTYPES:
            raise ValueError(f"space.dtype: {d!r} is not one of {', '.join(DTYPES)}")
        reasons = [_lacks(g.cluster.gpu, d) for g in space.gpus]
        if all(reasons):
            names = ", ".join(g.name for g in space.gpus)
            hint = "; FP8 needs Hopper or Blackwell" if d == "fp8" else ""
            raise ValueError(f"space.dtype: no GPU of the space ({names}) has {d}{hint}")
    if space.dtypes and space.setup is not None and space.setup.torch and "fp8" in space.dtypes:
        raise ValueError("space.dtype: fp8 needs framework megatron (Transformer Engine)")


def target_setup(space: Any, target: Target) -> Setup | None:
    """The setup a target simulates with: the space's, its dtype replaced when it has one."""
    if target.dtype is None:
        return space.setup
    if space.setup is not None:
        return replace(space.setup, dtype=target.dtype)
    gpu = space.gpus[target.gpu_index].cluster.gpu  # each GPU's default attention kernel
    return Setup(dtype=target.dtype, attention="flash" if gpu.flash_attention else "unfused")


def setup_dict(setup: Setup) -> dict[str, Any]:
    """The setup's fields; framework, dropout and optimizer precision only where they differ
    from their defaults, so a Megatron space keeps the identity (and study name) it had."""
    out: dict[str, Any] = {"dtype": setup.dtype, "attention": setup.attention}
    defaults = Setup()
    for key in ("framework", "dropout", "master_weights", "fp8_recipe"):
        if getattr(setup, key) != getattr(defaults, key):
            out[key] = getattr(setup, key)
    return out
