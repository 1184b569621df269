"""MoE in the core: the dense path unchanged, rules, all-to-all placement, memory, trace."""

import json
from dataclasses import replace

import pandas as pd
import pytest

from vtrain_opt.cli import main
from vtrain_opt.sim.step import make_context, plan_costs, simulate
from vtrain_opt.spec import ModelSpec, ParallelPlan, PlanBatch, get_cluster, get_model
from vtrain_opt.spec.setup import Setup


def test_one_expert_is_byte_identical_to_the_dense_model():
    dense = get_model("llama3-8b")
    one = ModelSpec.from_dict(dense.to_dict() | {"num_experts": 1}, name=dense.name)
    plans = [
        ParallelPlan(tp=t, pp=p, dp=d, micro_batch=1, global_batch=64, recompute=r, zero=z)
        for t, p, d, r, z in [(1, 1, 8, "none", 1), (2, 2, 2, "full", 0), (8, 4, 1, "selective", 1)]
    ]
    cluster = get_cluster("h100-sxm")
    a = simulate(dense, cluster, plans, tokens=1e12)
    b = simulate(one, cluster, plans, tokens=1e12)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def _deepseek(ep: int, nodes_cluster: str = "h800", grouped: bool = False, **setup) -> pd.DataFrame:
    """DeepSeek-V3's run; ``grouped``: with the catalog's group-limited routing, else with
    every token free to reach any node (the routing limit removed)."""
    plan = ParallelPlan(
        pp=16, dp=128, ep=ep, global_batch=15360, zero=1, first_stage_layers=4, last_stage_layers=1
    )
    model = get_model("deepseek-v3")
    if not grouped:
        model = replace(model, moe_router_num_groups=None, moe_router_group_topk=None)
    return simulate(
        model,
        get_cluster(nodes_cluster),
        [plan],
        setup=Setup(dtype="fp8", **setup),
        tokens=14.8e12,
    )


def test_expert_parallelism_inside_a_node_beats_across_nodes():
    inside, across = _deepseek(8), _deepseek(64)
    # ep 8 stays on NVLink: less all-to-all, but 8x the expert weights per GPU
    assert inside.tp_comm_s[0] < across.tp_comm_s[0]
    assert inside.memory_states_bytes[0] > 2 * across.memory_states_bytes[0]
    # the node-limited (DeepEP) dispatch and the overlap each cut the exposed all-to-all
    limited = _deepseek(64, moe_node_limit=4)
    overlapped = _deepseek(64, moe_a2a_overlap=True)
    assert limited.tp_comm_s[0] < across.tp_comm_s[0]
    assert overlapped.tp_comm_s[0] < across.tp_comm_s[0]
    # the catalog model's group-limited routing (8 groups, 4 per token: 4 of the 8 nodes of
    # ep 64) is that node limit by default; an explicit limit overrides it
    grouped = _deepseek(64, grouped=True)
    assert grouped.iteration_time_s[0] == limited.iteration_time_s[0]
    wider = _deepseek(64, grouped=True, moe_node_limit=8)
    assert limited.tp_comm_s[0] < wider.tp_comm_s[0] < across.tp_comm_s[0]


def test_imbalance_and_capacity_factor():
    base = _deepseek(64)
    heavy = _deepseek(64, moe_imbalance=1.5)
    capped = _deepseek(64, moe_imbalance=1.5, moe_capacity_factor=1.0)
    assert heavy.iteration_time_s[0] > base.iteration_time_s[0]
    balanced = _deepseek(64, moe_imbalance=1.0)
    assert capped.iteration_time_s[0] == pytest.approx(balanced.iteration_time_s[0])


def test_more_smaller_experts_run_less_efficient_grouped_gemms():
    """Same active FLOPs, experts split finer: fewer tokens per expert, lower efficiency."""
    base = dict(
        family="llama", num_layers=4, hidden_size=4096, num_attention_heads=32,
        vocab_size=32000, seq_length=4096,
    )  # fmt: skip
    coarse = ModelSpec(**base, num_experts=8, moe_router_topk=2, moe_ffn_hidden_size=8192)
    fine = ModelSpec(**base, num_experts=64, moe_router_topk=16, moe_ffn_hidden_size=1024)
    assert coarse.active_params() + 4 * 4096 * 56 == fine.active_params()  # routers
    ctx = [make_context(m, get_cluster("h100-sxm")) for m in (coarse, fine)]
    plan = PlanBatch.from_plans([ParallelPlan(dp=8, ep=8, global_batch=8)])
    k = [plan_costs(c, plan).moe for c in ctx]
    assert k[1].fwd_compute_s[0] > k[0].fwd_compute_s[0]


