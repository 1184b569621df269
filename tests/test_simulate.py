"""The vectorized core: breakdown, physics sanity, infeasible plans, costs, chunking."""

import numpy as np
import pandas as pd
import pytest

import vtrain_opt.sim.step as step
from vtrain_opt import ParallelPlan, PlanBatch, Setup, get_cluster, get_model, simulate
from vtrain_opt.console import BREAKDOWN as CONSOLE_BREAKDOWN
from vtrain_opt.sim.step import make_context, simulate_arrays

BREAKDOWN = [key for key, _ in CONSOLE_BREAKDOWN]  # the parts the tables show
A100 = get_cluster("a100-80gb")
GPT3 = get_model("gpt3-175b")


def random_batch(n: int, seed: int = 0) -> PlanBatch:
    rng = np.random.default_rng(seed)
    tp = rng.choice([1, 2, 4, 8, 16], n)
    return PlanBatch(
        tp=tp,
        pp=rng.choice([1, 2, 4, 8, 12, 24], n),
        dp=rng.choice([1, 2, 4, 8, 16], n),
        mb=rng.choice([1, 2, 4], n),
        gb=1536,
        recompute=rng.integers(0, 3, n),
        sp=(rng.random(n) < 0.5) & (tp > 1),
        vpp=rng.choice([1, 2], n),
        zero=rng.choice([0, 1], n),
        dp_overlap=rng.random(n) < 0.5,
    )


def test_breakdown_sums_to_iteration_time():
    df = simulate(GPT3, A100, random_batch(3000))
    ok = df["reason"].isin(["", "out of memory"])
    assert ok.sum() > 500
    total = df.loc[ok, BREAKDOWN].sum(axis=1)
    np.testing.assert_allclose(total, df.loc[ok, "iteration_time_s"], rtol=1e-9)
    assert (df.loc[ok, BREAKDOWN] >= -1e-12).all().all()


def test_invalid_plans_are_marked_not_raised():
    df = simulate(GPT3, A100, PlanBatch(tp=[8, 5], pp=[8, 1], dp=[4, 1], mb=1, gb=1536))
    assert df["feasible"].tolist() == [True, False]
    assert df["reason"][1] == "tp does not divide heads"
    assert np.isnan(df["iteration_time_s"][1])


def test_out_of_memory_is_marked():
    df = simulate(GPT3, A100, ParallelPlan(tp=8, pp=1, dp=1, micro_batch=1, global_batch=8))
    assert not df["feasible"][0] and df["reason"][0] == "out of memory"
    assert df["memory_per_gpu_bytes"][0] > A100.gpu.hbm_bytes
    assert np.isfinite(df["iteration_time_s"][0])  # still predicted, for reporting


def test_data_parallel_strong_scaling():
    plans = [
        ParallelPlan(tp=8, pp=8, dp=d, micro_batch=1, global_batch=1536, recompute="full")
        for d in (4, 8, 16)
    ]
    t = simulate(GPT3, A100, plans)["iteration_time_s"].to_numpy()
    assert t[0] / t[1] > 1.6 and t[1] / t[2] > 1.5  # doubling GPUs nearly halves the time


@pytest.mark.parametrize(("gbps", "min_ratio"), [(1600, 1.2), (800, 2.0)])
def test_tensor_parallelism_across_nodes_is_slower(gbps, min_ratio):
    cluster = A100.with_overrides(inter_node_gbps=gbps)
    inside = ParallelPlan(tp=8, pp=16, dp=2, micro_batch=1, global_batch=1536, recompute="full")
    across = ParallelPlan(tp=16, pp=8, dp=2, micro_batch=1, global_batch=1536, recompute="full")
    df = simulate(GPT3, cluster, [inside, across])
    # per layer: tp=16 has twice the layers per stage; its collectives cross the network
    per_layer = df["tp_comm_s"] / (GPT3.num_layers / df["pp"])
    assert per_layer[1] > min_ratio * per_layer[0]
    assert df["iteration_time_s"][1] > df["iteration_time_s"][0]


