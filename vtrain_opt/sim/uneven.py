"""Pipelines with uneven stages: the schedule's exact makespan, vectorized over plans.

With first/last stage layer counts that differ from the middle stages'
(``--first-stage-layers``/``--last-stage-layers``, or the embedding and the loss counted
as a layer in the split), the slowest stage sets the pace of the steady state, and which
one that is depends on the plan (a light last stage with a heavy head, a middle stage
with one layer more than the edges, ...). No closed form covers every such case exactly
(max-of-paths bounds miss by up to ~10% on synthetic stages), so the core evaluates the
schedule's max-plus recurrence itself: the same dependency graph as the reference replay
(``sim/timeline.py``: Megatron's 1F1B or interleaved op order on every stage, one link
per direction between neighbouring stages), resolved in one topological order that
depends only on (pp, vpp, micro-batches) and is computed once per such triple; each step
is one numpy operation over all the plans sharing that triple. Its cost grows with
pp x vpp x micro-batches, so even plans keep the closed forms of ``sim/schedule.py``.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import pairwise

import numpy as np
import pandas as pd

from vtrain_opt.sim.pipeline_dag import depths, pipeline_dag
from vtrain_opt.sim.plan_costs import PlanCosts, stage_chunk_times
from vtrain_opt.sim.schedule import PipelineTimes
from vtrain_opt.sim.taskgraph import TaskGraph
from vtrain_opt.sim.timeline import build_pipeline
from vtrain_opt.spec.plan import PlanBatch


def _program(p: int, v: int, m: int) -> tuple[list[tuple[int, list[int]]], int, int]:
    """The reference of ``_levels`` (tests), from the replay's own task graph: the
    pipeline's tasks in a topological order: (duration row, predecessor positions)
    each, and the positions of stage 0's and the last stage's final compute tasks.
    Duration rows: (kind * p + stage) * v + chunk for a forward (kind 0) or a backward
    (kind 1); 2 p v for a transfer."""
    graph = TaskGraph()
    last = build_pipeline(graph, np.zeros((p, v)), np.zeros((p, v)), 0.0, m)
    names = list(graph.tasks)
    index = {n: i for i, n in enumerate(names)}
    preds: list[list[int]] = []
    rows: list[int] = []
    for name in names:
        task = graph.tasks[name]
        pr = [index[d] for d in task.deps]
        if name in graph._stream_prev:
            pr.append(index[graph._stream_prev[name]])
        preds.append(pr)
        if task.category == "p2p":
            rows.append(2 * p * v)
        else:
            kind = 0 if task.category == "forward" else 1
            stage = int(name.split()[1][1:])
            rows.append((kind * p + stage) * v + int(str(task.args["chunk"])))
    succs: list[list[int]] = [[] for _ in names]
    indeg = [len(pr) for pr in preds]
    for i, pr in enumerate(preds):
        for d in pr:
            succs[d].append(i)
    order = [i for i, d in enumerate(indeg) if d == 0]
    for i in order:  # Kahn's order (the list grows while it is walked)
        for s in succs[i]:
            indeg[s] -= 1
            if indeg[s] == 0:
                order.append(s)
    pos = {task: at for at, task in enumerate(order)}
    program = [(rows[i], [pos[d] for d in preds[i]]) for i in order]
    return program, pos[index[last[0]]], pos[index[last[-1]]]


Level = tuple[np.ndarray, np.ndarray, np.ndarray]  # (task positions, duration rows, preds)


@lru_cache(maxsize=256)
def _levels(p: int, v: int, m: int) -> tuple[tuple[Level, ...], int, int, int]:
    """The pipeline's task graph (``pipeline_dag``: the replay's, as arrays) grouped by
    depth (the longest chain of tasks before a task): the tasks of one level depend only
    on earlier levels, so each level is one numpy step over all its tasks and plans,
    instead of one step per task. Each level: the tasks' ids, their duration rows and their
    predecessors (L, 3), padded with the id ``tasks`` (an end of -inf, so the max is over
    the real ones). Also the number of tasks and the ids of stage 0's and the last stage's
    final compute tasks."""
    pred, rows, first_end, last_end = pipeline_dag(p, v, m)
    d = depths(pred)
    order = np.argsort(d, kind="stable")
    bounds = np.searchsorted(d[order], np.arange(int(d.max()) + 2))
    levels = tuple((order[a:b], rows[order[a:b]], pred[order[a:b]]) for a, b in pairwise(bounds))
    return levels, len(pred), first_end, last_end


def _level_ends(levels: tuple[Level, ...], tasks: int, durations: np.ndarray) -> np.ndarray:
    """End time of every task, (tasks + 1, n) (the last row: the padding, -inf), level by
    level. Exactly ``_ends``'s values: max(a, b) + d == max(a + d, b + d) in floating
    point (rounding is monotone), and level 0 holds the tasks without predecessors."""
    ends = np.empty((tasks + 1, durations.shape[1]))
    ends[tasks] = -np.inf
    for depth, (at, rows, pred) in enumerate(levels):
        if depth == 0:
            ends[at] = durations[rows]
            continue
        top = ends[pred[:, 0]]
        for k in range(1, pred.shape[1]):
            np.maximum(top, ends[pred[:, k]], out=top)
        ends[at] = top + durations[rows]
    return ends


def _ends(program: list[tuple[int, list[int]]], durations: np.ndarray) -> np.ndarray:
    """End time of every task, (tasks, n), by the max-plus recurrence, one task at a time
    (the reference of ``_level_ends``)."""
    ends = np.empty((len(program), durations.shape[1]))
    for t, (row, preds) in enumerate(program):
        if not preds:
            ends[t] = durations[row]
        elif len(preds) == 1:
            np.add(ends[preds[0]], durations[row], out=ends[t])
        else:
            np.add(np.maximum(ends[preds[0]], ends[preds[1]]), durations[row], out=ends[t])
            for d in preds[2:]:
                np.maximum(ends[t], ends[d] + durations[row], out=ends[t])
    return ends


def uneven_pipeline_times(
    k: PlanCosts, batch: PlanBatch, num_layers: int, m: np.ndarray, pipe: PipelineTimes
) -> PipelineTimes:
    """``pipe`` with the plans of uneven stages replaced by their exact pipeline phase."""
    out = PipelineTimes(*(np.array(x, dtype=np.float64, copy=True) for x in vars(pipe).values()))
    sel = np.flatnonzero(batch.uneven & (batch.pp > 1))
    if sel.size == 0:
        return out
    mi = np.asarray(m, dtype=np.int64)[sel]
    key = (batch.pp[sel] << 40) | (batch.vpp[sel] << 32) | mi
    codes, uniq = pd.factorize(key, sort=False)
    for g, kk in enumerate(np.asarray(uniq, dtype=np.int64)):
        idx = sel[codes == g]
        p, v, mg = int(kk >> 40), int((kk >> 32) & 0xFF), int(kk & 0xFFFFFFFF)
        fwd, bwd = stage_chunk_times(k, batch, num_layers, idx, p, v)
        durations = np.concatenate(
            [fwd.reshape(p * v, -1), bwd.reshape(p * v, -1), k.p2p_s[idx][None, :]]
        )
        levels, tasks, first_end, last_end = _levels(p, v, mg)
        ends = _level_ends(levels, tasks, durations)
        pipeline = ends[first_end]
        busy_last = mg * (fwd[p - 1].sum(axis=0) + bwd[p - 1].sum(axis=0))
        p2p = np.minimum(2 * (p * v - 1) * k.p2p_s[idx], pipeline - busy_last)
        out.pipeline_s[idx] = pipeline
        out.last_stage_end_s[idx] = ends[last_end]
        out.p2p_exposed_s[idx] = np.maximum(p2p, 0.0)
        out.bubble_s[idx] = pipeline - busy_last - out.p2p_exposed_s[idx]
    return out