def test_expert_states_shard_over_the_expert_data_parallel_group():
    model = get_model("mixtral-8x7b").with_seq_length(4096)
    cluster = get_cluster("h100-sxm")
    plans = [
        ParallelPlan(dp=16, ep=e, zero=1, global_batch=64, recompute="full") for e in (1, 2, 8)
    ]
    df = simulate(model, cluster, plans)
    states = df.memory_states_bytes.to_numpy()
    assert states[0] > states[1] > states[2]
    # routed experts: 32 layers x 8 x 3 x 4096 x 14336 weights; bf16 (2) + fp32 grads (4)
    # per GPU over ep, the 12 B of Adam over edp = 16 / ep
    experts = 32 * 8 * 3 * 4096 * 14336
    for e, s in zip((1, 2, 8), states, strict=True):
        rest = states[2] - experts / 8 * (6 + 12 / 2)
        assert s == pytest.approx(rest + experts / e * (6 + 12 / (16 / e)), rel=1e-9)


def test_rules_mark_batches_and_name_the_plan():
    model = get_model("mixtral-8x7b")
    batch = PlanBatch(tp=[1, 1, 2, 2, 1], pp=1, dp=[8, 4, 4, 4, 2], mb=1, gb=8, ep=[8, 3, 2, 8, 4],
                      sp=[False, False, False, True, False])  # fmt: skip
    df = simulate(model, get_cluster("h100-sxm"), batch)
    assert (
        list(df.reason.astype(str))
        == [
            "out of memory" if not df.feasible[0] else "",
            "ep does not divide experts",
            "MoE with tp > 1 needs sp",
            "",
            "ep*etp does not divide tp*cp*dp",
        ][:1]
        + list(df.reason.astype(str))[1:]
    )
    assert list(df.reason.astype(str))[1:] == [
        "ep does not divide experts",
        "MoE with tp > 1 needs sp",
        df.reason.astype(str)[3],
        "ep*etp does not divide tp*cp*dp",
    ]
    assert df.reason.astype(str)[3] in ("", "out of memory")
    dense = simulate(
        get_model("llama3-8b"),
        get_cluster("h100-sxm"),
        PlanBatch(tp=1, pp=1, dp=2, mb=1, gb=2, ep=2),
    )
    assert str(dense.reason[0]) == "ep needs experts"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ep", "3", "--num-gpus", "8"], "must divide the experts (8)"),
        (["--ep", "8", "--num-gpus", "4"], "must divide the GPUs of a pipeline stage"),
        (["--tp", "2", "--num-gpus", "8"], "needs sequence parallelism"),
        (["--moe-imbalance", "0.5", "--num-gpus", "8"], "must be a number >= 1"),
    ],
)
def test_cli_bad_moe_plans_are_one_line_exit_2(capsys, args, message):
    assert main(["simulate", "--model", "mixtral-8x7b", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_simulate_moe_and_trace(tmp_path, capsys):
    trace = tmp_path / "t.json"
    code = main(
        ["simulate", "--model", "deepseek-v3", "--gpu", "h800", "--num-gpus", "2048",
         "--pp", "16", "--ep", "64", "--zero", "1", "--global-batch", "15360",
         "--first-stage-layers", "4", "--last-stage-layers", "1", "--dtype", "fp8",
         "--moe-node-limit", "4", "--json", "--trace", str(trace)]
    )  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ep"] == 64 and out["etp"] == 1
    assert out["reference_iteration_time_s"] == pytest.approx(out["iteration_time_s"], rel=1e-6)
    events = json.loads(trace.read_text())["traceEvents"]
    names = [e["name"] for e in events if e.get("cat") == "ep_a2a"]
    assert names and all(n.startswith("all-to-all ") for n in names)


def test_shipped_deepseek_space_searches_expert_parallelism():
    from vtrain_opt.search.engine import search
    from vtrain_opt.search.spacefile import load_space

    space = load_space("search_spaces/deepseek-v3.yaml")
    assert space.ep == (8, 16, 32, 64, 128, 256) and space.setup.moe_node_limit == 4
    assert "ep" in space.free_dimensions() and space.to_dict()["ep"][-1] == 256
    small = space.with_changes(max_gpus=1024, tp=[1, 2], micro_batch=[1])
    result = search(small, strategy="exhaustive", workers=0)
    assert result.ok and set(result.plans.ep) == {8, 16, 32, 64, 128, 256}
    assert int(result.best_time.ep) > 1 and result.best_time.first_stage_layers == 4
    # Optuna samples ep and etp as categoricals and finds the exact optimum here
    tuned = search(small, strategy="optuna", workers=0, trials=150, seed=0)
    assert tuned.best_time.training_time_s == pytest.approx(result.best_time.training_time_s)


def test_search_cli_takes_ep_and_refuses_ep_on_a_dense_model(tmp_path, capsys):
    args = ["search", "--model", "mixtral-8x7b", "--gpu", "h100-sxm", "--seq-len", "4096",
            "--tokens", "1T", "--global-batch", "512", "--max-gpus", "64", "--min-gpus", "64",
            "--tp", "1,2", "--pp", "1,2", "--ep", "1,8", "--zero", "1",
            "--strategy", "exhaustive", "--json", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best_time"]["ep"] in (1, 8)
    dense = ["search", "--model", "llama3-8b", "--ep", "2", "--tokens", "1T", "--json"]
    assert main(dense) == 2
    err = capsys.readouterr().err.strip()
    assert "space.ep" in err and len(err.splitlines()) == 1


def test_sweep_takes_ep(tmp_path, capsys):
    sweep = tmp_path / "moe.yaml"
    sweep.write_text(
        "name: moe\nproduct:\n  ep: [[1], [1, 8]]\nsearch:\n  model: mixtral-8x7b\n"
        "  gpu: h100-sxm\n  num_gpus: 64\n  tokens: 1T\n  seq_length: 4096\n"
        "  global_batch: 512\n  tp: [1, 2]\n  pp: [1, 2, 4]\n  zero: [1]\n"
        "  strategy: exhaustive\n"
    )
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--workers", "0", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    df = pd.read_parquet(out / "summary.parquet").set_index("ep_options")
    assert int(df.loc["1", "ep"]) == 1
    # expert parallelism over 8 GPUs beats replicating every expert
    assert df.loc["1,8", "gpu_hours"] < df.loc["1", "gpu_hours"]


def test_catalog_lists_active_parameters(capsys):
    assert main(["catalog", "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert models["deepseek-v3"]["active_params"] == get_model("deepseek-v3").active_params()
    assert models["deepseek-v3"]["num_experts"] == 256
    assert models["llama3-8b"]["active_params"] == models["llama3-8b"]["params"]


def test_all_to_all_on_nvlink_and_across_nodes():
    ctx = make_context(get_model("mixtral-8x7b"), get_cluster("h800"))
    ops, c = ctx.ops, ctx.cluster
    nbytes = 1e9
    inside = float(ops.all_to_all_s(nbytes, 8, 8))
    across = float(ops.all_to_all_s(nbytes, 64, 8))
    # inside a node 7/8 of the buffer over NVLink; across 8 nodes 56/64 over the adapters
    nvlink = c.intra_bytes_per_s * ctx.profile.nvlink_efficiency
    nic = c.nic_bytes_per_s_per_gpu * ctx.profile.network_efficiency
    copies = 0.5 * ctx.profile.collective_hbm_passes * nbytes / c.gpu.hbm_bytes_per_s
    assert inside == pytest.approx(nbytes * 7 / 8 / nvlink + copies, rel=0.01)
    assert across == pytest.approx(nbytes * 56 / 64 / nic + copies, rel=0.01)
    assert float(ops.all_to_all_s(nbytes, 64, 8, inter_scale=0.5)) < 0.6 * across
    assert float(ops.all_to_all_s(nbytes, 1, 1)) == 0.0


def test_chinchilla_moe_shapes_count_active_parameters(tmp_path, capsys):
    from vtrain_opt.studies.shapes import ShapeRules

    rules = ShapeRules(family="llama", num_experts=8, moe_router_topk=2)
    m = rules.for_params(7e9)
    assert m.is_moe and m.moe_ffn == round(ModelSpec(
        family="llama", num_layers=1, hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads, vocab_size=32000, seq_length=2048,
    ).ffn / 2 / 64) * 64  # fmt: skip
    assert m.active_params() == pytest.approx(7e9, rel=0.15) and m.num_params() > 3 * 7e9
    assert "num_experts" not in ShapeRules(family="llama").to_dict()  # dense identity kept
    args = ["chinchilla", "--gpu", "h100-sxm", "--num-gpus", "64", "--days", "30",
            "--family", "llama", "--num-experts", "8", "--min-params", "1e9",
            "--max-params", "4e9", "--num-sizes", "2", "--workers", "0",
            "--out", str(tmp_path / "c"), "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["optimal"]["plan"]["ep"] in (1, 2, 4, 8)
    cands = pd.read_csv(tmp_path / "c" / "candidates.csv")
    assert (cands.total_params > 2 * cands.params).all()  # sizes are active parameters
    with pytest.raises(ValueError, match="moe top-k"):
        ShapeRules(num_experts=4, moe_router_topk=5)
