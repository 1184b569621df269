"""Build the measured profile: op tables, the device block, analytical parameters (fitted
where the measurements say something, stated otherwise) and the provenance.

A device of the GPU catalog keeps its datasheet figures and starts from its shipped
analytical profile; any other device (a CPU, a GPU outside the catalog) is described by
what was measured: its peak is the best measured GEMM throughput, its memory bandwidth
the best measured copy, and the profile says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import numpy as np

from vtrain_opt.profiler.device import slug
from vtrain_opt.profiler.grid import Grid
from vtrain_opt.profiles import PARAM_DEFS, Profile, load_profile
from vtrain_opt.spec.hardware import get_gpu

# Parameters of a device outside the catalog that the profiler does not measure.
_DEFAULTS: dict[str, tuple[float, str]] = {
    "gemm_k_half": (64.0, "default of the analytical GEMM model (not fitted)"),
    "nvlink_efficiency": (0.8, "default (no collective measured)"),
    "network_efficiency": (0.85, "default (inter-node network not measured)"),
    "collective_latency_s": (25e-6, "default (no collective measured)"),
    "microbatch_overhead_s": (
        0.0,
        "0: not measured (a framework's per-micro-batch time; a plain torch loop has none "
        "beyond the measured ops)",
    ),
    "iteration_overhead_s": (0.0, "0: not measured (a framework's per-iteration time)"),
    "runtime_reserved_bytes": (0.0, "0: not measured"),
    "host_layer_s": (
        0.0,
        "0: on a CPU the measured op times already include the host's dispatch; elsewhere "
        "not measured",
    ),
}
# host_overlap of a device outside the catalog, by kind
_HOST_OVERLAP: dict[str, tuple[str, str]] = {
    "cpu": (
        "upper",
        "the upper bound: on a CPU the op tables already include the host's dispatch (the "
        "same thread runs both), so a pass takes the longer of the two, not their sum",
    ),
    "cuda": ("a100-80gb", "not measured: the value fitted for the shipped a100-80gb profile"),
}


def _grid(table: dict[str, Any], axis: str) -> np.ndarray:
    return np.asarray(table["grid"][axis], dtype=np.float64)


def _times(table: dict[str, Any]) -> np.ndarray:
    return np.array(table["time_s"], dtype=np.float64)  # None -> nan


def summarize(tables: dict[str, Any]) -> dict[str, float]:
    """Headline figures of one dtype's tables: best and largest-shape throughputs."""
    out: dict[str, float] = {}
    g = tables["gemm"]
    m, n, k = (_grid(g, a) for a in ("m", "n", "k"))
    flop = 2.0 * m[:, None, None] * n[None, :, None] * k[None, None, :]
    rate = flop / _times(g)
    out["gemm_best_flop_per_s"] = float(np.nanmax(rate))
    out["gemm_largest_flop_per_s"] = float(rate[-1, -1, -1])
    if "attention_fwd" not in tables:  # an fp8 GEMM table alone
        return out
    a = tables["attention_fwd"]
    bh, s, d = (_grid(a, x) for x in ("batch_heads", "seq", "head_dim"))
    # causal: half of 4*bh*s^2*d, as the simulator counts it
    aflop = 2.0 * bh[:, None, None] * s[None, :, None] ** 2 * d[None, None, :]
    arate = aflop / _times(a)
    out["attention_best_flop_per_s"] = float(np.nanmax(arate))
    out["attention_largest_flop_per_s"] = float(arate[-1, -1, -1])
    c = tables["memory"]
    nbytes, t = _grid(c, "nbytes"), _times(c)
    bw = nbytes / t
    out["copy_best_bytes_per_s"] = float(np.nanmax(bw))
    out["copy_largest_bytes_per_s"] = float(bw[-1])
    # t = overhead + bytes / bandwidth, fitted in relative error (small and large alike)
    ok = np.isfinite(t)
    A = np.stack([1.0 / t[ok], nbytes[ok] / t[ok]], axis=1)
    (overhead, _inv_bw), *_ = np.linalg.lstsq(A, np.ones(ok.sum()), rcond=None)
    out["copy_fixed_s"] = float(overhead)
    return out


