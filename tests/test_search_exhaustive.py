"""The exhaustive strategy against an independent brute force over a small space."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtrain_opt import get_cluster, get_model, simulate
from vtrain_opt.search import Limits, SearchSpace, search
from vtrain_opt.search.collect import merge, reduce_rows
from vtrain_opt.search.exhaustive import run_exhaustive
from vtrain_opt.search.pareto import pareto_indices
from vtrain_opt.search.ray_backend import InProcess
from vtrain_opt.units import DAY_S

TOKENS = 1e11
GPU = "a100-40gb"
DIMS = dict(
    max_gpus=32,
    global_batch=[64, 128],
    micro_batch=[1, 2, 4],
    vpp=[1, 2],
    zero=[0, 1],
)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.create(get_model("llama2-7b"), [GPU], **DIMS)


@pytest.fixture(scope="module")
def brute(space: SearchSpace) -> pd.DataFrame:
    """Every combination of the candidate lists and every dp, built without the space's
    enumeration, simulated in one call; kept when valid and within the GPU range."""
    grid = list(
        itertools.product(
            space.tp,
            space.pp,
            range(1, space.max_gpus + 1),
            space.micro_batch,
            space.global_batch,
            space.recompute,
            space.sequence_parallel,
            space.vpp,
            space.zero,
        )
    )
    df = pd.DataFrame(
        grid, columns=["tp", "pp", "dp", "mb", "gb", "recompute", "sp", "vpp", "zero"]
    )
    out = simulate(space.model, get_cluster(GPU), df, tokens=TOKENS)
    node = get_cluster(GPU).gpus_per_node
    n = out["num_gpus"]
    valid = out["reason"].isin(["", "out of memory"]) & (n % node == 0) & (n <= space.max_gpus)
    return out[valid].reset_index(drop=True)


def _key(df: pd.DataFrame) -> set[tuple]:
    cols = [
        "tp",
        "pp",
        "dp",
        "micro_batch",
        "global_batch",
        "recompute",
        "sequence_parallel",
        "vpp",
        "zero",
    ]
    return set(map(tuple, df[cols].astype(str).to_numpy().tolist()))


def _non_dominated(t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """O(n^2) reference: no other point is at least as good in both and better in one."""
    keep = np.ones(len(t), dtype=bool)
    for s in range(0, len(t), 512):
        tt, cc = t[s : s + 512, None], c[s : s + 512, None]
        dom = (t[None, :] <= tt) & (c[None, :] <= cc) & ((t[None, :] < tt) | (c[None, :] < cc))
        keep[s : s + 512] = ~dom.any(axis=1)
    return keep


def test_space_holds_exactly_the_valid_plans(space, brute):
    got = search(space, TOKENS, strategy="exhaustive")
    assert got.evaluated == space.size == len(brute)
    assert got.plans_complete
    assert _key(got.plans) == _key(brute)


def test_best_plans_are_the_true_optima(space, brute):
    got = search(space, TOKENS, strategy="exhaustive")
    fits = brute[brute["feasible"]]
    assert got.feasible == len(fits) > 0
    assert got.best_time["training_time_s"] == fits["training_time_s"].min()
    assert got.best_cost["cost_usd"] == fits["cost_usd"].min()
    # the chosen plan itself is one of the brute force's optima
    fastest = fits[fits["training_time_s"] == fits["training_time_s"].min()]
    assert _key(pd.DataFrame([got.best_time])) <= _key(fastest)


def test_pareto_front_is_non_dominated_and_complete(space, brute):
    got = search(space, TOKENS, strategy="exhaustive")
    fits = brute[brute["feasible"]]
    t, c = fits["training_time_s"].to_numpy(), fits["cost_usd"].to_numpy()
    ref = set(zip(t[_non_dominated(t, c)], c[_non_dominated(t, c)], strict=True))
    front = set(zip(got.pareto["training_time_s"], got.pareto["cost_usd"], strict=True))
    assert len(ref) >= 2  # a real trade-off, not a single point
    assert front == ref
    assert got.pareto["training_time_s"].is_monotonic_increasing
    assert got.pareto["cost_usd"].is_monotonic_decreasing


@pytest.mark.parametrize("which", ["budget_usd", "budget_gpu_hours", "max_time_s", "both"])
def test_limits_are_honoured(space, brute, which):
    fits = brute[brute["feasible"]]
    cost_cap = float(fits["cost_usd"].quantile(0.3))
    hours_cap = float(fits["gpu_hours"].quantile(0.3))
    time_cap = float(fits["training_time_s"].quantile(0.5))
    limits = {
        "budget_usd": Limits(budget_usd=cost_cap),
        "budget_gpu_hours": Limits(budget_gpu_hours=hours_cap),
        "max_time_s": Limits(max_time_s=time_cap),
        "both": Limits(budget_usd=float(fits["cost_usd"].quantile(0.6)), max_time_s=time_cap),
    }[which]
    ok = fits
    if limits.budget_usd:
        ok = ok[ok["cost_usd"] <= limits.budget_usd]
    if limits.budget_gpu_hours:
        ok = ok[ok["gpu_hours"] <= limits.budget_gpu_hours]
    if limits.max_time_s:
        ok = ok[ok["training_time_s"] <= limits.max_time_s]
    assert 0 < len(ok) < len(fits)
    got = search(space, TOKENS, limits=limits, strategy="exhaustive")
    assert got.feasible == len(ok)
    assert got.best_time["training_time_s"] == ok["training_time_s"].min()
    assert got.best_cost["cost_usd"] == ok["cost_usd"].min()
    chosen = got.plans[got.plans["feasible"]]
    assert len(chosen) == len(ok)
    for df in (chosen, got.pareto):
        if limits.budget_usd:
            assert (df["cost_usd"] <= limits.budget_usd).all()
        if limits.max_time_s:
            assert (df["training_time_s"] <= limits.max_time_s).all()
    rejected = got.reason_counts.get("over budget", 0) + got.reason_counts.get("over max days", 0)
    assert rejected == len(fits) - len(ok)


def test_gpu_limits_narrow_the_space(space, brute):
    got = search(space, TOKENS, limits=Limits(min_gpus=16, max_gpus=24), strategy="exhaustive")
    n = brute["num_gpus"]
    assert got.evaluated == int(((n >= 16) & (n <= 24)).sum())
    assert got.plans["num_gpus"].between(16, 24).all()


def test_impossible_budget_says_what_binds(space, brute):
    cheapest = float(brute.loc[brute["feasible"], "cost_usd"].min())
    got = search(space, TOKENS, limits=Limits(budget_usd=cheapest / 1.25), strategy="exhaustive")
    assert not got.ok and got.best_time is None
    msg = got.explain()
    assert "budget" in msg and "(+25.0%)" in msg
    assert len(got.closest) > 0
    assert got.closest["cost_usd"].iloc[0] == pytest.approx(cheapest)
    # both limits reachable alone but not together
    fastest = float(brute.loc[brute["feasible"], "training_time_s"].min())
    both = Limits(budget_usd=cheapest * 1.0001, max_time_s=fastest * 1.0001)
    got = search(space, TOKENS, limits=both, strategy="exhaustive")
    if not got.ok:  # the fastest plan is not also the cheapest
        assert "every limit at once" in got.explain()


def test_nothing_fits_in_memory_names_the_leanest_plan():
    tiny = SearchSpace.create(get_model("gpt3-175b"), ["v100-32gb"], max_gpus=8)
    got = search(tiny, TOKENS, strategy="exhaustive")
    assert not got.ok
    assert "no plan fits in GPU memory" in got.explain()
    assert len(got.closest) == 1


def test_sharded_chunks_give_the_same_answer(space):
    class FourWorkers(InProcess):
        workers = 4  # forces small chunks, evaluated one after the other

    one = search(space, TOKENS, strategy="exhaustive")
    part = run_exhaustive(space, TOKENS, Limits(), FourWorkers(), top_k=50, keep_all_max=10)
    assert part.evaluated == one.evaluated
    assert part.all_rows is None  # more plans than keep_all_max: only the best kept
    pd.testing.assert_frame_equal(part.front, one.pareto)
    assert part.top_time.iloc[0].equals(one.best_time)
    assert part.top_cost.iloc[0].equals(one.best_cost)
    ref = reduce_rows(one.plans, top_k=50)
    pd.testing.assert_frame_equal(part.top_time, ref.top_time)
    pd.testing.assert_frame_equal(part.top_cost, ref.top_cost)
    assert merge([part]).evaluated == part.evaluated


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=60))
def test_pareto_indices_match_the_quadratic_definition(points):
    t = np.array([p[0] for p in points], dtype=float)
    c = np.array([p[1] for p in points], dtype=float)
    idx = pareto_indices(t, c, [np.arange(len(t))])
    ref = set(zip(t[_non_dominated(t, c)], c[_non_dominated(t, c)], strict=True))
    got = list(zip(t[idx], c[idx], strict=True))
    assert set(got) == ref and len(got) == len(ref)  # complete, one plan per point
    assert list(t[idx]) == sorted(t[idx])
    # ties go to the first plan by the tie-break key
    for i in idx:
        same = np.flatnonzero((t == t[i]) & (c == c[i]))
        assert i == same.min()


def test_unit_days_consistent(space):
    got = search(space, TOKENS, strategy="exhaustive", objective="time")
    row = got.best_time
    assert row["training_time_s"] == pytest.approx(TOKENS / row["tokens_per_s"])
    assert row["training_time_s"] / DAY_S > 0
    assert got.chosen().shape[0] == 1


def test_rows_match_the_core_frame(space):
    from vtrain_opt.search.evaluate import evaluate, rows

    batch = space.plans(0, 0, 40)
    ev = evaluate(space, 0, batch, TOKENS, Limits())
    df = rows(space, ev)
    ref = simulate(space.model, get_cluster(GPU), batch, tokens=TOKENS)
    shared = [c for c in ref.columns if c not in ("reason", "feasible", "recompute")]
    plan_cols = list(batch.to_frame().columns)  # 14 with first/last stage layers
    assert list(df.columns[1 : 1 + len(plan_cols)]) == plan_cols
    pd.testing.assert_frame_equal(df[shared], ref[shared], check_dtype=False)
    assert (df["recompute"].astype(str) == ref["recompute"].astype(str)).all()


def test_progress_reaches_the_total(space):
    seen = []
    search(space, TOKENS, strategy="exhaustive", progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
