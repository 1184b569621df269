"""Measured op tables against an analytical profile: per op, the ratio measured / model
over the grid points. Tells how far the analytical model (a shipped catalog profile, or
the measured profile's own fitted parameters) is from this device, and where."""

from __future__ import annotations

from typing import Any

import numpy as np

from vtrain_opt.profile_tables import COLLECTIVES, parse_tables
from vtrain_opt.profiles import Profile
from vtrain_opt.sim.ops import OpModel
from vtrain_opt.spec.hardware import ClusterSpec
from vtrain_opt.spec.setup import Setup

# kernels per op as sim/costs.py and sim/step.py pass them to memory_s
_KERNELS = {"cross_entropy": 5, "optimizer": 4, "adam": 4, "embedding": 1}


def compare(
    profile: Profile, analytical: Profile, cluster: ClusterSpec, dtype: str
) -> dict[str, Any]:
    """Per op: median, min and max of measured / analytical time over the table's points."""
    tables = parse_tables(profile.tables, f"profile {profile.name!r}").get(dtype, {})
    bare = Profile(
        name=analytical.name, gpu=analytical.gpu, params=analytical.params, kind="analytical"
    )
    attention = "flash" if cluster.gpu.flash_attention else "unfused"
    ops = OpModel(bare, cluster, Setup(dtype=dtype, attention=attention))
    out: dict[str, Any] = {}
    for op, table in tables.items():
        axes = np.meshgrid(*table.grid, indexing="ij")
        coords = dict(zip(table.axes, axes, strict=True))
        if op == "gemm":
            model = ops.gemm_s(coords["m"], coords["n"], coords["k"])
        elif op.startswith("attention"):
            model = ops.flash_attention_s(
                coords["batch_heads"],
                coords["seq"],
                coords["head_dim"],
                backward=op.endswith("bwd"),
            )
        elif op in COLLECTIVES:
            model = ops.collective_s(op, coords["nbytes"], coords["group"], coords["group"])
        elif op == "send_recv":
            model = ops.p2p_s(coords["nbytes"], False)
        else:
            kernels = _KERNELS.get(op, 2 if op.endswith("_bwd") else 1)
            model = ops.memory_s(coords["nbytes"], kernels)  # the analytical formula only
        ratio = table.time_s / model
        ratio = ratio[np.isfinite(ratio)]
        if ratio.size:
            out[op] = {
                "median": float(np.median(ratio)),
                "min": float(ratio.min()),
                "max": float(ratio.max()),
                "points": int(ratio.size),
            }
    return out