def _collective_summary(tables: dict[str, Any]) -> dict[str, float] | None:
    ar = tables.get("all_reduce")
    if not ar:
        return None
    groups, nbytes, t = _grid(ar, "group"), _grid(ar, "nbytes"), _times(ar)
    g = groups[:, None]
    bus = 2.0 * (g - 1) / g * nbytes[None, :] / t  # NCCL's bus bandwidth convention
    return {
        "all_reduce_best_bus_bytes_per_s": float(np.nanmax(bus)),
        "all_reduce_smallest_s": float(np.nanmin(t[:, 0])),
    }


def _clip(name: str, value: float) -> float:
    d = PARAM_DEFS[name]
    return float(min(max(value, d.lower), d.upper))


def build_profile(
    *,
    name: str,
    info: dict[str, Any],
    tables: dict[str, dict[str, Any]],
    grid: Grid,
    quick: bool,
    notes: dict[str, Any],
    collectives: dict[str, Any] | None,
    elapsed_s: float,
    command: str,
) -> Profile:
    """The measured profile. ``tables`` maps dtype -> op tables; the first dtype's figures
    fit the analytical parameters."""
    dtypes = list(tables)
    primary = dtypes[0]
    figures = {d: summarize(t) for d, t in tables.items()}
    fig = figures[primary]
    fig["copy_large_bytes_per_s"] = float(notes["memory_bandwidth"]["bytes_per_s"])
    coll = _collective_summary(tables[primary])
    catalog = info.get("catalog_gpu")
    where = f"measured on {info['name']} ({primary}, `vtrain_opt profile`)"

    params: dict[str, float] = {}
    sources: dict[str, str] = {}
    if catalog:
        base = load_profile(catalog)
        params.update(base.params)
        sources.update(
            {k: f"from the shipped profile {catalog}: {v}" for k, v in base.sources.items()}
        )
        spec = get_gpu(catalog)
        device = {
            "peak_flop_per_s": dict(spec.peak_flop_per_s),
            "hbm_bytes": spec.hbm_bytes,
            "hbm_bytes_per_s": spec.hbm_bytes_per_s,
            "nvlink_bytes_per_s": spec.nvlink_bytes_per_s,
            "num_sms": spec.num_sms,
            "flash_attention": spec.flash_attention,
            "sources": {"*": f"datasheet, search_spaces/gpus.yaml ({catalog}): {spec.source}"},
        }
        peak = spec.peak(primary)
        gpu = catalog
    else:
        peak = fig["gemm_best_flop_per_s"]
        link = coll["all_reduce_best_bus_bytes_per_s"] if coll else fig["copy_large_bytes_per_s"]
        device = {
            "peak_flop_per_s": {d: f["gemm_best_flop_per_s"] for d, f in figures.items()},
            "hbm_bytes": float(info["memory_bytes"]),
            "hbm_bytes_per_s": fig["copy_large_bytes_per_s"],
            "nvlink_bytes_per_s": link,
            "num_sms": int(info["num_sms"]),
            "flash_attention": True,
            "sources": {
                "peak_flop_per_s": "best measured GEMM throughput on this device (not a "
                "datasheet peak), per dtype",
                "hbm_bytes": "device memory as the system reports it",
                "hbm_bytes_per_s": "measured: a copy of a buffer larger than the caches "
                f"({notes['memory_bandwidth']['buffer_bytes'] / 2**20:.0f} MiB), bytes read + "
                "written / s",
                "nvlink_bytes_per_s": (
                    "best measured all-reduce bus bandwidth between local processes"
                    if coll
                    else "no link measured: taken equal to the measured memory bandwidth"
                ),
                "num_sms": "CPU threads used by torch" if info["kind"] == "cpu" else "SM count",
                "flash_attention": "torch's scaled_dot_product_attention was measured",
            },
        }
        for key, (value, why) in _DEFAULTS.items():
            if key in PARAM_DEFS:
                params[key], sources[key] = value, why
        how, why = _HOST_OVERLAP["cpu" if info["kind"] == "cpu" else "cuda"]
        d = PARAM_DEFS["host_overlap"]
        params["host_overlap"] = d.upper if how == "upper" else load_profile(how).host_overlap
        sources["host_overlap"] = why
        if coll:
            params["nvlink_efficiency"] = 1.0
            sources["nvlink_efficiency"] = "1: the link bandwidth is the measured bus bandwidth"
            params["collective_latency_s"] = _clip(
                "collective_latency_s", coll["all_reduce_smallest_s"]
            )
            sources["collective_latency_s"] = (
                f"smallest measured all-reduce ({coll['all_reduce_smallest_s']:.3g} s), "
                "clipped to the parameter's bounds"
            )
        gpu = (
            f"cpu-{slug(info['name'].split(' (')[0])}"
            if info["kind"] == "cpu"
            else slug(info["name"])
        )
    device.update(
        name=info["name"],
        kind=info["kind"],
        devices_per_node=int(
            collectives["processes"] if collectives else info.get("devices_visible", 1)
        ),
        measured={d: f for d, f in figures.items()},
    )
    if coll:
        device["measured"][primary].update(coll)
    hbm_bw = float(device["hbm_bytes_per_s"])

    fitted = {
        "gemm_efficiency": (
            fig["gemm_largest_flop_per_s"] / peak,
            "largest measured GEMM throughput / peak",
        ),
        "attention_efficiency": (
            fig["attention_largest_flop_per_s"] / peak,
            "largest measured attention (causal SDPA) throughput / peak",
        ),
        "memory_efficiency": (
            fig["copy_large_bytes_per_s"] / hbm_bw,
            "measured bandwidth of a copy larger than the caches / memory bandwidth",
        ),
        "kernel_overhead_s": (
            fig["copy_fixed_s"],
            "fixed time of a copy, fitted to the copy table (time = fixed + bytes / bandwidth)",
        ),
    }
    for key, (value, how) in fitted.items():
        params[key] = _clip(key, value)
        clipped = "" if params[key] == value else f" (clipped from {value:.3g})"
        sources[key] = f"fitted: {how}, {where}{clipped}"
    for key, d in PARAM_DEFS.items():  # a parameter this profiler does not know yet
        if key not in params:
            params[key] = d.lower
            sources[key] = "not measured by the profiler: the parameter's lower bound"

    date = dt.datetime.now(dt.timezone.utc)
    provenance = {
        "method": "measured with torch by `python -m vtrain_opt profile`",
        "command": command,
        "date": date.date().isoformat(),
        "time": date.isoformat(timespec="seconds"),
        "device": info["name"],
        **{
            k: info[k]
            for k in ("kind", "torch", "cuda", "cudnn", "driver", "host", "platform")
            if k in info
        },
        "dtypes": dtypes,
        "quick": quick,
        "grid": grid.to_dict(),
        **notes,
        "collectives": collectives or "not measured (one device)",
        "elapsed_s": round(elapsed_s, 1),
    }
    kind = "a quick (small-grid) " if quick else ""
    description = (
        f"Measured profile of {info['name']}: {kind}op-latency tables ({', '.join(dtypes)}) "
        "written by `vtrain_opt profile`. Shapes outside the measured grid use the analytical "
        "parameters below (each with its source)."
    )
    return Profile(
        name=name,
        gpu=gpu,
        params=params,
        sources=sources,
        kind="measured",
        description=description,
        provenance=provenance,
        tables=tables,
        device=device,
    )


def with_measured(
    profile: Profile, values: dict[str, tuple[float, str]], notes: dict[str, Any]
) -> Profile:
    """The profile with parameters measured after its tables (host dispatch, in-step GEMM
    scale), each clipped to its bounds and given its source, and their notes in the
    provenance."""
    params, sources = dict(profile.params), dict(profile.sources)
    for key, (value, source) in values.items():
        params[key] = _clip(key, value)
        clipped = "" if params[key] == value else f" (clipped from {value:.3g})"
        sources[key] = source + clipped
    provenance = {**profile.provenance, **notes}
    return replace(profile, params=params, sources=sources, provenance=provenance)
