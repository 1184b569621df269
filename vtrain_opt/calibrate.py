"""Fit a profile's bounded parameters to measured iteration times; cross-validated error.

The fit minimizes a robust (soft-L1) loss on log(predicted / measured), i.e. on relative
error, over a handful of physical parameters, each kept inside its bounds
(``profiles.PARAM_DEFS`` or tighter ``FIT_BOUNDS``). Parameters are searched in a [0, 1]
box mapped linearly (log-linearly for overheads) onto their bounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from vtrain_opt.measurements import MeasurementSet
from vtrain_opt.profiles import PARAM_DEFS, Profile
from vtrain_opt.sim.step import make_context, simulate_arrays
from vtrain_opt.spec.hardware import ClusterSpec, get_cluster
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import RECOMPUTE_MODES, PlanBatch
from vtrain_opt.spec.setup import Setup

# The parameters fitted to iteration times, and the ranges a fit may use (tighter than the
# profile's validity bounds where physics says so).
ITERATION_PARAMS = (
    "gemm_efficiency",
    "gemm_k_half",
    "memory_efficiency",
    "kernel_overhead_s",
    "host_layer_s",
    "host_collective_wait",
    "host_overlap",
    "microbatch_overhead_s",
    "iteration_overhead_s",
    "network_efficiency",
)
FIT_BOUNDS: dict[str, tuple[float, float]] = {
    "gemm_efficiency": (0.4, 0.95),
    "gemm_k_half": (0.0, 512.0),
    "memory_efficiency": (0.4, 0.95),
    "kernel_overhead_s": (0.1e-6, 20e-6),
    "host_layer_s": (20e-6, 5e-3),
    "microbatch_overhead_s": (10e-6, 10e-3),
    "iteration_overhead_s": (1e-4, 0.5),
    "network_efficiency": (0.3, 1.0),
    "host_collective_wait": (0.0, 1.0),
    "host_overlap": (1.0, 16.0),
    "nvlink_efficiency": (0.3, 1.0),
    "collective_latency_s": (1e-6, 200e-6),
}
# Overheads span decades: search them in log space.
LOG_PARAMS = {
    "kernel_overhead_s",
    "host_layer_s",
    "microbatch_overhead_s",
    "iteration_overhead_s",
    "collective_latency_s",
}


@dataclass(frozen=True)
class RunSetup:
    """How the measured runs were made (defaults: the stated setup of vTrain's set)."""

    gpu: str = "a100-80gb"
    family: str = "gpt"
    vocab_size: int = 50257
    dtype: str = "fp16"
    attention: str = "unfused"
    recompute: str = "full"
    gpus_per_node: int = 8
    inter_node_gbps: float = 800.0
    dp_overlap: bool = False  # no gradient bucketing: the all-reduce follows the backward

    def __post_init__(self) -> None:
        if self.recompute not in RECOMPUTE_MODES:
            raise ValueError(
                f"recompute: {self.recompute!r} is not one of {', '.join(RECOMPUTE_MODES)}"
            )

    def cluster(self) -> ClusterSpec:
        return get_cluster(self.gpu).with_overrides(
            gpus_per_node=self.gpus_per_node, inter_node_gbps=self.inter_node_gbps
        )


@dataclass
class Predictor:
    """Predicts measured rows for any profile; the rows' models and plans are built once."""

    measurements: MeasurementSet
    setup: RunSetup = field(default_factory=RunSetup)

    def __post_init__(self) -> None:
        rows = self.measurements.rows
        self._cluster = self.setup.cluster()
        self._setup = Setup(dtype=self.setup.dtype, attention=self.setup.attention)
        self._groups: list[tuple[ModelSpec, PlanBatch, np.ndarray]] = []
        keys = ["hidden_size", "num_attention_heads", "num_layers", "seq_length"]
        for (h, a, layers, s), g in rows.groupby(keys, sort=True):
            model = ModelSpec(
                family=self.setup.family,
                num_layers=int(layers),
                hidden_size=int(h),
                num_attention_heads=int(a),
                vocab_size=self.setup.vocab_size,
                seq_length=int(s),
                name=f"h{h}-a{a}-l{layers}-s{s}",
            )
            batch = PlanBatch(
                tp=g["tp"].to_numpy(),
                pp=g["pp"].to_numpy(),
                dp=g["dp"].to_numpy(),
                mb=g["micro_batch"].to_numpy(),
                gb=g["global_batch"].to_numpy(),
                recompute=self.setup.recompute,
                dp_overlap=self.setup.dp_overlap,
            )
            reason = batch.check(model)
            if (reason != 0).any():
                i = int(np.flatnonzero(reason != 0)[0])
                r = g.iloc[i]
                raise ValueError(
                    f"{r['file']} row {r['row']}: the plan is not valid for this setup"
                )
            self._groups.append((model, batch, g.index.to_numpy()))

    @property
    def measured_s(self) -> np.ndarray:
        return self.measurements.measured_s

    def predict(self, profile: Profile) -> np.ndarray:
        out = np.empty(len(self.measurements.rows))
        for model, batch, index in self._groups:
            ctx = make_context(model, self._cluster, profile, self._setup)
            out[index] = simulate_arrays(ctx, batch)["iteration_time_s"]
        return out


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
    loss_scale: float = 0.05,
) -> FitResult:
    """Fit ``params`` of ``base`` to the measured rows (all, or the index array ``rows``)."""
    names = list(params)
    measured = predictor.measured_s
    index = np.arange(len(measured)) if rows is None else np.asarray(rows)
    # each measurement file weighs the same, whatever its number of rows
    files = predictor.measurements.rows["file"].to_numpy()[index]
    _, inverse, counts = np.unique(files, return_inverse=True, return_counts=True)
    weight = 1.0 / np.sqrt(counts[inverse] / counts.min())
    evals = 0

    def profile_at(u: np.ndarray) -> Profile:
        return base.with_params(
            **{n: _from_unit(n, float(x)) for n, x in zip(names, u, strict=True)}
        )

    def residuals(u: np.ndarray) -> np.ndarray:
        nonlocal evals
        evals += 1
        pred = predictor.predict(profile_at(u))[index]
        return weight * np.log(pred / measured[index])

    u0 = np.array([_to_unit(n, base.params[n]) for n in names])
    best = None
    # two starts (the shipped values and the middle of the box) guard against a local optimum
    for start in (u0, np.full(len(names), 0.5)):
        r = least_squares(
            residuals,
            start,
            bounds=(0.0, 1.0),
            loss="soft_l1",
            f_scale=loss_scale,
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
