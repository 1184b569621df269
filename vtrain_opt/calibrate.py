"""Fit a profile's bounded parameters to measured iteration times; cross-validated error.

The fit minimizes a robust (soft-L1) loss on log(predicted / measured), i.e. on relative
error: the mean over measurement files of each file's mean loss, so a file of 56 rows
weighs as much as one of 720. It runs over a handful of physical parameters, each kept
inside its bounds (``profiles.PARAM_DEFS`` or tighter ``FIT_BOUNDS``), searched in a
[0, 1] box mapped linearly (log-linearly for overheads) onto their bounds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from vtrain_opt.predictor import Predictor, RunSetup
from vtrain_opt.profiles import PARAM_DEFS, Profile

# The parameters fitted to iteration times, and the ranges a fit may use (tighter than the
# profile's validity bounds where physics says so).
ITERATION_PARAMS = (
    "gemm_efficiency",
    "gemm_k_half",
    "memory_efficiency",
    "host_layer_s",
    "host_collective_wait",
    "host_overlap",
    "unfused_softmax_host_ops",
    "microbatch_overhead_s",
    "node_straggler",
)
# A plain PyTorch model on one GPU (framework 'torch'): the op tables or curves come from the
# profiler; what iteration times add is how GEMMs run inside a real step. (The host's
# dispatch cost, torch_host_layer_s, is the profiler's to measure: GPU-bound steps cannot
# place it; on the shared H200 steps 10 us to 150 us per layer moved the MAPE by 0.04 pt.)
TORCH_STEP_PARAMS = ("step_gemm_scale",)
# What a profile learns from real steps beyond its op model, and may carry to another GPU
# measured with the same profiler where that GPU has no measured steps.
STEP_PARAMS = ("step_gemm_scale", "torch_host_layer_s")
# Set, not fitted: iteration times cannot tell them apart from the host and optimizer
# terms (fits drive them to their lower bounds), so they keep small physical values.
FIXED_PARAMS = {
    "kernel_overhead_s": (1e-6, "GPU-side gap between dependent kernels (~1 us); fixed"),
    "iteration_overhead_s": (1e-3, "per-iteration bookkeeping outside the pipeline; fixed"),
    "network_efficiency": (
        1.0,
        "NCCL across nodes at the adapters' line rate; fixed: fits put it at this bound, "
        "and where the data cannot place it (one cross-validation fold) it trades against "
        "the host terms and jumps to its lower bound",
    ),
}
FIT_BOUNDS: dict[str, tuple[float, float]] = {
    "gemm_efficiency": (0.4, 0.95),
    "gemm_k_half": (0.0, 512.0),
    "memory_efficiency": (0.4, 0.95),
    "kernel_overhead_s": (0.1e-6, 20e-6),
    "host_layer_s": (20e-6, 5e-3),
    "microbatch_overhead_s": (10e-6, 10e-3),
    "iteration_overhead_s": (1e-4, 0.5),
    "network_efficiency": (0.6, 1.0),  # NCCL over InfiniBand: 60-100% of line rate
    "node_straggler": (0.0, 0.1),  # node-to-node speed spread: a few % on real clusters
    "host_collective_wait": (0.0, 1.0),
    "host_overlap": (1.0, 16.0),
    # the unfused softmax path's 4 extra kernels, up to 4x that with their autograd nodes
    "unfused_softmax_host_ops": (4.0, 16.0),
    "step_gemm_scale": (0.7, 1.3),
    "torch_host_layer_s": (10e-6, 5e-3),
    "nvlink_efficiency": (0.3, 1.0),
    "collective_latency_s": (1e-6, 200e-6),
}
# Scale of the soft-L1 loss on log(predicted/measured): relative errors well beyond 5% count
# linearly, so a few odd rows cannot drag the fit.
LOSS_SCALE = 0.05
# Overheads span decades: search them in log space.
LOG_PARAMS = {
    "kernel_overhead_s",
    "host_layer_s",
    "torch_host_layer_s",
    "microbatch_overhead_s",
    "iteration_overhead_s",
    "collective_latency_s",
}


# ---- parameter mapping ----------------------------------------------------------------------
def _bounds(name: str) -> tuple[float, float]:
    lo, hi = FIT_BOUNDS.get(name, (PARAM_DEFS[name].lower, PARAM_DEFS[name].upper))
    return max(lo, PARAM_DEFS[name].lower), min(hi, PARAM_DEFS[name].upper)


def _to_unit(name: str, value: float) -> float:
    lo, hi = _bounds(name)
    value = min(max(value, lo), hi)
    if name in LOG_PARAMS:
        return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (value - lo) / (hi - lo)


def _from_unit(name: str, u: float) -> float:
    lo, hi = _bounds(name)
    u = min(max(u, 0.0), 1.0)
    if name in LOG_PARAMS:
        return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    return lo + u * (hi - lo)


@dataclass
class FitResult:
    profile: Profile
    params: dict[str, float]
    train_mape_pct: float
    at_bounds: list[str]  # fitted parameters that ended on a bound
    evaluations: int


def mape_pct(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(np.mean(np.abs(predicted - measured) / measured) * 100)


def fit(
    predictor: Predictor,
    base: Profile,
    params: Sequence[str] = ITERATION_PARAMS,
    rows: np.ndarray | None = None,
    loss_scale: float = LOSS_SCALE,
) -> FitResult:
    """Fit ``params`` of ``base`` to the measured rows (all, or the index array ``rows``)."""
    names = list(params)
    measured = predictor.measured_s
    index = np.arange(len(measured)) if rows is None else np.asarray(rows)
    # each measurement file weighs the same, whatever its number of rows: the objective is
    # the sum over files of the file's mean soft-L1 loss rho(r) = 2 s^2 (sqrt(1 + (r/s)^2) - 1)
    # of r = log(predicted/measured); least_squares squares and sums the residuals below
    files = predictor.measurements.rows["file"].to_numpy()[index]
    _, inverse, counts = np.unique(files, return_inverse=True, return_counts=True)
    share = 1.0 / counts[inverse]
    evals = 0

    def profile_at(u: np.ndarray) -> Profile:
        return base.with_params(
            **{n: _from_unit(n, float(x)) for n, x in zip(names, u, strict=True)}
        )

    def residuals(u: np.ndarray) -> np.ndarray:
        nonlocal evals
        evals += 1
        pred = predictor.predict(profile_at(u))[index]
        r = np.log(pred / measured[index])
        rho = 2.0 * loss_scale**2 * (np.sqrt(1.0 + (r / loss_scale) ** 2) - 1.0)
        return np.sign(r) * np.sqrt(share * rho)  # squared and summed: the objective

    u0 = np.array([_to_unit(n, base.params[n]) for n in names])
    best = None
    # two starts (the shipped values and the middle of the box) guard against a local optimum
    for start in (u0, np.full(len(names), 0.5)):
        r = least_squares(
            residuals,
            start,
            bounds=(0.0, 1.0),
            x_scale=0.1,
            diff_step=1e-3,
            max_nfev=400,
        )
        if best is None or r.cost < best.cost:
            best = r
    assert best is not None
    fitted = profile_at(best.x)
    values = {n: fitted.params[n] for n in names}
    at_bounds = [n for n, x in zip(names, best.x, strict=True) if x < 1e-3 or x > 1 - 1e-3]
    pred = predictor.predict(fitted)[index]
    return FitResult(fitted, values, mape_pct(pred, measured[index]), at_bounds, evals)


def folds(predictor: Predictor, k: int, seed: int = 0) -> list[np.ndarray]:
    """k folds stratified by (file, GPU count, model), so every fold sees every kind of row."""
    rows = predictor.measurements.rows
    strata = rows.groupby(["file", "num_gpus", "hidden_size", "num_layers"]).ngroup().to_numpy()
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(rows), dtype=np.int64)
    offset = 0
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        rng.shuffle(idx)
        assignment[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return [np.flatnonzero(assignment == f) for f in range(k)]


@dataclass
class CrossValidation:
    predicted_s: np.ndarray  # each row predicted by the fit that did not see it
    mape_pct: float
    fold_params: list[dict[str, float]]


def cross_validate(
    predictor: Predictor,
    base: Profile,
    k: int = 5,
    params: Sequence[str] = ITERATION_PARAMS,
    seed: int = 0,
) -> CrossValidation:
    """k-fold cross-validated predictions: each row from a fit on the other k-1 folds."""
    measured = predictor.measured_s
    out = np.full(len(measured), np.nan)
    fold_params = []
    for test in folds(predictor, k, seed):
        train = np.setdiff1d(np.arange(len(measured)), test)
        result = fit(predictor, base, params, rows=train)
        out[test] = predictor.predict(result.profile)[test]
        fold_params.append(result.params)
    return CrossValidation(out, mape_pct(out, measured), fold_params)


# ---- the whole calibration: NCCL sweep, iteration fit, cross-validation, provenance -------------
@dataclass
class Calibration:
    profile: Profile
    fit: FitResult
    cv: CrossValidation | None
    predictor: Predictor
    record: dict[str, Any]


def _tables_record(profile: Profile) -> dict[str, Any]:
    """The record of curves fitted to measured tables (``tablefit``), kept by a later fit."""
    return {"tables": profile.fit["tables"]} if "tables" in profile.fit else {}


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def calibrate(
    measurement_paths: Sequence[str | Path],
    setup: RunSetup,
    *,
    base: Profile | None = None,
    nccl_dir: str | Path | None = None,
    nccl_prefix: str | None = None,
    folds: int = 5,
    seed: int = 0,
    name: str | None = None,
) -> Calibration:
    """Fit a profile of ``setup.gpu`` to measured iteration times (and NCCL sweeps).

    Returns the fitted profile with its fit record (data files with their SHA-256, date,
    setup, fitted values, training and k-fold cross-validated MAPE per file).
    """
    from vtrain_opt import __version__
    from vtrain_opt.measurements import read_measurements
    from vtrain_opt.profiles import load_profile

    if folds == 1 or folds < 0:
        raise ValueError("folds: use 0 (no cross-validation) or at least 2")
    measurements = read_measurements(list(measurement_paths))
    predictor = Predictor(measurements, setup)
    profile = base or load_profile(setup.gpu)
    if profile.kind == "measured" and profile.gpu != setup.gpu:
        raise ValueError(
            f"profile {profile.name!r} was measured on {profile.gpu}, not --gpu {setup.gpu}"
        )
    torch_runs = setup.framework == "torch"
    params = TORCH_STEP_PARAMS if torch_runs else ITERATION_PARAMS
    fixed = {} if torch_runs else FIXED_PARAMS
    profile = profile.with_params(**{k: v for k, (v, _) in fixed.items()})
    record: dict[str, Any] = {
        "date": date.today().isoformat(),
        "vtrain_opt_version": __version__,
        "method": f"robust (soft-L1, scale {LOSS_SCALE:g}) loss on log(predicted/measured), the mean "
        "over files of each file's mean loss, parameters bounded (calibrate.FIT_BOUNDS)",
        "setup": asdict(setup),
        "data": [
            {
                "path": str(p),
                "sha256": _sha256(p),
                "rows": int((measurements.rows["file"] == str(p)).sum()),
            }
            for p in measurement_paths
        ],
        "skipped_rows": len(measurements.skipped),
        "fixed": {k: v for k, (v, _) in fixed.items()},
    }
    if nccl_dir is not None:
        profile, record["nccl"] = _fit_sweeps(profile, setup, nccl_dir, nccl_prefix)
    result = fit(predictor, profile, params)
    measured = predictor.measured_s
    files = measurements.rows["file"].to_numpy()
    pred = predictor.predict(result.profile)
    record["fitted"] = result.params
    record["at_bounds"] = result.at_bounds
    record["train_mape_pct"] = {
        f: mape_pct(pred[files == f], measured[files == f]) for f in sorted(set(files))
    }
    cv = None
    if folds:
        cv = cross_validate(predictor, profile, k=folds, params=params, seed=seed)
        record["cv"] = {
            "folds": folds,
            "seed": seed,
            "mape_pct": {
                f: mape_pct(cv.predicted_s[files == f], measured[files == f])
                for f in sorted(set(files))
            },
            "overall_mape_pct": cv.mape_pct,
        }
    sources = dict(result.profile.sources)
    for k in params:
        sources[k] = f"fitted to {len(measured)} measured iterations on {record['date']} (see fit)"
    for k, (_, why) in fixed.items():
        sources[k] = why
    if "nccl" in record:
        for k in record["nccl"]["fitted"]:
            sources[k] = f"fitted to nccl-tests all-reduce sweeps in {nccl_dir} (see fit.nccl)"
    runs = f"measured {'plain PyTorch' if torch_runs else 'Megatron'} iteration times"
    files = ", ".join(Path(p).name for p in measurement_paths)
    if profile.kind == "measured":
        # a measured profile stays one: its tables, calibrated on real steps
        fitted = replace(
            result.profile,
            name=name or profile.name,
            sources=sources,
            description=f"{profile.description} Calibrated on {runs} ({files}).".strip(),
            fit={**profile.fit, **record},
        )
    else:
        fitted = replace(
            result.profile,
            name=name or setup.gpu,
            gpu=setup.gpu,
            kind="calibrated",
            sources=sources,
            description=f"{setup.gpu} profile calibrated on {runs} ({files})."
            + (f" {profile.description}" if "tables" in profile.fit else ""),
            provenance={"method": "calibrated", "date": record["date"]},
            fit={**_tables_record(profile), **record},
        )
    return Calibration(fitted, result, cv, predictor, record)


def _fit_sweeps(
    profile: Profile, setup: RunSetup, nccl_dir: str | Path, nccl_prefix: str | None
) -> tuple[Profile, dict[str, Any]]:
    """The intra-node collective model fitted to nccl-tests sweeps, and its record."""
    from vtrain_opt.nccl import NCCL_PARAMS, error_table, fit_collectives, read_sweeps

    sweep = read_sweeps(nccl_dir, nccl_prefix or setup.gpu.split("-")[0])
    cluster = setup.cluster()
    profile = fit_collectives(sweep, profile, cluster)
    table = error_table(sweep, profile, cluster)
    return profile, {
        "dir": str(nccl_dir),
        "files": sorted({f"{sweep.gpu}_allreduce_{n}gpu.csv" for n in sweep.group}),
        "fitted": {k: profile.params[k] for k in NCCL_PARAMS},
        # a size band the sweeps do not cover has no error: null, not NaN, in the JSON
        "mape_pct_by_group_and_size": [
            {k: (None if v != v else v) for k, v in row.items()}
            for row in table.round(2).to_dict("records")
        ],
    }


def calibrate_collectives(
    setup: RunSetup,
    nccl_dir: str | Path,
    *,
    base: Profile | None = None,
    nccl_prefix: str | None = None,
    name: str | None = None,
) -> Profile:
    """Fit only the intra-node collective model of a profile (``calibrate --nccl`` without
    ``--measurements``); every other parameter keeps the base profile's value."""
    from vtrain_opt import __version__
    from vtrain_opt.profiles import load_profile

    base = base or load_profile(setup.gpu)
    profile, nccl = _fit_sweeps(base, setup, nccl_dir, nccl_prefix)
    today = date.today().isoformat()
    sources = dict(profile.sources)
    for k in nccl["fitted"]:
        sources[k] = f"fitted to nccl-tests all-reduce sweeps in {nccl_dir} (see fit.nccl)"
    return replace(
        profile,
        name=name or setup.gpu,
        gpu=setup.gpu,
        sources=sources,
        description=f"{base.description.rstrip('.')}. Collective model fitted to nccl-tests "
        f"all-reduce sweeps ({', '.join(nccl['files'])}) on {today}.",
        provenance={**base.provenance, "collectives": f"fitted to nccl-tests sweeps, {today}"},
        fit={"date": today, "vtrain_opt_version": __version__, "nccl": nccl},
    )


def derive(calibrated: Profile, gpu: str) -> Profile:
    """A profile of another GPU from a calibrated one: the efficiency model is kept and the
    peaks, bandwidths and memory come from the GPU's datasheet (the catalog)."""
    note = (
        f"derived from the {calibrated.kind} {calibrated.gpu} profile ({calibrated.id}): value kept; "
        f"{gpu}'s peaks and bandwidths come from its datasheet"
    )
    return replace(
        calibrated,
        name=gpu,
        gpu=gpu,
        kind="derived",
        sources={k: note for k in calibrated.params},
        description=f"{gpu} profile derived from the {calibrated.kind} {calibrated.gpu} profile by "
        "datasheet ratios (search_spaces/gpus.yaml); the efficiencies and overheads are "
        f"{calibrated.gpu}'s. Not measured on {gpu}.",
        provenance={
            "method": "derived",
            "derived_from": calibrated.id,
            "date": date.today().isoformat(),
        },
        fit={},
    )
