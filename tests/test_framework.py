"""The implementation being predicted: framework (megatron | torch), dropout, master weights."""

import json

import numpy as np
import pytest

from vtrain_opt import simulate
from vtrain_opt.cli import main
from vtrain_opt.measurements import read_measurements
from vtrain_opt.profiles import load_profile
from vtrain_opt.spec.hardware import get_cluster
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import ParallelPlan
from vtrain_opt.spec.setup import Setup

GPT = ModelSpec(
    family="gpt", num_layers=24, hidden_size=2048, num_attention_heads=16, vocab_size=51200,
    seq_length=2048,
)  # fmt: skip
TORCH = Setup(framework="torch", dropout=0.0, master_weights="none")
ONE = ParallelPlan(tp=1, pp=1, dp=1, micro_batch=2, global_batch=8)


def _run(setup: Setup, plan: ParallelPlan = ONE, model: ModelSpec = GPT, **kw):
    return simulate(model, get_cluster("h200"), plan, setup=setup, **kw).iloc[0]


def test_setup_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="framework"):
        Setup(framework="jax")
    with pytest.raises(ValueError, match=r"dropout.*\[0, 1\)"):
        Setup(dropout=1.0)
    with pytest.raises(ValueError, match="master weights"):
        Setup(master_weights="fp64")
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        Setup(framework="torch", attention="unfused")


def test_dropout_defaults_follow_the_family():
    llama = ModelSpec(family="llama", num_layers=2, hidden_size=256, num_attention_heads=4,
                      vocab_size=1000, seq_length=128)  # fmt: skip
    assert Setup().dropout_p(GPT) == 0.1
    assert Setup().dropout_p(llama) == 0.0
    assert Setup(dropout=0.2).dropout_p(llama) == 0.2


def test_master_weights_none_keeps_params_and_adam_states_in_the_compute_dtype():
    none = Setup(master_weights="none")
    assert (none.weight_bytes, none.grad_bytes, none.optimizer_bytes) == (2, 2, 4)
    mixed = Setup()  # Megatron bf16: 2 + 4 + 12 = 18 bytes per parameter
    assert mixed.weight_bytes + mixed.grad_bytes + mixed.optimizer_bytes == 18
    a = _run(Setup(framework="torch", dropout=0.0))
    b = _run(TORCH)
    assert b.memory_states_bytes < a.memory_states_bytes


def test_torch_op_list_is_cheaper_than_megatrons_without_dropout_kernels():
    # the same plan: Megatron adds dropout kernels (0.1 by default for gpt) and its host
    # overhead; the torch list has none with --dropout 0
    megatron = _run(Setup())
    torch = _run(TORCH)
    assert torch.iteration_time_s < megatron.iteration_time_s
    dropped = _run(Setup(framework="torch", dropout=0.1, master_weights="none"))
    assert dropped.iteration_time_s > torch.iteration_time_s
    assert dropped.memory_activations_bytes > torch.memory_activations_bytes


def test_dropout_zero_removes_megatron_dropout_work_and_masks():
    with_drop = _run(Setup())
    without = _run(Setup(dropout=0.0))
    assert without.iteration_time_s < with_drop.iteration_time_s
    assert without.memory_activations_bytes < with_drop.memory_activations_bytes


def test_torch_framework_marks_model_parallel_plans_in_a_batch():
    plans = [ONE, ParallelPlan(tp=2, pp=1, dp=1, micro_batch=2, global_batch=8)]
    df = simulate(GPT, get_cluster("h200"), plans, setup=TORCH)
    assert bool(df["feasible"].iloc[0])
    assert df["reason"].iloc[1] == "framework torch: no tp/cp/pp/vpp/sp"
    assert np.isnan(df["iteration_time_s"].iloc[1])


def test_gradient_accumulation_costs_a_read_write_per_micro_batch_in_torch():
    one = _run(TORCH, ParallelPlan(tp=1, pp=1, dp=1, micro_batch=2, global_batch=2))
    four = _run(TORCH, ParallelPlan(tp=1, pp=1, dp=1, micro_batch=2, global_batch=8))
    assert four.optimizer_s > one.optimizer_s  # three accumulations of every gradient


def test_measured_profile_of_another_gpu_or_dtype_is_one_line(capsys):
    args = ["simulate", "--model", "gpt3-175b", "--num-gpus", "8", "--tp", "8"]
    assert main([*args, "--gpu", "h100-sxm", "--profile", "h200-measured"]) == 2
    err = capsys.readouterr().err
    assert "measured on NVIDIA H200 (h200), not h100-sxm" in err and "Traceback" not in err
    assert main([*args, "--gpu", "h200", "--profile", "h200-measured", "--dtype", "fp16"]) == 2
    assert "measured in bf16, not fp16" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, text",
    [
        (["--tp", "8"], "--tp 8"),
        (["--pp", "2", "--vpp", "2"], "--vpp 2"),
    ],
)
def test_torch_framework_refuses_model_parallel_options(capsys, extra, text):
    argv = ["simulate", "--model", "gpt3-175b", "--gpu", "h200", "--num-gpus", "8"]
    assert main([*argv, *extra, "--framework", "torch"]) == 2
    err = capsys.readouterr().err
    assert text in err and "--framework torch" in err and len(err.strip().splitlines()) == 1


