"""FP8 training (Transformer Engine): fp8 GEMMs, their casts, the fp8 weight copies, MFU
against the bf16 peak, and the refusals."""

import json

import numpy as np
import pytest

from vtrain_opt.cli import main
from vtrain_opt.sim.costs import RECOMPUTE_NONE, layer_costs
from vtrain_opt.sim.fp8 import AMAX_BYTES, CAST_BYTES, layer_cast_s, weight_cast_s
from vtrain_opt.sim.step import make_context, simulate_arrays
from vtrain_opt.spec import ParallelPlan, PlanBatch, get_cluster, get_model
from vtrain_opt.spec.setup import Setup

BF16 = Setup(dtype="bf16")
FP8 = Setup(dtype="fp8")
FP8_CURRENT = Setup(dtype="fp8", fp8_recipe="current")
GPT3 = get_model("gpt3-175b")


def ctx_of(setup, gpu="h100-sxm", model=GPT3):
    return make_context(model, get_cluster(gpu), setup=setup)


def test_fp8_gemm_is_faster_by_the_peak_ratio_times_the_carried_efficiency():
    ops8, ops16 = ctx_of(FP8).ops, ctx_of(BF16).ops
    gpu = get_cluster("h100-sxm").gpu
    ratio = gpu.peak("fp8") / gpu.peak("bf16")
    m, n, k = 16384.0, 12288.0, 12288.0  # compute-bound: the efficiency curve is the bf16 one
    t16 = float(ops16.gemm_s(m, n, k))
    t8 = float(ops8.gemm_s(m, n, k, fp8=True))
    overhead = ops16.profile.kernel_overhead_s
    scale = ops16.profile.step_gemm_scale
    assert (t16 / scale - overhead) / (t8 / scale - overhead) == pytest.approx(ratio, rel=1e-9)
    assert 1.8 < t16 / t8 <= ratio
    # bf16 GEMMs of an fp8 setup (attention's) are unchanged
    assert float(ops8.gemm_s(m, n, k)) == pytest.approx(t16, rel=1e-12)
    # a small, memory-bound GEMM: fp8 operands move half the bytes, not twice the FLOPs
    small16 = float(ops16.gemm_s(8.0, 4096.0, 4096.0))
    small8 = float(ops8.gemm_s(8.0, 4096.0, 4096.0, fp8=True))
    assert small8 < small16 < 2.2 * small8


def test_fp8_layer_counts_the_casts_of_every_gemm_operand():
    ctx8, ctx16 = ctx_of(FP8), ctx_of(BF16)
    mb, tp = np.array([1]), np.array([8])
    sp, rc = np.array([True]), np.array([RECOMPUTE_NONE])
    l8 = layer_costs(GPT3, ctx8.ops, mb, tp, sp, rc)
    l16 = layer_costs(GPT3, ctx16.ops, mb, tp, sp, rc)
    assert l8.fwd_compute_s[0] < l16.fwd_compute_s[0]
    assert l8.bwd_compute_s[0] < l16.bwd_compute_s[0]
    # the casts by hand: the input of each GEMM forward, the output gradient backward
    h, f, t = GPT3.hidden_size, GPT3.ffn, 8.0
    tokens = float(GPT3.seq_length)
    shapes = ((3 * h / t, h), (h, h / t), (f / t, h), (h, f / t))
    ops = ctx8.ops
    fwd, bwd = layer_cast_s(ops, tokens, shapes)
    want_fwd = sum(float(ops.memory_s(CAST_BYTES * tokens * k, 1)) for _, k in shapes)
    want_bwd = sum(float(ops.memory_s(CAST_BYTES * tokens * n, 1)) for n, _ in shapes)
    assert float(fwd) == pytest.approx(want_fwd, rel=1e-12)
    assert float(bwd) == pytest.approx(want_bwd, rel=1e-12)
    gemms = sum(
        float(ops.gemm_s(tokens, n, k, fp8=True) - ctx16.ops.gemm_s(tokens, n, k))
        for n, k in shapes
    )
    assert l8.fwd_compute_s[0] - l16.fwd_compute_s[0] == pytest.approx(gemms + want_fwd, rel=1e-9)
    # current scaling adds an amax pass before each cast
    cur = ctx_of(FP8_CURRENT).ops
    cfwd, _ = layer_cast_s(cur, tokens, shapes)
    amax = sum(float(cur.memory_s(AMAX_BYTES * tokens * k, 1)) for _, k in shapes)
    assert float(cfwd) == pytest.approx(want_fwd + amax, rel=1e-12)
    assert layer_costs(GPT3, cur, mb, tp, sp, rc).fwd_compute_s[0] > l8.fwd_compute_s[0]
    # no casts outside fp8; the weights' once per iteration
    assert layer_cast_s(ctx16.ops, tokens, shapes) == (0.0, 0.0)
    assert weight_cast_s(ctx16.ops, np.array([1e9]), 12) == 0.0
    want = float(ops.memory_s(CAST_BYTES * 1e9, 48, "fp8_cast"))
    assert float(weight_cast_s(ops, np.array([1e9]), 12)[0]) == pytest.approx(want, rel=1e-12)


