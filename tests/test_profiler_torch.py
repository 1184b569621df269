"""The profiler's plain-PyTorch side on the CPU: the byte convention of the torch op list's
own ops, the tables each framework needs, the standard-module model, the host-dispatch
and in-step GEMM measurements on a tiny grid, and real training steps written as the
shared Hopper set's CSV."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from op_spy import spy_on

from vtrain_opt.cli import main
from vtrain_opt.profile_tables import MEMORY_OPS
from vtrain_opt.profiler.grid import FRAMEWORK_ONLY_OPS, grid_for, memory_ops_for
from vtrain_opt.profiles import load_profile
from vtrain_opt.sim.convention import sim_bytes_per_element
from vtrain_opt.sim.ops import OpModel
from vtrain_opt.spec.hardware import get_cluster
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.setup import Setup

torch = pytest.importorskip("torch")
CPU = torch.device("cpu")
SHARED_RUNS = Path(__file__).resolve().parents[2] / "shared/data/hopper/h200_gpt_single_gpu.csv"
TINY_GRID = replace(
    grid_for("cpu", True),
    gemm=(64, 256),
    attention_batch_heads=(4,),
    attention_seq=(128,),
    elements=(2**14, 2**16),
    optimizer_params=(2**16,),
    step_layers=((64, 2, 64, 2),),
    warmup=0,
    repeats=2,
    min_sample_s=1e-4,
)


def test_torch_ops_bytes_per_element_follow_the_torch_cost_code():
    f = sim_bytes_per_element("bf16")
    # GELU reads and writes (tokens x ffn), its backward twice that; a bias gradient reads
    # the (tokens x width) gradient; AdamW in bf16 reads parameter, gradient, two moments
    # and writes three back: 2 + 2 + 4 + 2 + 4 bytes
    assert (f["gelu"], f["gelu_bwd"], f["bias_grad"], f["adam"]) == (4.0, 8.0, 2.0, 14.0)
    assert sim_bytes_per_element("fp32")["adam"] == 28.0
    # Megatron's factors are untouched by the torch pass
    assert (f["layernorm"], f["optimizer"], f["residual_add"]) == (4.0, 38.0, 6.0)

    from vtrain_opt.sim.costs_torch import torch_layer_costs

    setup = Setup(dtype="bf16", framework="torch", dropout=0.0, master_weights="none")
    ops = OpModel(load_profile("a100-80gb"), get_cluster("a100-80gb"), setup)
    asked = spy_on(ops)
    model = ModelSpec(
        family="gpt", num_layers=2, hidden_size=512, num_attention_heads=8, vocab_size=1000,
        seq_length=256,
    )  # fmt: skip
    torch_layer_costs(model, ops, np.array([2]), np.array([0]))
    tokens = 2 * model.seq_length
    assert ("gelu", f["gelu"] * tokens * model.ffn) in asked
    assert ("bias_grad", f["bias_grad"] * tokens * model.hidden_size) in asked
    assert ("bias_grad", f["bias_grad"] * tokens * model.ffn) in asked


def test_each_framework_measures_its_own_tables():
    both = set(memory_ops_for(("megatron", "torch")))
    assert both == set(MEMORY_OPS)
    torch_only = set(memory_ops_for(("torch",)))
    assert not torch_only & FRAMEWORK_ONLY_OPS["megatron"]
    assert {"gelu", "bias_grad", "adam", "layernorm", "cross_entropy"} <= torch_only
    assert not set(memory_ops_for(("megatron",))) & FRAMEWORK_ONLY_OPS["torch"]
    g = grid_for("cpu", True)
    assert g.count(("torch",)) < g.count() and g.count(("megatron",)) < g.count()


@pytest.mark.parametrize("framework", ["torch", "megatron"])
def test_tiny_grid_tables_of_one_framework(framework):
    from vtrain_opt.profiler.ops import measure_ops

    steps: list[str] = []
    tables, notes = measure_ops(torch, CPU, "fp32", TINY_GRID, steps.append, (framework,))
    other = FRAMEWORK_ONLY_OPS["megatron" if framework == "torch" else "torch"]
    assert not set(tables) & other
    assert FRAMEWORK_ONLY_OPS[framework] <= set(tables)
    assert len(steps) == TINY_GRID.count((framework,))
    for op, t in tables.items():
        assert np.all(np.array(t["time_s"], dtype=float) > 0), op
    if framework == "torch":
        assert notes["adam"] in ("fused", "foreach") and notes["gemm_bias"]["median_ratio"] > 0
        assert len(notes["gemm_bias"]["shapes"]) == 4  # QKV, output, MLP up and down


@pytest.mark.parametrize("framework", ["torch", "megatron"])
def test_in_step_gemms_map_onto_the_layers_gemms(framework):
    """torch.profiler's GEMM ops of one layer's forward + backward: 4 Linears x (forward,
    input gradient, weight gradient), as the simulator's op list counts them."""
    from vtrain_opt.profiler.instep import measure_step_gemms, predicted_gemm_s

    (row,) = measure_step_gemms(torch, CPU, "fp32", TINY_GRID.step_layers, framework, 1, 1, 1)
    assert row["gemms"] == 12 and 0 < row["gemm_s"] < row["all_ops_s"]
    shape = TINY_GRID.step_layers[0]
    predicted, n, from_tables = predicted_gemm_s(
        load_profile("a100-80gb"), get_cluster("a100-80gb"), "fp32", framework, shape
    )
    assert n == 12 and predicted > 0 and from_tables == 0  # an analytical profile


