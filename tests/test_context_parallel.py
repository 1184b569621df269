"""Context parallelism (cp): ring attention's costs, memory, gradient group, rules, CLI, trace."""

import dataclasses
import json

import numpy as np
import pytest

from vtrain_opt.cli import main
from vtrain_opt.sim.costs import layer_costs
from vtrain_opt.sim.memory import layer_activation_bytes, memory_per_gpu, stage_params
from vtrain_opt.sim.step import make_context, plan_costs, simulate, simulate_arrays
from vtrain_opt.sim.timeline import reference
from vtrain_opt.spec import ParallelPlan, PlanBatch, get_cluster, get_model
from vtrain_opt.spec.setup import Setup

GPT3 = get_model("gpt3-175b")
LLAMA405 = get_model("llama3-405b")
BF16_FLASH = Setup(dtype="bf16", attention="flash")


def arr(x):
    return np.array([x])


def test_activation_memory_divided_by_cp_hand_computed():
    """GPT-3 175B, bf16, flash, tp 8 with sequence parallelism, no recomputation, cp 4: one
    layer keeps (4A + 2) sbh / t replicated, A sb (2h + 2h) / t for Q, K, V and the
    projection input, 2A sbf / t for the MLP and 4 a s b / t of log-sum-exp, where s is the
    2048 / 4 = 512 tokens a GPU holds."""
    s, h, f, heads, A, t = 2048 / 4, 12288, 4 * 12288, 96, 2, 8
    expected = (4 * A + 2) * s * h / t + A * s * (4 * h) / t + 2 * A * s * f / t
    expected += 4 * heads * s / t
    stored, _ = layer_activation_bytes(GPT3, BF16_FLASH, arr(1), arr(t), arr(True), arr(0), arr(4))
    assert stored[0] == pytest.approx(expected, rel=1e-12)
    whole, _ = layer_activation_bytes(GPT3, BF16_FLASH, arr(1), arr(t), arr(True), arr(0))
    assert stored[0] == pytest.approx(whole[0] / 4, rel=1e-12)


def test_memory_per_gpu_with_cp_hand_computed():
    """Llama 3 405B, tp 8, pp 16, dp 2, cp 4, ZeRO 1, full recomputation, bf16 with fp32
    master weights: weights 2 + gradients 4 + optimizer 12 / (dp x cp) bytes a parameter;
    the first stage keeps pp micro-batches of its layers' inputs, A s b h / t each
    (sequence parallel) over the 8192 / 4 tokens a GPU holds, plus one layer rebuilt."""
    t, p, d, cp = 8, 16, 2, 4
    kw = dict(tp=arr(t), pp=arr(p), dp=arr(d), mb=arr(1), vpp=arr(1), zero=arr(1), sp=arr(True))
    kw |= dict(recompute=arr(2), num_microbatches=arr(64))
    mem = memory_per_gpu(LLAMA405, BF16_FLASH, 0.0, **kw, cp=arr(cp))
    params = stage_params(LLAMA405, arr(t), arr(p))
    states = params.first[0] * (2 + 4 + 12 / (d * cp))
    s, h, A = 8192 / cp, 16384, 2
    layer_input = A * s * h / t
    _, rebuilt = layer_activation_bytes(
        LLAMA405, BF16_FLASH, arr(1), arr(t), arr(True), arr(2), arr(cp)
    )
    first_act = p * (126 / p) * layer_input + rebuilt[0]  # Llama: no embedding dropout mask
    last_act = p * 0 + 1 * (126 / p) * layer_input + rebuilt[0]
    last_act += A * s * h / t + (A + 4) * s * np.ceil(128256 / (128 * t)) * 128
    assert mem.states_bytes[0] == pytest.approx(states, rel=1e-12)
    assert mem.activations_bytes[0] == pytest.approx(max(first_act, last_act), rel=1e-12)
    assert mem.worst_stage[0] == 0


