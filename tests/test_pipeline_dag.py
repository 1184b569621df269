"""The uneven-stage core's pipeline graph built as arrays (sim/pipeline_dag.py) and
evaluated a level at a time (sim/uneven.py) gives exactly the makespans of the replay's
own task graph evaluated one task at a time (bitwise, on random stage times)."""

from __future__ import annotations

import numpy as np
import pytest

from vtrain_opt.sim.pipeline_dag import depths, stage_order
from vtrain_opt.sim.timeline import schedule_order
from vtrain_opt.sim.uneven import _ends, _level_ends, _levels, _program

CASES = [(2, 1, 1), (2, 1, 5), (3, 1, 2), (7, 1, 3), (16, 1, 32), (126, 1, 16)]
CASES += [(2, 2, 4), (4, 2, 8), (3, 3, 6), (4, 3, 12), (8, 4, 16), (18, 7, 36)]


@pytest.mark.parametrize(("p", "v", "m"), CASES)
def test_graph_as_arrays_matches_the_replay_exactly(p, v, m):
    for i in range(p):
        kind, mb, chunk = stage_order(p, v, m, i)
        names = ["F" if k == 0 else "B" for k in kind]
        got = list(zip(names, mb.tolist(), chunk.tolist(), strict=True))
        assert got == schedule_order(p, v, m, i)
    program, first, last = _program(p, v, m)
    levels, tasks, first2, last2 = _levels(p, v, m)
    # the level structure: every task once, its predecessors all in earlier levels
    assert sum(len(at) for at, _, _ in levels) == tasks
    level_of = np.full(tasks + 1, -1)
    for depth, (at, _, _) in enumerate(levels):
        level_of[at] = depth
    assert all((level_of[pred] < depth).all() for depth, (_, _, pred) in enumerate(levels))
    rng = np.random.default_rng(p * 100 + v * 10 + m)
    rows = 2 * p * v + 1
    durations = rng.random((rows, 17)) * rng.choice([1e-4, 1.0, 9.0], size=(rows, 1))
    durations[:, 0] = 0.0
    durations[-1, 1] = 0.0  # free transfers
    ref = _ends(program, durations)
    new = _level_ends(levels, tasks, durations)
    assert np.array_equal(ref[first], new[first2]) and np.array_equal(ref[last], new[last2])


def test_depths_follow_the_predecessors():
    pad = 4
    pred = np.array([[pad, pad, pad], [0, pad, pad], [0, 1, pad], [2, 1, 0]])
    assert depths(pred).tolist() == [0, 1, 2, 3]
