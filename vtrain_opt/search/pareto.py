"""Exact selection over arrays: the time-cost Pareto front and the k best, deterministically.

Every order breaks ties by the plan's columns, so the same plans come out whatever order
they went in (chunks, shards, Ray or not).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def lex_order(primary: Sequence[np.ndarray], tiebreak: Sequence[np.ndarray]) -> np.ndarray:
    """Indices sorting by the primary keys, then the tie-break keys (all ascending)."""
    keys = [*primary, *tiebreak]
    return np.lexsort(tuple(reversed(keys)))


def pareto_indices(
    time: np.ndarray, cost: np.ndarray, tiebreak: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """Indices of the non-dominated points when minimizing both ``time`` and ``cost``.

    One index per distinct non-dominated (time, cost) point (the first by ``tiebreak``
    where several plans share it), ordered by increasing time. NaN points are ignored.
    A point is kept iff its cost is strictly below every cost seen at a smaller time.
    """
    idx = np.flatnonzero(np.isfinite(time) & np.isfinite(cost))
    if idx.size == 0:
        return idx
    if tiebreak:
        # the front's points from a cheap two-key sort; then only the plans sitting on
        # those points need the full tie-break (every other plan is dominated by one)
        by_time = idx[np.lexsort((cost[idx], time[idx]))]
        points = by_time[_front_order(by_time, cost)]
        idx = idx[np.isin(time[idx], time[points]) & np.isin(cost[idx], cost[points])]
    order = idx[lex_order([time[idx], cost[idx]], [t[idx] for t in tiebreak])]
    return order[_front_order(order, cost)]


def _front_order(order: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Positions in ``order`` (sorted by time, then cost) whose cost beats all before."""
    c = cost[order]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(c)[:-1]))
    return np.flatnonzero(c < best_before)


def smallest_indices(
    values: np.ndarray,
    k: int,
    secondary: np.ndarray | None = None,
    tiebreak: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Indices of the ``k`` smallest finite ``values`` (ties: ``secondary``, then ``tiebreak``)."""
    idx = np.flatnonzero(np.isfinite(values))
    if idx.size > k:
        kth = np.partition(values[idx], k - 1)[k - 1]
        idx = idx[values[idx] <= kth]  # every candidate for the k best, ties included
    primary = [values[idx]] if secondary is None else [values[idx], secondary[idx]]
    order = idx[lex_order(primary, [t[idx] for t in tiebreak])]
    return order[:k]


def dominated_by(front_time: np.ndarray, front_cost: np.ndarray, time: float, cost: float) -> bool:
    """Whether (time, cost) is dominated by some point of a front (weakly better in both,
    strictly in one)."""
    le = (front_time <= time) & (front_cost <= cost)
    lt = (front_time < time) | (front_cost < cost)
    return bool(np.any(le & lt))