def test_ring_attention_does_the_causal_work_over_cp():
    """Each of the cp steps does a causal block of seq/cp: cp steps = causal(seq) / cp (up to
    the kernels' fixed overheads), with the local K,V sent cp - 1 times."""
    model = dataclasses.replace(LLAMA405, seq_length=131072)
    ctx = make_context(model, get_cluster("h100-sxm"))
    one = layer_costs(model, ctx.ops, arr(1), arr(8), arr(True), arr(0), 1.0, arr(1))
    lc = layer_costs(model, ctx.ops, arr(1), arr(8), arr(True), arr(0), 1.0, arr(16))
    whole = ctx.ops.flash_attention_s(arr(128 / 8), 131072, 128)
    step = ctx.ops.flash_attention_s(arr(128 / 8), 131072 / 16, 128)
    assert lc.ring_attn_fwd_s[0] == pytest.approx(step[0])
    assert 16 * step[0] == pytest.approx(whole[0] / 16, rel=0.02)  # + 15 kernel launches
    # K,V of 8192 tokens, one local kv head of 128: 4 MiB a step, hidden behind the step's
    # attention (tp x cp = 128 GPUs: over the network)
    kv_bytes = 2 * 8192 * 128 * 2
    assert lc.ring_send_fwd_s[0] == pytest.approx(ctx.ops.p2p_s(kv_bytes, True, 8))
    assert lc.ring_send_fwd_s[0] < step[0] and float(one.ring_send_fwd_s) == 0.0
    # the tensor-parallel collectives of the 8192 tokens a GPU holds, no ring exposed
    short = layer_costs(LLAMA405, ctx.ops, arr(1), arr(8), arr(True), arr(0), 1.0, arr(1))
    assert lc.fwd_comm_s[0] == pytest.approx(short.fwd_comm_s[0], rel=1e-12)
    assert float(one.ring_attn_fwd_s[0]) == 0.0


def test_ring_stays_on_nvlink_when_tp_cp_fits_the_node():
    ctx = make_context(GPT3, get_cluster("h100-sxm"))
    costs = [
        layer_costs(GPT3, ctx.ops, arr(1), arr(tp), arr(False), arr(0), 1.0, arr(cp))
        for tp, cp in ((2, 4), (4, 4))
    ]
    # the same K,V bytes per GPU: tp 2 x cp 4 = 8 GPUs on NVLink, tp 4 x cp 4 over the network
    # sends half the bytes (kv heads / tp) but at the network's bandwidth
    nvlink, network = costs[0].ring_send_fwd_s[0], costs[1].ring_send_fwd_s[0]
    assert network > nvlink


def test_gradients_reduce_over_dp_times_cp():
    """Without overlap the exposed gradient all-reduce of dp 2 x cp 4 is dp 8's (the same
    8 GPUs holding the same weights, tp apart)."""
    ctx = make_context(GPT3, get_cluster("a100-80gb"))
    plans = [
        ParallelPlan(tp=8, pp=4, dp=2, cp=4, global_batch=16, dp_overlap=False),
        ParallelPlan(tp=8, pp=4, dp=8, global_batch=64, dp_overlap=False),
    ]
    k = plan_costs(ctx, PlanBatch.from_plans(plans))
    assert k.dp_first_s[0] == pytest.approx(k.dp_first_s[1], rel=1e-12)
    assert k.optimizer_first_s[0] == pytest.approx(k.optimizer_first_s[1], rel=1e-12)


def test_cp_one_is_the_plan_without_cp():
    ctx = make_context(GPT3, get_cluster("a100-80gb"))
    plan = ParallelPlan(tp=8, pp=8, dp=4, global_batch=64, recompute="full", vpp=2)
    with_cp = [plan, dataclasses.replace(plan, cp=2)]
    a = simulate_arrays(ctx, PlanBatch.from_plans([plan]))
    b = simulate_arrays(ctx, PlanBatch.from_plans(with_cp))  # a batch with cp: the cp path
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key][:1], err_msg=key)


