"""The vectorized core: breakdown, physics sanity, infeasible plans, costs, chunking."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import vtrain_opt.sim.step as step
from vtrain_opt import ParallelPlan, PlanBatch, Setup, get_cluster, get_model, simulate
from vtrain_opt.console import BREAKDOWN as CONSOLE_BREAKDOWN
from vtrain_opt.profiles import load_profile
from vtrain_opt.sim.costs import HOST_OPS_PER_LAYER, layer_costs, straggler_factor
from vtrain_opt.sim.step import make_context, simulate_arrays
from vtrain_opt.spec.model import ModelSpec

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


def test_straggler_factor_is_the_expected_slowest_node():
    from scipy.integrate import quad
    from scipy.stats import norm

    def expected_max(n: int) -> float:  # E[max of n standard normals], by quadrature
        return quad(lambda x: x * n * norm.pdf(x) * norm.cdf(x) ** (n - 1), -12, 12)[0]

    nodes = np.array([1, 2, 8, 64, 512])
    f = straggler_factor(0.05, nodes)
    assert f[0] == 1.0 and (np.diff(f) > 0).all()
    for n, value in zip(nodes[1:], f[1:], strict=True):
        assert (value - 1) / 0.05 == pytest.approx(expected_max(int(n)), rel=0.05)


def test_node_stragglers_slow_the_gpu_work_of_multi_node_plans_only():
    plans = [
        ParallelPlan(tp=8, pp=1, dp=1, micro_batch=1, global_batch=8, recompute="full"),
        ParallelPlan(tp=8, pp=8, dp=8, micro_batch=1, global_batch=1536, recompute="full"),
        ParallelPlan(tp=8, pp=8, dp=8, micro_batch=1, global_batch=1536, recompute="selective"),
    ]
    profile = load_profile("a100-80gb")
    calm = simulate(GPT3, A100, plans, profile=profile.with_params(node_straggler=0.0))
    slow = simulate(GPT3, A100, plans, profile=profile.with_params(node_straggler=0.05))
    # one node: nothing changes
    assert slow.iloc[0]["iteration_time_s"] == calm.iloc[0]["iteration_time_s"]
    # 64 nodes: every GPU op takes the straggler factor longer, the collectives do not
    factor = straggler_factor(0.05, np.array([64]))[0]
    for i in (1, 2):  # full and selective recomputation
        for col in ("compute_s", "recompute_s", "optimizer_s"):
            assert slow.iloc[i][col] == pytest.approx(factor * calm.iloc[i][col], rel=1e-9)
    # the slowest node paces the steady state only: the pipeline fills and drains through
    # the other stages at the mean speed, so the bubble keeps its time
    for i in (1, 2):
        assert slow.iloc[i]["bubble_s"] == pytest.approx(calm.iloc[i]["bubble_s"], rel=1e-9)
    # the collectives keep their time; only the part hidden behind the (longer) weight-
    # gradient GEMMs grows
    assert slow.iloc[1]["tp_comm_s"] <= calm.iloc[1]["tp_comm_s"]
    assert slow.iloc[1]["iteration_time_s"] > calm.iloc[1]["iteration_time_s"]


def test_backward_tp_collectives_run_behind_the_weight_gradients():
    # Megatron's async tensor-parallel all-reduce: in the backward, the input-gradient
    # all-reduce of QKV and of the MLP up-projection overlaps that layer's weight-gradient
    # GEMM, so only what the GEMM does not cover is exposed; the forward's are all exposed
    ops = make_context(GPT3, A100).ops
    mb, tp = np.array([1, 1]), np.array([8, 2])
    no = np.array([False, False])
    lc = layer_costs(GPT3, ops, mb, tp, no, np.array([2, 2]))
    h, s = GPT3.hidden_size, GPT3.seq_length
    one = lc.fwd_comm_s / 2
    wgrad = [ops.gemm_s(h, n / tp, s * mb) for n in (3 * h, GPT3.ffn)]
    expected = sum(np.maximum(one - w, 0.0) for w in wgrad)
    np.testing.assert_allclose(lc.bwd_comm_s, expected, rtol=1e-12)
    assert (lc.bwd_comm_s < lc.fwd_comm_s).all()
    assert (lc.recompute_comm_s == lc.fwd_comm_s).all()  # the recomputed forward's: exposed


def test_the_unfused_softmax_path_costs_host_time_only_where_megatron_takes_it():
    # Megatron's fused softmax needs micro-batch x heads/tp to be a multiple of 4: with 16
    # heads at tp 8, micro-batch 1 (2 score matrices) takes PyTorch's path, 2 (4) does not.
    # A small model on one GPU's share is host-bound, so the extra dispatch shows in full.
    small = ModelSpec("gpt", 12, 1024, 16, 50257, 1024, name="small")
    ops = make_context(small, A100, setup=Setup(dtype="fp16", attention="unfused")).ops
    mb, tp = np.array([1, 2]), np.array([8, 8])
    args = (np.array([False, False]), np.array([2, 2]))

    def stall(extra_ops: float) -> np.ndarray:
        o = replace(ops, profile=ops.profile.with_params(unfused_softmax_host_ops=extra_ops))
        lc = layer_costs(small, o, mb, tp, *args)
        return lc.host_stall_fwd_s + lc.host_stall_bwd_s

    few, many = stall(4.0), stall(12.0)
    # 8 more ops in each of the 4 passes (forward, recomputed forward, backward counted twice)
    extra_host_s = 4 * 8.0 / HOST_OPS_PER_LAYER * ops.profile.host_layer_s
    assert 0.5 * extra_host_s < many[0] - few[0] <= extra_host_s * (1 + 1e-9)
    assert many[1] == few[1]  # the fused kernel: no extra ops