def test_host_dispatch_per_layer():
    from vtrain_opt.profiler.host import host_source, measure_host

    r = measure_host(torch, CPU, "fp32", "torch", repeats=3, warmup=1)
    assert 0 < r["fwd_s"] < 10e-3 and r["bwd_s"] > 0 and r["fwd_synchronized_s"] > 0
    text = host_source(r, "some cpu", "cpu")
    assert text.startswith("measured on some cpu: ") and "backward dispatch" in text
    assert measure_host(torch, CPU, "fp32", "megatron", repeats=2, warmup=1)["fwd_s"] > 0


def test_standard_module_model_counts_the_shared_runs_parameters():
    from vtrain_opt.profiler import torch_model as TM

    spec = ModelSpec(
        family="gpt", num_layers=24, hidden_size=1024, num_attention_heads=16, vocab_size=51200,
        seq_length=2048,
    )  # fmt: skip
    model = TM.build_model(torch, spec, torch.device("meta"), torch.bfloat16)
    assert TM.counted_params(model) == 354740224  # gpt-350m in the shared H200 set
    assert TM.counted_params(model) + spec.seq_length * spec.hidden_size == spec.num_params()


def _tiny_configs(tmp_path: Path) -> Path:
    path = tmp_path / "configs.csv"
    path.write_text(
        "name,num_layers,hidden_size,num_attention_heads,seq_length,vocab_size,micro_batch,"
        "accumulation,recompute\ntiny,2,64,2,32,128,2,2,none\ntiny,2,64,2,32,128,1,2,full\n"
    )
    return path


def test_steps_write_the_shared_sets_columns(tmp_path):
    from vtrain_opt.profiler import steps

    out = tmp_path / "runs.csv"
    argv = ["--out", str(out), "--configs", str(_tiny_configs(tmp_path)), "--device", "cpu"]
    assert steps.main([*argv, "--warmup", "1", "--repeats", "2"]) == 0
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == steps.COLUMNS
    if SHARED_RUNS.is_file():
        with open(SHARED_RUNS, newline="", encoding="utf-8-sig") as f:
            assert tuple(next(csv.reader(f))) == steps.COLUMNS
    assert [r["recompute"] for r in rows] == ["none", "full"]
    for r in rows:
        assert float(r["min_s"]) <= float(r["iteration_s"]) <= float(r["max_s"])
        assert int(r["global_batch"]) == int(r["micro_batch"]) * int(r["accumulation"])
        assert int(r["params"]) > 0 and float(r["tokens_per_s"]) > 0


def test_steps_default_configs_are_the_shared_sets():
    from vtrain_opt.profiler import steps

    if not SHARED_RUNS.is_file():
        pytest.skip(f"{SHARED_RUNS} is absent (the shared data folder is not here)")
    configs = steps.read_configs(str(SHARED_RUNS))
    assert configs == list(steps.HOPPER_CONFIGS)


def test_steps_bad_input_is_one_line(tmp_path, capsys):
    from vtrain_opt.profiler import steps

    bad = tmp_path / "bad.csv"
    bad.write_text("name,num_layers\nx,2\n")
    assert steps.main(["--out", str(tmp_path / "o.csv"), "--configs", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing column(s)" in err and len(err.splitlines()) == 1


def test_bad_framework_is_one_line(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", "--framework", "jax", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--framework" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_gpu_session_script_parses():
    """The prepared GPU session (benchmarks/gpu_session.sh) is valid bash; its Python parts
    (profile, profiler.steps) are the ones tested above."""
    import shutil
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks/gpu_session.sh"
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(script)], check=True)
    text = script.read_text()
    assert "vtrain_opt profile --device" in text and "vtrain_opt.profiler.steps" in text


def test_steps_default_order_covers_every_model_first():
    from vtrain_opt.profiler import steps

    order = steps.spread(steps.HOPPER_CONFIGS)
    assert sorted(map(str, order)) == sorted(map(str, steps.HOPPER_CONFIGS))
    assert [c["name"] for c in order[:4]] == ["gpt-350m", "gpt-1.3b", "gpt-2.7b", "gpt-6.7b"]
