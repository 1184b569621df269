"""Fit an analytical profile's efficiency curves to a measured profile's op tables.

The analytical op model (``sim/ops.py``) reaches a GPU's datasheet peaks through a few
bounded efficiencies. Where this project's profiler has measured the GPU, those come
from its tables instead of being carried over from another GPU's fit:

* GEMM: ``gemm_efficiency`` and ``gemm_k_half``, robust least squares on
  log(model / table) over every measured (m, n, k) cell that takes at least
  ``MIN_GEMM_S`` (smaller ones are launch- or occupancy-bound: the training GEMMs that
  matter are larger);
* attention: ``attention_efficiency``, the same over the forward and backward flash
  tables (cells of at least ``MIN_ATTENTION_S``; the model has no occupancy term, so
  small cells would pull the efficiency of the large ones down);
* memory-bound ops: ``memory_efficiency`` and ``kernel_overhead_s`` as the profiler fitted
  them to its copy table (a copy of a buffer larger than the caches).

Each value's source names the measured profile and the cells it was fitted on.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from vtrain_opt.profile_tables import parse_tables
from vtrain_opt.profiles import PARAM_DEFS, Profile
from vtrain_opt.sim.ops import OpModel
from vtrain_opt.spec.hardware import ClusterSpec
from vtrain_opt.spec.setup import Setup

MIN_GEMM_S = 100e-6
MIN_ATTENTION_S = 500e-6
# robust loss: log errors well beyond 10% (odd cells) count linearly, so they cannot drag the fit
LOSS_SCALE = 0.1
CURVE_PARAMS = ("gemm_efficiency", "gemm_k_half", "attention_efficiency")
COPIED_PARAMS = ("memory_efficiency", "kernel_overhead_s")


def _cells(table: Any, min_s: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Coordinates (one array per axis) and times of a table's measured cells >= min_s."""
    mesh = np.meshgrid(*table.grid, indexing="ij")
    keep = np.isfinite(table.time_s) & (table.time_s >= min_s)
    return [m[keep] for m in mesh], table.time_s[keep]


def fit_curves(
    measured: Profile, analytical: Profile, cluster: ClusterSpec, dtype: str = "bf16"
) -> tuple[dict[str, float], dict[str, Any]]:
    """The curve parameters fitted to ``measured``'s tables, and a record of the fit.

    ``analytical`` supplies every other parameter while fitting (its tables, if any, are
    not used); ``cluster`` the GPU's datasheet peaks.
    """
    tables = parse_tables(measured.tables, f"profile {measured.name!r}").get(dtype)
    if not tables or "gemm" not in tables:
        raise ValueError(
            f"profile {measured.name!r} has no {dtype} GEMM table to fit curves to "
            f"(measured dtypes: {', '.join(measured.tables) or 'none'})"
        )
    base = replace(analytical, tables={}).with_params(
        **{k: measured.params[k] for k in COPIED_PARAMS}, step_gemm_scale=1.0
    )
    setup = Setup(dtype=dtype, attention="flash")
    (m, n, k), gemm_s = _cells(tables["gemm"], MIN_GEMM_S)

    def gemm_residuals(x: np.ndarray) -> np.ndarray:
        ops = OpModel(base.with_params(gemm_efficiency=x[0], gemm_k_half=x[1]), cluster, setup)
        return np.log(ops.gemm_s(m, n, k) / gemm_s)

    lo = [PARAM_DEFS[p].lower for p in ("gemm_efficiency", "gemm_k_half")]
    hi = [PARAM_DEFS[p].upper for p in ("gemm_efficiency", "gemm_k_half")]
    x0 = [min(max(base.gemm_efficiency, lo[0]), hi[0]), min(max(base.gemm_k_half, lo[1]), hi[1])]
    g = least_squares(
        gemm_residuals,
        x0,
        bounds=(lo, hi),
        x_scale=[0.1, 100.0],
        loss="soft_l1",
        f_scale=LOSS_SCALE,
    )
    values = {"gemm_efficiency": float(g.x[0]), "gemm_k_half": float(g.x[1])}
    record: dict[str, Any] = {
        "gemm": {
            "cells": len(gemm_s),
            "min_time_s": MIN_GEMM_S,
            "rms_log_error": float(np.sqrt(np.mean(g.fun**2))),
        }
    }
    attention = [
        (_cells(tables[op], MIN_ATTENTION_S), op == "attention_bwd")
        for op in ("attention_fwd", "attention_bwd")
        if op in tables
    ]
    if attention:

        def attention_residuals(x: np.ndarray) -> np.ndarray:
            ops = OpModel(base.with_params(attention_efficiency=x[0]), cluster, setup)
            return np.concatenate(
                [
                    np.log(ops.flash_attention_s(bh, s, d, backward=bwd) / t)
                    for ((bh, s, d), t), bwd in attention
                ]
            )

        bounds = (
            PARAM_DEFS["attention_efficiency"].lower,
            PARAM_DEFS["attention_efficiency"].upper,
        )
        x0 = [min(max(base.attention_efficiency, bounds[0]), bounds[1])]
        a = least_squares(
            attention_residuals,
            x0,
            bounds=([bounds[0]], [bounds[1]]),
            loss="soft_l1",
            f_scale=LOSS_SCALE,
        )
        values["attention_efficiency"] = float(a.x[0])
        record["attention"] = {
            "cells": int(sum(len(t) for (_, t), _ in attention)),
            "min_time_s": MIN_ATTENTION_S,
            "rms_log_error": float(np.sqrt(np.mean(a.fun**2))),
        }
    for p in COPIED_PARAMS:
        values[p] = float(measured.params[p])
    return values, record


def curves_from_tables(
    analytical: Profile, measured: Profile, cluster: ClusterSpec, dtype: str = "bf16"
) -> Profile:
    """``analytical`` with its efficiency curves fitted to ``measured``'s tables."""
    if measured.gpu != analytical.gpu:
        raise ValueError(
            f"profile {measured.name!r} was measured on {measured.gpu}, not {analytical.gpu}"
        )
    values, record = fit_curves(measured, analytical, cluster, dtype)
    where = f"{measured.name} ({measured.provenance.get('device', measured.gpu)}, {dtype})"
    sources = dict(analytical.sources)
    for p in CURVE_PARAMS:
        if p in values:
            what = "gemm" if p.startswith("gemm") else "attention"
            cells = record[what]["cells"]
            sources[p] = f"fitted to the {cells} measured {what} cells of {where} (see fit.tables)"
    for p in COPIED_PARAMS:
        sources[p] = f"from {where}: {measured.sources.get(p, 'measured')}"
    fit = {**analytical.fit, "tables": {"profile": measured.id, "dtype": dtype, **record}}
    today = date.today().isoformat()
    return replace(
        analytical.with_params(**values),
        kind="calibrated",
        sources=sources,
        fit=fit,
        description=f"{analytical.gpu} profile: GEMM, attention and memory curves fitted to the "
        f"op tables of {where}; other parameters as sourced.",
        provenance={"method": "curves fitted to measured op tables", "date": today},
    )
