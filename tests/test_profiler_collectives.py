"""Collectives: the group sizes measured (the gloo run itself is in test_profiler.py)."""

from __future__ import annotations

from vtrain_opt.profiler.collectives import group_sizes


def test_group_sizes():
    assert group_sizes(1) == []
    assert group_sizes(2) == [2]
    assert group_sizes(8) == [2, 4, 8]
    assert group_sizes(6) == [2, 4, 6]