def test_recompute_trades_time_for_memory():
    plans = [
        ParallelPlan(tp=8, pp=8, dp=4, micro_batch=1, global_batch=1536, recompute=r)
        for r in ("none", "selective", "full")
    ]
    # with the unfused kernel selective recompute drops the attention scores; with flash
    # attention there are no scores to drop, so selective only costs time
    df = simulate(GPT3, A100, plans, setup=Setup(dtype="bf16", attention="unfused"))
    assert df["memory_activations_bytes"].is_monotonic_decreasing
    assert df["iteration_time_s"].is_monotonic_increasing
    assert df["recompute_s"][0] == 0 and df["recompute_s"][2] > df["recompute_s"][1] > 0
    # MFU excludes recompute, HFU counts it
    assert df["mfu"][2] < df["hfu"][2] and df["mfu"][0] == pytest.approx(df["hfu"][0])


def test_interleaving_shrinks_the_bubble():
    plans = [
        ParallelPlan(tp=8, pp=8, dp=4, micro_batch=1, global_batch=256, recompute="full", vpp=v)
        for v in (1, 2, 4)
    ]
    df = simulate(GPT3, A100, plans)
    assert df["bubble_s"].is_monotonic_decreasing
    assert df["bubble_s"][1] == pytest.approx(df["bubble_s"][0] / 2, rel=0.1)


def test_tokens_give_days_and_dollars():
    plan = ParallelPlan(tp=8, pp=35, dp=12, micro_batch=1, global_batch=1920, recompute="full")
    df = simulate(get_model("mt-nlg-530b"), A100, plan, tokens=270e9)
    row = df.iloc[0]
    assert row["training_time_s"] == pytest.approx(270e9 / row["tokens_per_s"])
    assert row["gpu_hours"] == pytest.approx(3360 * row["training_time_s"] / 3600)
    assert row["cost_usd"] == pytest.approx(row["gpu_hours"] * A100.price_per_gpu_hour_usd)
    assert 10 < row["iteration_time_s"] < 100  # "tens of seconds"
    assert 0.2 < row["mfu"] < 0.7


def test_setup_defaults_and_v100_has_no_flash():
    assert make_context(GPT3, A100).setup == Setup(dtype="bf16", attention="flash")
    v100 = get_cluster("v100-32gb")
    assert make_context(GPT3, v100).setup == Setup(dtype="fp16", attention="unfused")
    with pytest.raises(ValueError, match="FlashAttention"):
        make_context(GPT3, v100, setup=Setup(dtype="fp16", attention="flash"))
    with pytest.raises(ValueError, match="no bf16"):
        make_context(GPT3, v100, setup=Setup(dtype="bf16", attention="unfused"))


def test_chunked_evaluation_matches_single_pass(monkeypatch):
    batch = random_batch(700, seed=3)
    ctx = make_context(GPT3, A100)
    whole = simulate_arrays(ctx, batch, tokens=1e12)
    monkeypatch.setattr(step, "CHUNK_PLANS", 64)
    chunked = simulate_arrays(ctx, batch, tokens=1e12)
    for key, value in whole.items():
        np.testing.assert_array_equal(value, chunked[key], err_msg=key)


def test_each_plan_independent_of_its_batch():
    batch = random_batch(300, seed=4)
    df = simulate(GPT3, A100, batch)
    for i in (0, 17, 123, 299):
        one = simulate(GPT3, A100, batch.take([i]))
        pd.testing.assert_series_equal(one.iloc[0], df.iloc[i], check_names=False)


def test_llama_and_profiles():
    plan = ParallelPlan(
        tp=8,
        pp=4,
        dp=4,
        micro_batch=1,
        global_batch=512,
        recompute="selective",
        sequence_parallel=True,
    )
    m = get_model("llama3-70b")
    h100 = simulate(m, get_cluster("h100-sxm"), plan)
    a100 = simulate(m, A100, plan)
    assert h100["feasible"][0] and a100["feasible"][0]
    assert 1.8 < a100["iteration_time_s"][0] / h100["iteration_time_s"][0] < 4.0
