"""What a search keeps of the plans it evaluated, and how partial results combine.

A ``Partial`` holds the reductions the answer needs: the Pareto front of the feasible
plans, the k best by time and by cost, the front of the plans that fit in memory whatever
the limits (the closest plans when a budget is impossible), the leanest plan, counts per
reason, a sample for the plot, and every row when there are few. Reductions are exact
and order-independent (ties broken by the plan columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vtrain_opt.search.evaluate import (
    COST,
    TIME,
    Evaluated,
    concat_rows,
    frame_tiebreak,
    rows,
    sort_rows,
)
from vtrain_opt.search.limits import SEARCH_REASONS
from vtrain_opt.search.pareto import pareto_indices, smallest_indices
from vtrain_opt.search.space import SearchSpace

# Keep every evaluated plan (plans.parquet holds them all) up to this many; beyond, the
# TOP_K best by time and by cost plus both fronts.
KEEP_ALL_MAX = 200_000
TOP_K = 2_000
SAMPLE_COLUMNS = ("gpu", TIME, COST, "feasible", "fits_memory")


@dataclass
class Partial:
    """What some evaluated plans contribute to the answer."""

    evaluated: int
    reason_counts: np.ndarray  # (len(SEARCH_REASONS),): plans per reason, 0 = feasible
    front: pd.DataFrame  # feasible, non-dominated in (time, cost), by increasing time
    front_fits: pd.DataFrame  # fitting in memory (limits ignored), non-dominated
    top_time: pd.DataFrame  # k fastest feasible (ties: cheaper first)
    top_cost: pd.DataFrame  # k cheapest feasible (ties: faster first)
    least_memory: pd.DataFrame  # the plan with the smallest memory / capacity ratio
    sample: pd.DataFrame  # SAMPLE_COLUMNS of some plans, for the plot
    all_rows: pd.DataFrame | None  # every plan, when kept

    @property
    def feasible(self) -> int:
        return int(self.reason_counts[0])


def reduce_evaluated(
    space: SearchSpace, ev: Evaluated, top_k: int, keep_all: bool, sample_stride: int
) -> Partial:
    """Reduce one evaluated batch, picking row indices on arrays before building frames."""
    tb = ev.tiebreak()
    time, cost = ev.cols[TIME], ev.cols[COST]
    t_f, c_f = np.where(ev.feasible, time, np.nan), np.where(ev.feasible, cost, np.nan)
    t_m, c_m = np.where(ev.fits, time, np.nan), np.where(ev.fits, cost, np.nan)
    ratio = ev.cols["memory_per_gpu_bytes"] / ev.cols["memory_capacity_bytes"]
    sample_idx = np.arange(0, ev.n, sample_stride)
    return Partial(
        evaluated=ev.n,
        reason_counts=np.bincount(ev.reason, minlength=len(SEARCH_REASONS)),
        front=rows(space, ev, pareto_indices(t_f, c_f, tb)),
        front_fits=rows(space, ev, pareto_indices(t_m, c_m, tb)),
        top_time=rows(space, ev, smallest_indices(t_f, top_k, c_f, tb)),
        top_cost=rows(space, ev, smallest_indices(c_f, top_k, t_f, tb)),
        least_memory=rows(space, ev, smallest_indices(ratio, 1, None, tb)),
        sample=rows(space, ev, sample_idx, SAMPLE_COLUMNS),
        all_rows=rows(space, ev) if keep_all else None,
    )


def reduce_rows(df: pd.DataFrame, top_k: int = TOP_K) -> Partial:
    """The same reductions from a frame of result rows (every row kept)."""
    if df.empty:
        return empty()
    codes = df["reason"].cat.codes.to_numpy()
    feasible, fits = df["feasible"].to_numpy(), df["fits_memory"].to_numpy()
    df_f, df_m = df[feasible], df[fits]
    return Partial(
        evaluated=len(df),
        reason_counts=np.bincount(codes, minlength=len(SEARCH_REASONS)),
        front=_front(df_f),
        front_fits=_front(df_m),
        top_time=_top(df_f, TIME, COST, top_k),
        top_cost=_top(df_f, COST, TIME, top_k),
        least_memory=_top(df, None, None, 1),
        sample=df[list(SAMPLE_COLUMNS)].reset_index(drop=True),
        all_rows=sort_rows(df),
    )


def merge(parts: list[Partial], top_k: int = TOP_K, keep_all_max: int = KEEP_ALL_MAX) -> Partial:
    """Combine partial results exactly (the order of ``parts`` does not matter).

    Every row is kept while the plans number at most ``keep_all_max``.
    """
    parts = [p for p in parts if p.evaluated]
    if not parts:
        return empty()
    if len(parts) == 1:
        return parts[0]
    all_rows = None
    total = sum(p.evaluated for p in parts)
    if total <= keep_all_max and all(p.all_rows is not None for p in parts):
        all_rows = sort_rows(concat_rows([p.all_rows for p in parts]))  # type: ignore[misc]
    return Partial(
        evaluated=total,
        reason_counts=np.sum([p.reason_counts for p in parts], axis=0),
        front=_front(concat_rows([p.front for p in parts])),
        front_fits=_front(concat_rows([p.front_fits for p in parts])),
        top_time=_top(concat_rows([p.top_time for p in parts]), TIME, COST, top_k),
        top_cost=_top(concat_rows([p.top_cost for p in parts]), COST, TIME, top_k),
        least_memory=_top(concat_rows([p.least_memory for p in parts]), None, None, 1),
        sample=concat_rows([p.sample for p in parts]),
        all_rows=all_rows,
    )


def empty() -> Partial:
    nothing = pd.DataFrame()
    return Partial(
        evaluated=0,
        reason_counts=np.zeros(len(SEARCH_REASONS), dtype=np.int64),
        front=nothing,
        front_fits=nothing,
        top_time=nothing,
        top_cost=nothing,
        least_memory=nothing,
        sample=nothing,
        all_rows=None,
    )


def _front(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df.reset_index(drop=True)
    idx = pareto_indices(df[TIME].to_numpy(), df[COST].to_numpy(), frame_tiebreak(df))
    return df.iloc[idx].reset_index(drop=True)


def _top(df: pd.DataFrame, key: str | None, second: str | None, k: int) -> pd.DataFrame:
    """The k smallest by ``key`` (None: memory / capacity), ties by ``second`` then plan."""
    if df.empty:
        return df.reset_index(drop=True)
    if key is None:
        values = (df["memory_per_gpu_bytes"] / df["memory_capacity_bytes"]).to_numpy()
    else:
        values = df[key].to_numpy()
    sec = None if second is None else df[second].to_numpy()
    idx = smallest_indices(values, k, sec, frame_tiebreak(df))
    return df.iloc[idx].reset_index(drop=True)
