"""The task graph of a pipeline schedule as arrays, built with numpy.

The same graph as the reference replay builds task by task (``sim/timeline.py``'s
``build_pipeline`` without rings or all-to-alls): per stage its compute stream in
Megatron's op order (``schedule_order``), a transfer after each forward (backward) chunk
but the model's last (first), on one link per direction and stage, transfers on a link in
order. Building it as arrays costs numpy steps per stage instead of Python objects per
task, which is what made the uneven-stage core slow on pipelines of thousands of
micro-batch steps. ``tests/test_pipeline_dag.py`` checks it against the replay's graph.
"""

from __future__ import annotations

import numpy as np


def stage_order(p: int, v: int, m: int, stage: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``timeline.schedule_order`` of one stage as arrays: kind (0 forward, 1 backward),
    micro-batch and model chunk, in the stage's op order; (2 m v,) each."""
    total = m * v
    w = min(p - stage - 1, m) if v == 1 else min((p - stage - 1) * 2 + (v - 1) * p, total)
    steady = total - w
    kind = np.concatenate([np.zeros(w), np.tile([0, 1], steady), np.ones(w)]).astype(np.int64)
    pairs = np.stack([w + np.arange(steady), np.arange(steady)], axis=1).ravel()
    k = np.concatenate([np.arange(w), pairs, np.arange(steady, total)]).astype(np.int64)
    mb = (k // (p * v)) * p + k % p
    fwd_chunk = (k // p) % v
    chunk = np.where(kind == 0, fwd_chunk, v - 1 - fwd_chunk)
    return kind, mb, chunk


def pipeline_dag(p: int, v: int, m: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The graph's predecessors (N, 3) (padded with N), each task's duration row ((kind *
    p + stage) * v + chunk for a compute task, 2 p v for a transfer), and the tasks of
    stage 0's and the last stage's final compute. Task ids: stage i's q-th compute task is
    i * 2mv + q; the transfer after compute task t is t + 2pmv (unused where there is
    none: a task without predecessors or successors)."""
    per = 2 * m * v
    n_compute = p * per
    n = 2 * n_compute
    pad = n
    cid = np.empty((2, p, m, v), dtype=np.int64)  # (kind, stage, mb, chunk) -> compute id
    orders = [stage_order(p, v, m, i) for i in range(p)]
    for i, (kind, mb, chunk) in enumerate(orders):
        cid[kind, i, mb, chunk] = i * per + np.arange(per)
    sid = cid + n_compute  # the transfer after each compute task
    stages = np.arange(p)[:, None, None]
    chunks = np.arange(v)[None, None, :]
    has_send = np.stack(
        [
            np.broadcast_to((stages < p - 1) | (chunks < v - 1), (p, m, v)),
            np.broadcast_to((stages > 0) | (chunks > 0), (p, m, v)),
        ]
    )
    pred = np.full((n, 3), pad, dtype=np.int64)
    rows = np.full(n, 2 * p * v, dtype=np.int64)
    # what a forward chunk receives: the previous stage's send, or (stage 0, chunk > 0) the
    # last stage's send of the chunk before; a backward: the next stage's, or (last stage,
    # chunk < v - 1) stage 0's of the chunk after
    recv_f = np.full((p, m, v), pad, dtype=np.int64)
    recv_f[1:] = sid[0, :-1]
    recv_f[0, :, 1:] = sid[0, p - 1, :, :-1]
    recv_b = np.full((p, m, v), pad, dtype=np.int64)
    recv_b[:-1] = sid[1, 1:]
    recv_b[p - 1, :, :-1] = sid[1, 0, :, 1:]
    for i, (kind, mb, chunk) in enumerate(orders):
        ids = i * per + np.arange(per)
        prev = np.concatenate([[pad], ids[:-1]])  # the stage's compute stream
        fwd = kind == 0
        pred[ids, 0] = np.where(fwd, recv_f[i, mb, chunk], cid[0, i, mb, chunk])
        pred[ids, 1] = np.where(fwd, prev, recv_b[i, mb, chunk])
        pred[ids, 2] = np.where(fwd, pad, prev)
        rows[ids] = (kind * p + i) * v + chunk
        sends = has_send[kind, i, mb, chunk]
        for k in (0, 1):  # each direction's link serializes this stage's transfers in order
            mine = ids[sends & (kind == k)]
            pred[mine + n_compute, 0] = mine
            pred[mine[1:] + n_compute, 1] = mine[:-1] + n_compute
    return pred, rows, (per - 1), (p - 1) * per + per - 1


def depths(pred: np.ndarray) -> np.ndarray:
    """Each task's depth: the longest chain of predecessors before it (N,), by Kahn's
    algorithm a whole frontier at a time."""
    n = len(pred)
    real = pred < n
    indeg = real.sum(axis=1)
    src, dst = pred[real], np.nonzero(real)[0]
    order = np.argsort(src, kind="stable")
    succ = dst[order]
    start = np.searchsorted(src[order], np.arange(n + 1))
    depth = np.full(n, -1, dtype=np.int64)
    frontier = np.flatnonzero(indeg == 0)
    level = 0
    while frontier.size:
        depth[frontier] = level
        lo, hi = start[frontier], start[frontier + 1]
        counts = hi - lo
        if counts.sum() == 0:
            break
        offsets = np.repeat(lo - np.cumsum(counts) + counts, counts)
        nxt = succ[offsets + np.arange(counts.sum())]
        np.subtract.at(indeg, nxt, 1)
        frontier = np.unique(nxt[indeg[nxt] == 0])
        level += 1
    assert (depth >= 0).all(), "the pipeline's task graph has a cycle"
    return depth
