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

from collections.abc import Sequence
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
    if not space.dtypes:  # the setup's dtype (fp8 marks the GPUs without it)
        fp8 = space.setup is not None and space.setup.fp8
        return tuple(
            Target(g, None, _lacks(c.cluster.gpu, "fp8") if fp8 else None)
            for g, c in enumerate(space.gpus)
        )
    return tuple(
        Target(g, d, _lacks(choice.cluster.gpu, d))
        for g, choice in enumerate(space.gpus)
        for d in space.dtypes
    )


def check_dtypes(space: Any) -> None:
    """A listed dtype must be known, and some GPU of the space must have it (one line)."""
    fp8 = space.setup is not None and space.setup.fp8
    for d in space.dtypes or (("fp8",) if fp8 else ()):
        if d not in DTYPES:
            raise ValueError(f"space.dtype: {d!r} is not one of {', '.join(DTYPES)}")
        reasons = [_lacks(g.cluster.gpu, d) for g in space.gpus]
        if len(reasons) == 1 and reasons[0]:
            raise ValueError(f"space.dtype: {reasons[0]}")
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


def dtype_fields(
    dtypes: str | Sequence[str] | None, setup: Setup | None, gpus: Sequence[Any]
) -> dict[str, Any]:
    """``setup`` and ``dtypes`` for a dtype list: one dtype is the setup's (flash attention
    where every GPU has it), several a dimension (the setup takes the first)."""
    if dtypes is None:
        return {"setup": setup}
    values = tuple(dict.fromkeys([dtypes] if isinstance(dtypes, str) else dtypes))
    if not values:
        raise ValueError("space.dtype: the candidate list is empty")
    if setup is None:
        flash = all(g.cluster.gpu.flash_attention for g in gpus)
        setup = Setup(attention="flash" if flash else "unfused")
    if values[0] not in DTYPES:
        raise ValueError(f"space.dtype: {values[0]!r} is not one of {', '.join(DTYPES)}")
    setup = replace(setup, dtype=values[0])
    return {"setup": setup, "dtypes": values if len(values) > 1 else ()}


def target_index(space: Any, gpu: str, dtype: str | None = None) -> int:
    """The target of a GPU name and a compute dtype (None: the GPU's first supported one);
    raises ValueError (one line) when the space has no such target."""
    names = [g.name for g in space.gpus]
    if gpu not in names:
        raise ValueError(f"gpu {gpu!r} is not in the space ({', '.join(names)})")
    g = names.index(gpu)
    for i, t in enumerate(space.targets):
        if t.gpu_index == g and t.ok and dtype in (None, space.context(i).setup.dtype):
            return i
    listed = ", ".join(space.dtypes) if space.dtypes else "its setup's"
    raise ValueError(f"dtype {dtype!r} on {gpu} is not in the space (dtypes: {listed})")


def row_target(space: Any, row: Any) -> int:
    """The target of a result row (its gpu and dtype columns)."""
    dtype = row.get("dtype") if hasattr(row, "get") else None
    return target_index(space, str(row["gpu"]), None if dtype is None else str(dtype))


def gpu_contexts(space: Any, gpu_index: int) -> list[Any]:
    """The simulator contexts of one GPU type's supported targets (one per dtype); a GPU
    with none (fp8 only, on an A100) gets its default context (for its profile)."""
    from vtrain_opt.sim.context import make_context

    out = [
        space.context(i) for i, t in enumerate(space.targets) if t.gpu_index == gpu_index and t.ok
    ]
    g = space.gpus[gpu_index]
    return out or [make_context(space.model, g.cluster, g.profile)]


def dtype_text(space: Any, gpu_index: int) -> str:
    """The dtypes a GPU type runs in the space ('bf16', 'bf16/fp8'; '-' for none)."""
    ok = [i for i, t in enumerate(space.targets) if t.gpu_index == gpu_index and t.ok]
    return "/".join(space.context(i).setup.dtype for i in ok) or "-"
