"""The exhaustive strategy: evaluate every plan of the space, exactly, in bounded chunks.

Each chunk (a range of core rows of one GPU type) is enumerated, simulated in one
vectorized call and reduced (``collect.py``) to what the answer needs; only those
reductions travel back. Chunks are spread over the backend's workers (Ray) or run one
after the other here; the answer is the same either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from vtrain_opt.search.collect import KEEP_ALL_MAX, TOP_K, Partial, empty, merge, reduce_evaluated
from vtrain_opt.search.evaluate import evaluate
from vtrain_opt.search.limits import REASON_DTYPE, Limits
from vtrain_opt.search.ray_backend import Backend
from vtrain_opt.search.space import CHUNK_PLANS, SearchSpace

# Points kept for the time-vs-cost plot.
PLOT_SAMPLE = 40_000
# Build every row per chunk while the raw product is at most this many times KEEP_ALL_MAX.
KEEP_RAW_FACTOR = 10
# Merge partial results every this many chunks, to bound the driver's memory.
MERGE_EVERY = 8

Progress = Callable[[int, int], None]  # (done, total)


def evaluate_chunk(
    space: SearchSpace,
    gpu_index: int,
    start: int,
    stop: int,
    tokens: float,
    limits: Limits,
    top_k: int,
    keep_all: bool,
    sample_stride: int,
) -> Partial:
    """Enumerate, simulate and reduce one chunk (runs here or as a Ray task)."""
    batch = space.plans(gpu_index, start, stop)
    if batch.n == 0:
        return empty()
    if not space.targets[gpu_index].ok:  # a dtype this GPU lacks: counted, not simulated
        part = empty()
        part.evaluated = batch.n
        part.reason_counts[REASON_DTYPE] = batch.n
        part.all_rows = pd.DataFrame()
        return part
    ev = evaluate(space, gpu_index, batch, tokens, limits)
    return reduce_evaluated(space, ev, top_k, keep_all, sample_stride)


def raw_size(space: SearchSpace) -> int:
    """Core rows x extras: an upper bound of the space's size, known without enumerating."""
    extras = len(space.extras["vpp"]) * space.split_count * len(space.ep) * len(space.etp)
    return sum(len(space.core(g)["tp"]) for g in range(len(space.targets))) * extras


def run_exhaustive(
    space: SearchSpace,
    tokens: float,
    limits: Limits,
    backend: Backend,
    progress: Progress | None = None,
    top_k: int = TOP_K,
    keep_all_max: int = KEEP_ALL_MAX,
) -> Partial:
    """Evaluate the whole space on ``backend``; chunks are spread over its workers."""
    ex = len(space.extras["vpp"]) * space.split_count
    raw = raw_size(space)
    chunk_plans = CHUNK_PLANS
    if backend.workers > 1:  # at least two chunks per worker, so that all of them work
        chunk_plans = max(ex, min(CHUNK_PLANS, math.ceil(raw / (2 * backend.workers))))
    chunks = space.chunks(chunk_plans)
    stride = max(1, math.ceil(raw / PLOT_SAMPLE))
    shared = backend.put(space)
    # rows are built per chunk only when the space may be small enough to keep them all
    # (the valid plans are a fraction of the raw product); the final count decides
    keep = raw <= KEEP_RAW_FACTOR * keep_all_max
    calls = [(shared, g, s, e, tokens, limits, top_k, keep, stride) for g, s, e in chunks]
    parts: list[Partial] = []
    done = 0
    for (_, s, e), part in zip(chunks, backend.map(evaluate_chunk, calls), strict=True):
        parts.append(part)
        done += (e - s) * ex
        if progress:
            progress(done, raw)
        if len(parts) >= MERGE_EVERY:
            parts = [merge(parts, top_k, keep_all_max)]
    part = merge(parts, top_k, keep_all_max)
    if part.all_rows is not None and part.evaluated > keep_all_max:
        part.all_rows = None
    return part