def plan(**kw):
    base = dict(tp=8, pp=8, dp=16, micro_batch=1, global_batch=1536, recompute="selective")
    return ParallelPlan(**{**base, **kw})


def run(setup, p, gpu="h100-sxm", model=GPT3):
    return simulate_arrays(ctx_of(setup, gpu, model), PlanBatch.from_plans([p]))


def test_fp8_memory_grows_by_the_fp8_weight_copies():
    p = plan()
    a, b = run(BF16, p), run(FP8, p)
    copies = 2.0 * GPT3.layer_matmul_params() / 8 * (GPT3.num_layers / 8)
    assert b["memory_states_bytes"][0] - a["memory_states_bytes"][0] == pytest.approx(copies)
    assert b["memory_activations_bytes"][0] == pytest.approx(a["memory_activations_bytes"][0])
    # the iteration: faster GEMMs, slower optimizer step (the weights' casts)
    assert b["iteration_time_s"][0] < 0.85 * a["iteration_time_s"][0]
    assert b["optimizer_s"][0] > a["optimizer_s"][0]


def test_fp8_mfu_is_against_the_bf16_peak_and_the_fp8_peak_is_beside_it():
    p = plan()
    r = run(FP8, p)
    gpu = get_cluster("h100-sxm").gpu
    flop = GPT3.training_flop_per_token()
    mfu = r["tokens_per_s"][0] * flop / (1024 * gpu.peak("bf16"))
    assert r["mfu"][0] == pytest.approx(mfu, rel=1e-12)
    assert r["mfu_fp8_peak"][0] == pytest.approx(mfu * gpu.peak("bf16") / gpu.peak("fp8"))
    assert "mfu_fp8_peak" not in run(BF16, p)


SIM = ["simulate", "--model", "gpt3-175b", "--num-gpus", "1024", "--tp", "8", "--pp", "8"]


def test_simulate_fp8_json_and_text(capsys):
    assert main([*SIM, "--gpu", "h100-sxm", "--dtype", "fp8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["dtype"] == "fp8" and d["fp8_recipe"] == "delayed"
    assert d["mfu_fp8_peak"] == pytest.approx(d["mfu"] * 989.4 / 1979.0, rel=1e-9)
    assert main([*SIM, "--gpu", "b200", "--dtype", "fp8", "--fp8-recipe", "current"]) == 0
    out = capsys.readouterr().out
    assert "fp8 (current" in out and "of the fp8 peak" in out


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--gpu", "a100-80gb"], "a100-80gb has no fp8 peak; FP8 needs Hopper or Blackwell"),
        (["--gpu", "v100-32gb"], "v100-32gb has no fp8 peak; FP8 needs Hopper or Blackwell"),
        (
            [
                "--gpu",
                "h100-sxm",
                "--framework",
                "torch",
                "--tp",
                "1",
                "--pp",
                "1",
                "--num-gpus",
                "512",
            ],
            "plain PyTorch (--framework torch) has no fp8 training path here",
        ),
    ],
)
def test_fp8_refused_in_one_line(capsys, argv, line):
    assert main([*SIM, *argv, "--dtype", "fp8"]) == 2
    err = capsys.readouterr().err
    assert line in err and len(err.strip().splitlines()) == 1