def test_dropout_outside_the_unit_interval_is_one_line(capsys):
    argv = ["simulate", "--model", "gpt3-175b", "--gpu", "h200", "--num-gpus", "8"]
    assert main([*argv, "--dropout", "1.5"]) == 2
    assert "not a probability in [0, 1)" in capsys.readouterr().err


def test_search_takes_the_framework(capsys):
    argv = [
        "search", "--model", "gpt3-175b", "--gpu", "h200", "--tokens", "1B",
        "--max-gpus", "64", "--framework", "torch", "--tp", "2", "--json",
    ]  # fmt: skip
    assert main(argv) == 2
    assert "--tp 2" in capsys.readouterr().err


def test_step_format_rows_read_with_their_own_vocab_and_recompute(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text(
        "name,num_layers,hidden_size,num_attention_heads,seq_length,vocab_size,micro_batch,"
        "global_batch,recompute,iteration_s,peak_memory_bytes\n"
        "a,2,256,4,128,1000,2,8,none,0.05,1000000\n"
        "b,2,256,4,128,1000,2,8,full,0.06,900000\n"
    )
    rows = read_measurements([path]).rows
    assert list(rows["recompute"]) == ["none", "full"]
    assert (rows[["tp", "pp", "dp", "num_gpus"]] == 1).all().all()
    assert list(rows["iteration_time_ms"]) == [50.0, 60.0]
    bad = tmp_path / "bad.csv"
    bad.write_text(path.read_text().replace("full", "most"))
    with pytest.raises(ValueError, match="'most' is not one of none, selective, full"):
        read_measurements([bad])


def test_validate_reports_peak_memory_of_step_files(tmp_path, capsys):
    path = tmp_path / "steps.csv"
    path.write_text(
        "num_layers,hidden_size,num_attention_heads,seq_length,vocab_size,micro_batch,"
        "global_batch,recompute,iteration_s,peak_memory_bytes\n"
        "2,256,4,128,1000,2,8,none,0.05,1000000\n"
    )
    argv = ["validate", "--measurements", str(path), "--gpu", "h200", "--dtype", "bf16",
            "--attention", "flash", "--framework", "torch", "--dropout", "0",
            "--master-weights", "none", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["peak_memory"]["n_rows"] == 1 and out["peak_memory"]["mape_pct"] >= 0


def test_shipped_hopper_profiles_record_what_they_were_fitted_on():
    h200 = load_profile("h200")
    assert "tables" in h200.fit and h200.fit["tables"]["profile"].startswith("h200-measured")
    assert "fitted to" in h200.sources["gemm_efficiency"]
    assert "h200_gpt_single_gpu.csv" in h200.description
    h100 = load_profile("h100-sxm")
    assert h100.fit["tables"]["profile"].startswith("h100-sxm-measured")
    # the H100's own in-step GEMM times (profiler), against the fitted curves
    assert h100.sources["step_gemm_scale"].startswith("in-step GEMM times of h100-sxm-measured")
    assert h100.step_gemm_scale != load_profile("h100-sxm-measured").step_gemm_scale
    b200 = load_profile("b200")
    assert b200.gemm_efficiency == h100.gemm_efficiency and b200.kind == "derived"
    for name in ("h200-measured", "h100-sxm-measured"):
        p = load_profile(name)
        assert p.kind == "measured" and p.tables and 0.7 <= p.step_gemm_scale <= 1.3


def test_a_torch_space_has_no_model_parallel_dimensions_and_its_own_identity():
    from vtrain_opt.search.space import SearchSpace

    model = get_model_llama()
    megatron = SearchSpace.create(model, ["h200"], max_gpus=64, setup=Setup())
    torch = SearchSpace.create(model, ["h200"], max_gpus=64, setup=TORCH)
    assert (torch.tp, torch.pp, torch.vpp, torch.sequence_parallel) == ((1,), (1,), (1,), (False,))
    assert len(megatron.tp) > 1 and True in megatron.sequence_parallel
    assert (
        torch.fingerprint()
        != SearchSpace.create(
            model, ["h200"], max_gpus=64, setup=Setup(dtype="bf16", attention="flash")
        ).fingerprint()
    )
    # a Megatron space keeps the identity it had before the framework existed
    assert megatron.to_dict()["setup"] == {"dtype": "bf16", "attention": "flash"}


def test_search_where_no_plan_passes_the_rules_says_so():
    from vtrain_opt.search import SearchSpace, search

    space = SearchSpace.create(get_model_llama(), ["h200"], max_gpus=16, tp=[2], setup=TORCH)
    result = search(space, 1e9)
    assert result.feasible == 0 and not result.ok
    assert result.binding == [
        f"no plan of the space passes the rules: {result.space_size} of {result.space_size} "
        "break 'framework torch: no tp/cp/pp/vpp/sp'"
    ]


def get_model_llama():
    from vtrain_opt.spec.model import get_model

    return get_model("llama2-7b")