def test_core_agrees_with_replay_and_the_trace_shows_the_ring():
    """A ring over the network with short sequences (the sends exposed) and one on NVLink;
    interleaved and uneven stages with cp; each layer's cp - 1 sends are replay tasks."""
    cases = [
        (GPT3, "a100-80gb", ParallelPlan(tp=8, cp=8, pp=4, dp=1, global_batch=8)),
        (GPT3, "h100-sxm", ParallelPlan(tp=2, cp=4, pp=2, dp=2, global_batch=8, vpp=2)),
        (
            LLAMA405,
            "h100-sxm",
            ParallelPlan(
                tp=8, cp=2, pp=8, dp=1, global_batch=8, recompute="full",
                first_stage_layers=15, last_stage_layers=15,
            ),
        ),
    ]  # fmt: skip
    for model, gpu, plan in cases:
        short = dataclasses.replace(model, seq_length=1024) if plan.cp == 8 else model
        ctx = make_context(short, get_cluster(gpu))
        core = simulate_arrays(ctx, PlanBatch.from_plans([plan]))["iteration_time_s"][0]
        ref = reference(ctx, plan)
        assert ref.iteration_time_s == pytest.approx(core, rel=1e-9)
        rings = [t for t in ref.graph.tasks.values() if t.category == "cp_ring"]
        layers = short.num_layers
        m = plan.num_microbatches
        # per layer and micro-batch: cp - 1 sends forward, cp - 1 backward + the dK,dV home
        assert len(rings) == layers * m * (2 * (plan.cp - 1) + 1)
        assert all(t.stream.endswith("/cp ring") for t in rings)
    k = plan_costs(ctx, PlanBatch.from_plans([cases[0][2]]))
    assert k.ring_send_fwd_s[0] > 0