def test_space_file_and_chinchilla_take_fp8(tmp_path, capsys):
    space = tmp_path / "s.yaml"
    space.write_text(
        "space:\n  model: llama3-8b\n  tokens: 1T\n  gpus: [h100-sxm]\n  dtype: fp8\n"
        "  fp8_recipe: current\n  num_gpus: {min: 8, max: 64, step: node}\n  global_batch: 512\n"
    )
    assert main(["search", "--space", str(space), "--json", "--out", str(tmp_path / "r")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["best_time"]["mfu"] > 0 and d["best_time"]["mfu_fp8_peak"] > 0
    args = ["chinchilla", "--gpu", "h100-sxm", "--budget", "20000gpu-h", "--num-sizes", "3"]
    assert main([*args, "--dtype", "fp8", "--json", "--out", str(tmp_path / "c")]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["dtype"] == "fp8"
    assert c["peak_flop_per_s"] == get_cluster("h100-sxm").gpu.peak("bf16")  # MFU's peak


def _scaled(nested, factor):
    if isinstance(nested, list):
        return [_scaled(x, factor) for x in nested]
    return None if nested is None else nested * factor


def test_fp8_gemm_of_a_measured_profile():
    import copy
    import dataclasses

    from vtrain_opt.profiles import load_profile

    shipped = load_profile("h100-sxm-measured")
    # without its measured fp8 table first
    measured = dataclasses.replace(shipped, tables={"bf16": shipped.tables["bf16"]})
    cluster = get_cluster("h100-sxm")
    ops8 = make_context(GPT3, cluster, measured, FP8).ops
    ops16 = make_context(GPT3, cluster, measured, BF16).ops
    m, n, k = 2048.0, 1536.0, 12288.0  # on the measured grid
    t16 = float(ops16.gemm_s(m, n, k))
    # no fp8 table: the bf16 table's time, scaled as the analytical model scales it
    p = ops8.profile
    a = 2.0
    bf = ops8._gemm_analytical(*(np.float64(x) for x in (m, n, k, 1.0)), ops8.peak_flop_per_s, a)
    f8 = ops8._gemm_analytical(
        *(np.float64(x) for x in (m, n, k, 1.0)), cluster.gpu.peak("fp8"), 1.0, a
    )
    want = t16 * float(f8 / bf)
    assert float(ops8.gemm_s(m, n, k, fp8=True)) == pytest.approx(want, rel=1e-9)
    assert float(ops8.gemm_s(m, n, k, fp8=True)) < 0.6 * t16
    assert p.tables.keys() == {"bf16"}
    # an fp8 GEMM table (as torch._scaled_mm would measure it) answers by itself
    tables = copy.deepcopy(measured.tables)
    gemm8 = copy.deepcopy(tables["bf16"]["gemm"])
    gemm8["time_s"] = _scaled(gemm8["time_s"], 0.4)
    tables["fp8"] = {"gemm": gemm8}
    with_fp8 = dataclasses.replace(measured, tables=tables)
    ops8t = make_context(GPT3, cluster, with_fp8, FP8).ops
    assert float(ops8t.gemm_s(m, n, k, fp8=True)) == pytest.approx(0.4 * t16, rel=1e-6)
    # the other ops of an fp8 run are read from the bf16 tables
    assert float(ops8t.memory_s(1e8, 1, "layernorm")) == float(ops16.memory_s(1e8, 1, "layernorm"))
    # the shipped profile's fp8 table, measured on an H100 (torch._scaled_mm): at a grid
    # point its time is the table's; fp8 there is 1.5x-2x the bf16 rate, not 2x exactly
    g = 4096.0
    ops_shipped = make_context(GPT3, cluster, shipped, FP8).ops
    t8 = float(ops_shipped.gemm_s(g, g, g, fp8=True))
    table = shipped.tables["fp8"]["gemm"]
    i = table["grid"]["m"].index(g)
    at_grid = float(np.array(table["time_s"], dtype=float)[i, i, i])
    assert t8 == pytest.approx(at_grid * shipped.step_gemm_scale, rel=1e-6)
    assert 1.5 < float(ops_shipped.gemm_s(g, g, g)) / t8 < 2.0


def test_profiler_fp8_gemm_table_on_cpu_or_skipped_cleanly():
    torch = pytest.importorskip("torch")
    from dataclasses import replace
    from types import SimpleNamespace

    from vtrain_opt.profile_tables import parse_tables
    from vtrain_opt.profiler.grid import grid_for
    from vtrain_opt.profiler.ops import measure_fp8_gemm

    grid = replace(grid_for("cpu", True), gemm=(64, 128), warmup=0, repeats=2, min_sample_s=1e-4)
    steps: list[str] = []
    table, note = measure_fp8_gemm(torch, torch.device("cpu"), grid, steps.append)
    if table is None:  # this torch has no fp8 GEMM on the CPU: a note, no table
        assert "not supported" in note or "has no" in note
    else:
        assert "_scaled_mm" in note and len(steps) == 8
        assert np.all(np.array(table["time_s"], dtype=float) > 0)
        parsed = parse_tables({"fp8": {"gemm": table}}, origin="test")
        assert set(parsed) == {"fp8"}
    old = SimpleNamespace(__version__="1.13")  # no float8 dtypes: skipped, with the reason
    assert measure_fp8_gemm(old, None, grid, steps.append) == (
        None,
        "torch 1.13 has no float8_e4m3fn / _scaled_mm",
    )


def test_sweep_scenarios_take_fp8_and_record_a_gpu_without_it(tmp_path):
    from vtrain_opt.studies.sweep import build_search, run_scenario
    from vtrain_opt.studies.sweepfile import load_sweep

    f = tmp_path / "s.yaml"
    f.write_text(
        "name: fp8\nproduct:\n  gpu: [a100-80gb, h100-sxm]\nsearch:\n  model: llama3-8b\n"
        "  tokens: 100B\n  dtype: fp8\n  fp8_recipe: current\n  max_gpus: 16\n"
    )
    a100, h100 = sorted(load_sweep(f).scenarios, key=lambda s: s.inputs["gpu"])
    space, _, _ = build_search(h100.inputs, h100.model_spec)
    setup = space.context(0).setup
    assert (setup.dtype, setup.fp8_recipe) == ("fp8", "current")
    record = run_scenario(a100)  # marked with the rule, never raised
    assert record["status"] == "failed"
    assert record["error"].endswith("a100-80gb has no fp8 peak; FP8 needs Hopper or Blackwell")


@pytest.mark.parametrize("edges", [(7, 7), (6, 8)])
def test_fp8_weight_copies_and_casts_follow_uneven_stages(edges):
    from vtrain_opt.sim.costs import straggler_factor

    model = get_model("llama3-405b")  # Meta's split: 7 + 14 x 8 + 7 layers
    p = plan(pp=16, dp=8, global_batch=64, first_stage_layers=edges[0], last_stage_layers=edges[1])
    a, b = run(BF16, p, model=model), run(FP8, p, model=model)
    gemm = model.layer_matmul_params() / 8
    stage_layers = (*edges, (model.num_layers - sum(edges)) / 14)
    diff = float(b["memory_states_bytes"][0] - a["memory_states_bytes"][0])
    assert any(pytest.approx(2.0 * gemm * n) == diff for n in stage_layers)
    # the weights' casts, with the step of the stage whose tail binds: its own layers
    ctx = ctx_of(FP8, model=model)
    scale = float(straggler_factor(ctx.profile.node_straggler, np.array([1024 / 8]))[0])
    extra = float(b["optimizer_s"][0] - a["optimizer_s"][0])
    casts = [scale * float(weight_cast_s(ctx.ops, np.array([n * gemm]), n)[0]) for n in edges]
    assert any(pytest.approx(c, rel=1e-6) == extra for c in casts)
