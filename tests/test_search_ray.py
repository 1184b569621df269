"""The Ray path runs locally on two workers and gives the same answers as in-process."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import search_argv

from vtrain_opt import get_model
from vtrain_opt.cli import main
from vtrain_opt.search import SearchSpace, search

pytestmark = pytest.mark.ray
TOKENS = 1e11


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.create(
        get_model("llama2-7b"),
        ["a100-40gb", "a100-80gb"],
        max_gpus=64,
        global_batch=[128, 256],
        micro_batch=[1, 2, 4],
        vpp=[1, 2],
        zero=[0, 1],
    )


def test_exhaustive_on_ray_matches_in_process(ray_local, space):
    here = search(space, TOKENS, strategy="exhaustive", workers=0)
    there = search(space, TOKENS, strategy="exhaustive", workers=2)
    assert (here.backend, there.backend) == ("in-process", "ray")
    assert there.workers == 2
    assert there.evaluated == here.evaluated == space.size
    pd.testing.assert_frame_equal(there.pareto, here.pareto)
    pd.testing.assert_frame_equal(there.plans, here.plans)
    assert there.best_time.equals(here.best_time) and there.best_cost.equals(here.best_cost)
    assert there.reason_counts == here.reason_counts


def test_optuna_on_ray_matches_in_process(ray_local, space):
    kw = dict(strategy="optuna", objective="pareto", trials=48, batch_size=16, seed=4)
    here = search(space, TOKENS, workers=0, **kw)
    there = search(space, TOKENS, workers=2, **kw)
    assert there.backend == "ray"
    pd.testing.assert_frame_equal(there.history, here.history)
    pd.testing.assert_frame_equal(there.pareto, here.pareto)


def test_cli_on_ray(ray_local, capsys, tmp_path):
    code = main([*search_argv(workers="2", out=str(tmp_path)), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["backend"] == "ray" and data["workers"] == 2
    assert ray_local.is_initialized()  # a runtime it did not start is left running
