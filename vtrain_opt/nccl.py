"""Fit and check the intra-node collective model on nccl-tests all-reduce sweeps.

Files are named ``{gpu}_allreduce_{n}gpu.csv`` (nccl-tests columns: ``size(B)``,
``count``, ``type``, then time (ns) and bus bandwidth (GB/s) out-of-place, then the
same in-place). The model is ``OpModel.collective_s('all_reduce', ...)``: a fixed launch
cost, 2(n-1) ring steps of the cluster's link latency, and 2(n-1)/n of the buffer at the
profile's fraction of NVLink bandwidth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from vtrain_opt.profiles import Profile
from vtrain_opt.sim.ops import OpModel
from vtrain_opt.spec.hardware import ClusterSpec
from vtrain_opt.spec.setup import Setup

FILE_PATTERN = re.compile(r"(?P<gpu>[a-z0-9]+)_allreduce_(?P<n>\d+)gpu\.csv$")
NCCL_PARAMS = ("nvlink_efficiency", "collective_latency_s", "collective_hbm_passes")
SIZE_BANDS = (
    (1 << 20, 8 << 20),
    (8 << 20, 64 << 20),
    (64 << 20, 256 << 20),
    (256 << 20, (1 << 30) + 1),
)


@dataclass
class Sweep:
    """All-reduce times of one GPU kind: rows of (group, bytes, seconds)."""

    gpu: str
    group: np.ndarray
    nbytes: np.ndarray
    time_s: np.ndarray


def read_sweeps(folder: str | Path, gpu_prefix: str) -> Sweep:
    """Read every ``{gpu_prefix}_allreduce_{n}gpu.csv`` in ``folder`` (out-of-place times)."""
    folder = Path(folder)
    frames = []
    for path in sorted(folder.glob(f"{gpu_prefix}_allreduce_*gpu.csv")):
        m = FILE_PATTERN.search(path.name)
        if not m:
            continue
        raw = pd.read_csv(path)
        if raw.shape[1] < 5 or "size(B)" not in raw.columns:
            raise ValueError(
                f"{path}: not an nccl-tests sweep (expected 'size(B)' and time columns)"
            )
        frames.append(
            pd.DataFrame(
                {
                    "group": int(m["n"]),
                    "nbytes": pd.to_numeric(raw["size(B)"], errors="raise").astype(float),
                    "time_s": pd.to_numeric(raw.iloc[:, 3], errors="raise").astype(float) * 1e-9,
                }
            )
        )
    if not frames:
        raise ValueError(f"no {gpu_prefix}_allreduce_<n>gpu.csv files in {folder}")
    df = pd.concat(frames, ignore_index=True)
    return Sweep(
        gpu_prefix, df["group"].to_numpy(), df["nbytes"].to_numpy(), df["time_s"].to_numpy()
    )


def predict(sweep: Sweep, profile: Profile, cluster: ClusterSpec) -> np.ndarray:
    ops = OpModel(profile, cluster, Setup(dtype="fp16", attention="unfused"))
    return ops.collective_s("all_reduce", sweep.nbytes, sweep.group, sweep.group)


def fit_collectives(
    sweep: Sweep, profile: Profile, cluster: ClusterSpec, rows: np.ndarray | None = None
) -> Profile:
    """Fit NVLink efficiency, the fixed latency and the copy traffic to relative error.

    Sizes are 1 MiB apart, so large messages dominate the rows; weights of 1/sqrt(size)
    give every decade of message size a similar say.
    """
    names = NCCL_PARAMS
    lo = np.array([0.2, 0.0, 0.0])
    hi = np.array([1.0, 200e-6, 8.0])
    index = np.arange(len(sweep.time_s)) if rows is None else np.asarray(rows)
    weight = 1.0 / np.sqrt(sweep.nbytes[index] / sweep.nbytes.min())

    def at(x: np.ndarray) -> Profile:
        return profile.with_params(**{n: float(v) for n, v in zip(names, x, strict=True)})

    def residuals(x: np.ndarray) -> np.ndarray:
        pred = predict(sweep, at(x), cluster)[index]
        return weight * np.log(pred / sweep.time_s[index])

    x0 = np.clip([profile.params[n] for n in names], lo, hi)
    r = least_squares(residuals, x0, bounds=(lo, hi), x_scale=[0.1, 10e-6, 1.0])
    return at(r.x)


def error_table(sweep: Sweep, profile: Profile, cluster: ClusterSpec) -> pd.DataFrame:
    """MAPE (%) by group size and message-size band."""
    ape = np.abs(predict(sweep, profile, cluster) - sweep.time_s) / sweep.time_s * 100
    rows = []
    for n in np.unique(sweep.group):
        row: dict[str, object] = {"gpus": int(n)}
        for lo, hi in SIZE_BANDS:
            mask = (sweep.group == n) & (sweep.nbytes >= lo) & (sweep.nbytes < hi)
            row[f"{lo >> 20}-{hi >> 20} MiB"] = float(ape[mask].mean()) if mask.any() else np.nan
        row["all"] = float(ape[sweep.group == n].mean())
        rows.append(row)
    return pd.DataFrame(rows)
