"""Evaluate plans of one GPU type with the vectorized core and turn chosen ones into rows.

``evaluate`` is the only place a search calls the simulator: one ``simulate_arrays`` call
per batch, then the search limits. ``rows`` builds a DataFrame for selected indices only,
so millions of plans never become millions of Python objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.search.limits import SEARCH_REASONS, Limits
from vtrain_opt.search.space import SearchSpace
from vtrain_opt.sim.step import simulate_arrays
from vtrain_opt.spec.plan import PLAN_COLUMNS, RECOMPUTE_MODES, ParallelPlan, PlanBatch
from vtrain_opt.spec.setup import DTYPES

TIME = "training_time_s"
COST = "cost_usd"
# Columns of a result row that identify the plan, in tie-break order.
PLAN_KEY = ("gpu", *(c for c in PLAN_COLUMNS if c != "num_gpus"), "dtype")


@dataclass
class Evaluated:
    """A batch of one target (GPU type and dtype) with its simulated columns and final
    reason codes; (N,)."""

    gpu_index: int
    batch: PlanBatch
    cols: dict[str, np.ndarray]
    reason: np.ndarray  # 0 = feasible (fits and meets every limit)
    dtype_code: int = 0  # the target's compute dtype, an index of DTYPES

    @property
    def n(self) -> int:
        return self.batch.n

    @property
    def feasible(self) -> np.ndarray:
        return self.reason == 0

    @property
    def fits(self) -> np.ndarray:
        """Fits in memory (limits ignored)."""
        return self.cols["reason_code"] == 0

    def tiebreak(self) -> list[np.ndarray]:
        """Plan columns in PLAN_KEY order, for deterministic ordering."""
        b = self.batch
        g = np.full(b.n, self.gpu_index, dtype=np.int64)
        return [
            *(g, b.tp, b.cp, b.ep, b.etp, b.pp, b.dp, b.mb, b.gb, b.recompute, b.sp, b.vpp),
            b.zero,
            b.dp_overlap,
            *(b.first, b.last),
            np.full(b.n, self.dtype_code, dtype=np.int64),
        ]


def evaluate(
    space: SearchSpace, target: int, batch: PlanBatch, tokens: float, limits: Limits
) -> Evaluated:
    """Simulate ``batch`` on target ``target`` (a GPU type under a dtype) and apply the
    limits."""
    ctx = space.context(target)
    cols = simulate_arrays(ctx, batch, tokens)
    reason = limits.apply(cols, batch.num_gpus)
    return Evaluated(space.gpu_of(target), batch, cols, reason, DTYPES.index(ctx.setup.dtype))


def rows(
    space: SearchSpace,
    ev: Evaluated,
    idx: np.ndarray | slice | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Result rows (plan, metrics, feasibility) of the plans ``idx`` of an evaluated batch.

    The plan columns are those of ``PlanBatch.to_frame`` plus ``gpu``; the frame is built
    in one go from arrays (inserting columns one by one is slow in pandas).
    """
    idx = slice(None) if idx is None else idx
    b = ev.batch
    tp, pp, dp, mb, gb = b.tp[idx], b.pp[idx], b.dp[idx], b.mb[idx], b.gb[idx]
    n = len(tp)
    reason = ev.reason[idx]
    data: dict[str, Any] = {
        "gpu": pd.Categorical.from_codes(
            np.full(n, ev.gpu_index, dtype=np.int16), dtype=gpu_dtype(space)
        ),
        "num_gpus": tp * b.cp[idx] * pp * dp,
        "tp": tp,
        "cp": b.cp[idx],
        "ep": b.ep[idx],
        "etp": b.etp[idx],
        "pp": pp,
        "dp": dp,
        "micro_batch": mb,
        "global_batch": gb,
        "num_microbatches": gb // np.maximum(dp * mb, 1),
        "recompute": pd.Categorical.from_codes(
            b.recompute[idx].astype(np.int8), dtype=_RECOMPUTE_DTYPE
        ),
        "sequence_parallel": b.sp[idx],
        "vpp": b.vpp[idx],
        "zero": b.zero[idx],
        "dp_overlap": b.dp_overlap[idx],
        "first_stage_layers": b.first[idx],
        "last_stage_layers": b.last[idx],
    }
    for name, arr in ev.cols.items():
        if name not in ("reason_code", "feasible"):
            data[name] = arr[idx]
    data["dtype"] = pd.Categorical.from_codes(np.full(n, ev.dtype_code, np.int8), dtype=_DTYPE)
    data["fits_memory"] = ev.fits[idx]
    data["feasible"] = reason == 0
    data["reason"] = pd.Categorical.from_codes(reason, dtype=_REASON_DTYPE)
    if columns is not None:
        data = {c: data[c] for c in columns}
    return pd.DataFrame(data, copy=False)


def plan_of_row(row: Any) -> ParallelPlan:
    """The plan of a result row (a Series or a mapping with the plan columns): ``rows``'s
    inverse for one plan."""
    names = [f.name for f in fields(ParallelPlan)]
    plain = {k: row[k].item() if hasattr(row[k], "item") else row[k] for k in names if k in row}
    return ParallelPlan.from_mapping(
        {k: str(v) if k == "recompute" else v for k, v in plain.items()}
    )


def gpu_dtype(space: SearchSpace) -> pd.CategoricalDtype:
    return pd.CategoricalDtype(pd.Index([g.name for g in space.gpus], dtype=object))


_DTYPE = pd.CategoricalDtype(pd.Index(list(DTYPES), dtype=object))
_RECOMPUTE_DTYPE = pd.CategoricalDtype(pd.Index(list(RECOMPUTE_MODES), dtype=object))
_REASON_DTYPE = pd.CategoricalDtype(pd.Index(list(SEARCH_REASONS), dtype=object))


def frame_tiebreak(df: pd.DataFrame) -> list[np.ndarray]:
    """PLAN_KEY columns of a result frame as integer arrays (categoricals by code)."""
    out = []
    for c in PLAN_KEY:
        col = df[c]
        out.append(
            col.cat.codes.to_numpy(np.int64)
            if isinstance(col.dtype, pd.CategoricalDtype)
            else col.to_numpy().astype(np.int64)
        )
    return out


def sort_rows(df: pd.DataFrame, primary: Sequence[str] = ()) -> pd.DataFrame:
    """Rows sorted by ``primary`` columns then the plan key, index reset."""
    from vtrain_opt.search.pareto import lex_order

    if df.empty:
        return df.reset_index(drop=True)
    order = lex_order([df[c].to_numpy() for c in primary], frame_tiebreak(df))
    return df.iloc[order].reset_index(drop=True)


def concat_rows(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate result frames, keeping categorical columns categorical."""
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return pd.DataFrame()
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    out = pd.concat(frames, ignore_index=True)
    for c in ("gpu", "recompute", "reason", "dtype"):
        if c in out and not isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype(pd.CategoricalDtype(frames[0][c].cat.categories))
    return out