def test_rules_in_a_batch_and_for_one_plan():
    plans = [
        ParallelPlan(tp=8, cp=3, pp=1, dp=1, global_batch=8),
        ParallelPlan(tp=8, cp=2, pp=1, dp=1, global_batch=8),
    ]
    df = simulate(GPT3, get_cluster("a100-80gb"), plans)
    assert df["reason"].iloc[0] == "2*cp does not divide seq length"
    assert not df["feasible"].iloc[0] and df["cp"].tolist() == [3, 2]
    assert df["num_gpus"].tolist() == [24, 16]
    with pytest.raises(ValueError, match=r"cp=3: the sequence 2048 must be divisible by 2\*cp = 6"):
        plans[0].validate(GPT3)
    torch = simulate(GPT3, get_cluster("a100-80gb"), plans[1:], setup=Setup(framework="torch"))
    assert torch["reason"].iloc[0] == "framework torch: no tp/cp/pp/vpp/sp"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cp", "3"], "the sequence 2048 must be divisible by 2*cp = 6"),
        (["--cp", "0"], "must be a positive whole number"),
        (["--num-gpus", "100", "--tp", "8", "--cp", "2"], "not a multiple of tp x cp x pp = 16"),
        (["--framework", "torch", "--cp", "2"], "it cannot have --cp 2"),
    ],
)
def test_cli_bad_cp_one_line_exit_2(capsys, argv, message):
    assert main(["simulate", "--model", "gpt3-175b", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and "\n" not in err and "Traceback" not in err
    assert message in err


def test_cli_llama3_405b_long_context(capsys):
    """Meta's long-context stage: cp 16 at 131,072 tokens on 16,384 H100s, tp 8, pp 16 with
    7-layer first and last stages, 16M-token batches (128 sequences)."""
    argv = ["simulate", "--model", "llama3-405b", "--gpu", "h100-sxm", "--num-gpus", "16384"]
    argv += ["--tp", "8", "--cp", "16", "--pp", "16", "--first-stage-layers", "7"]
    argv += ["--last-stage-layers", "7", "--seq-length", "131072", "--global-batch", "128"]
    argv += ["--sequence-parallel"]
    assert main([*argv, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["cp"], d["dp"], d["num_microbatches"], d["feasible"]) == (16, 8, 16, True)
    assert 0.1 < d["mfu"] < 0.6
    assert main(argv) == 0
    assert "tp=8 cp=16 pp=16 dp=8" in capsys.readouterr().out


SPACE = """space:
  model: llama3.1-405b
  seq_length: 131072
  gpus: [h100-sxm]
  num_gpus: {min: 16384, max: 16384}
  global_batch: 128
  tp: 8
  pp: 16
  stage_layers: [7, 7]
  micro_batch: 1
  vpp: 1
  zero: 1
  recompute: full
  sequence_parallel: true
  cp: CP
"""


def test_space_key_cp_enumerates_and_keeps_old_fingerprints():
    from vtrain_opt.search.space import SearchSpace
    from vtrain_opt.search.spacefile import SpaceFileError, parse_space

    space = parse_space(SPACE.replace("CP", "[1, 2, 4, 8, 16]"), "s.yaml")
    assert space.cp == (1, 2, 4, 8, 16) and "cp" in space.free_dimensions()
    plans = space.plans(0)
    assert sorted(set(plans.cp.tolist())) == [1, 2, 4, 8, 16]
    assert (plans.num_gpus == 16384).all() and (plans.dp * plans.cp == 128).all()
    assert space.to_dict()["cp"] == [1, 2, 4, 8, 16]
    plain = SearchSpace.create(GPT3, ["a100-80gb"])
    assert plain.cp == (1,) and "cp" not in plain.to_dict()
    assert plain.fingerprint() == SearchSpace.create(GPT3, ["a100-80gb"], cp=1).fingerprint()
    with pytest.raises(SpaceFileError, match=r"space\.cp: 3 must be 1 or split the sequence"):
        parse_space(SPACE.replace("CP", "[1, 3]"), "s.yaml")
    with pytest.raises(SpaceFileError, match=r"space\.cp"):
        parse_space(SPACE.replace("CP", "some"), "s.yaml")


def test_search_cp_option_results_carry_cp(capsys, tmp_path):
    argv = [
        "search", "--model", "llama3.1-405b", "--seq-len", "131072", "--gpu", "h100-sxm",
        "--min-gpus", "16384", "--max-gpus", "16384", "--global-batch", "128", "--tp", "8",
        "--cp", "4,8,16", "--pp", "16", "--stage-layers", "7,7", "--micro-batch", "1",
        "--recompute", "full", "--sequence-parallel", "on", "--zero", "1", "--tokens", "1T",
        "--strategy", "exhaustive", "--json", "--out", str(tmp_path / "r"),
    ]  # fmt: skip
    assert main(argv) == 0
    best = json.loads(capsys.readouterr().out)["best_time"]
    assert best["cp"] in (4, 8, 16)
    assert best["tp"] * best["cp"] * best["pp"] * best["dp"] == best["num_gpus"] == 16384
    # Optuna samples cp as a categorical and finds the same plan
    optuna = [*argv[:-5], "--strategy", "optuna", "--trials", "24", "--json"]
    assert main([*optuna, "--out", str(tmp_path / "o")]) == 0
    found = json.loads(capsys.readouterr().out)["best_time"]
    assert (found["cp"], found["training_time_s"]) == (best["cp"], best["training_time_s"])
    # a plain PyTorch model has no cp
    assert main([*argv[:-3], "--framework", "torch", "--out", str(tmp_path / "t")]) == 2
    assert "--cp 4,8,16" in capsys.readouterr().err


def test_a_straggling_node_never_makes_a_layer_faster():
    """A slower GPU hides more of the ring's sends behind its attention; the layer must
    still not get faster (the host waits on the tensor-parallel collectives only), or the
    last stage would outrun the others and the schedule's closed form would not hold
    (found by the contract test: tp 12, cp 8 over the network, 24 H100 nodes)."""
    ctx = make_context(GPT3, get_cluster("h100-sxm"))
    plan = ParallelPlan(tp=12, pp=2, dp=1, global_batch=5, cp=8, dp_overlap=False)
    batch = PlanBatch.from_plans([plan])
    k = plan_costs(ctx, batch)
    assert k.ring_send_fwd_s[0] > k.ring_attn_fwd_s[0] > k.ring_attn_fwd_mean_s[0]
    assert k.layer_fwd_s[0] >= k.layer_fwd_mean_s[0]
    # (the backward's host wait includes the TP comm its weight-gradient GEMMs hide, as
    # without cp: only the layer as a whole is monotone)
    assert k.layer_fwd_s[0] + k.layer_bwd_s[0] >= k.layer_fwd_mean_s[0] + k.layer_bwd_mean_s[0]
    core = simulate_arrays(ctx, batch)["iteration_time_s"][0]
    assert reference(ctx, plan).iteration_time_s == pytest.approx(core, rel=1e-9)
