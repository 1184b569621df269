"""A breakdown part that is zero up to float noise is 0 (never 3e-15 ms, never -0.0)."""

from __future__ import annotations

import json
import math
import re

import numpy as np

from vtrain_opt import PlanBatch, get_cluster, get_model, simulate
from vtrain_opt.cli import main
from vtrain_opt.commands.common import jsonable
from vtrain_opt.console import BREAKDOWN
from vtrain_opt.sim.step import NOISE_REL, denoise

PARTS = [key for key, _ in BREAKDOWN]
# dp=1 behind a pipeline: nothing to all-reduce, so the exposed data-parallel time is the
# difference of two equal times (it printed -3.8e-12 ms, and -3.8e-15 s in --json)
NO_DP = ["simulate", "--model", "llama2-7b", "--gpu", "a100-80gb", "--tp", "4", "--pp", "2"]
NO_DP += ["--dp", "1", "--zero", "1"]


def test_denoise() -> None:
    x = np.array([3.5e-15, -2e-15, -0.0, 0.0, 1e-6, -1e-3])
    out = denoise(x, 2.0)
    assert out.tolist() == [0.0, 0.0, 0.0, 0.0, 1e-6, -1e-3]
    assert not np.signbit(out[:4]).any()
    assert denoise(np.array([NOISE_REL * 10]), 1.0)[0] == NOISE_REL * 10  # above the noise


def test_no_part_of_the_core_is_noise_or_negative_zero() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    tp = rng.choice([1, 2, 4, 8], n)
    batch = PlanBatch(
        tp=tp,
        pp=rng.choice([1, 2, 4, 8], n),
        dp=rng.choice([1, 2, 4], n),
        mb=rng.choice([1, 2], n),
        gb=512,
        recompute=rng.integers(0, 3, n),
        sp=(rng.random(n) < 0.5) & (tp > 1),
        vpp=rng.choice([1, 2], n),
        zero=rng.choice([0, 1], n),
        dp_overlap=rng.random(n) < 0.5,
    )
    df = simulate(get_model("llama2-7b"), get_cluster("a100-80gb"), batch)
    ok = df["reason"].isin(["", "out of memory"]).to_numpy()
    it = df.loc[ok, "iteration_time_s"].to_numpy()
    zero_dp = 0
    for key in PARTS:
        x = df.loc[ok, key].to_numpy()
        assert not ((x != 0) & (np.abs(x) <= 1e-9 * it)).any(), key  # noise is 0
        assert not (np.signbit(x) & (x == 0)).any(), key  # no -0.0
        assert (x >= 0).all(), key
        zero_dp += int((x == 0).sum()) if key == "dp_comm_s" else 0
    assert zero_dp > 0  # the case exists in this batch
    np.testing.assert_allclose(
        df.loc[ok, PARTS].sum(axis=1), df.loc[ok, "iteration_time_s"], rtol=1e-9
    )


def test_simulate_prints_zero_in_text_and_json(capsys) -> None:
    assert main([*NO_DP, "--json"]) == 0
    raw = capsys.readouterr().out
    doc = json.loads(raw)
    assert doc["dp_comm_s"] == 0.0 and math.copysign(1.0, doc["dp_comm_s"]) == 1.0
    assert '"dp_comm_s": 0.0' in raw
    assert main(NO_DP) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if "data-parallel comm (exposed)" in ln)
    assert re.search(r"│\s+0 ms\s+│\s+0\.0%", line), line
    assert "e-" not in line and "-0" not in line


def test_jsonable_never_writes_negative_zero() -> None:
    assert json.dumps(jsonable({"a": -0.0, "b": np.float64(-0.0), "c": [-0.0]})) == (
        '{"a": 0.0, "b": 0.0, "c": [0.0]}'
    )
