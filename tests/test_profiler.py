"""The profiler on the CPU: ``profile --quick`` (with two gloo processes for the
collectives, the code path NCCL takes on GPUs) writes a measured profile that
``simulate`` accepts, whose op times are positive, finite and grow with size; the
self-check runs; bad input gets one line and exit status 2; an interrupted run leaves no
file."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vtrain_opt.cli import main
from vtrain_opt.profile_tables import COLLECTIVES, TABLE_AXES
from vtrain_opt.profiles import PARAM_DEFS, load_profile
from vtrain_opt.sim.convention import sim_bytes_per_element
from vtrain_opt.sim.ops import OpModel
from vtrain_opt.spec.hardware import cluster_for_profile
from vtrain_opt.spec.setup import Setup

torch = pytest.importorskip("torch")
COMM = {*COLLECTIVES, "send_recv"}

# A small model inside the quick grid.
CHECK_MODEL = """\
family: gpt
num_layers: 2
hidden_size: 256
num_attention_heads: 4
vocab_size: 1000
seq_length: 256
"""


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    """One quick CPU profile with its self-check, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("profiles") / "cpu-quick.json"
    argv = ["profile", "--device", "cpu", "--quick", "--threads", "1", "--out", str(out)]
    argv += ["--world-size", "2"]
    buf = io.StringIO()  # capsys is function-scoped; this fixture runs once per module
    with contextlib.redirect_stdout(buf):
        rc = main([*argv, "--check", "--no-progress", "--json"])
    assert rc == 0
    return out, json.loads(buf.getvalue())


def test_quick_profile_measures_every_op_positive_and_finite(quick):
    path, report = quick
    profile = load_profile(str(path))
    assert profile.kind == "measured" and profile.gpu.startswith("cpu-")
    assert profile.provenance["quick"] is True and profile.provenance["torch"] == torch.__version__
    assert profile.device["kind"] == "cpu"
    assert profile.provenance["collectives"]["backend"] == "gloo"
    tables = profile.tables["fp32"]
    assert set(tables) == set(TABLE_AXES)
    for op, table in tables.items():
        t = np.array(table["time_s"], dtype=np.float64)
        assert np.all(np.isfinite(t)) and np.all(t > 0), op
    assert report["tables"] == {op: np.size(t["time_s"]) for op, t in tables.items()}


def test_op_times_grow_with_size(quick):
    tables = load_profile(str(quick[0])).tables["fp32"]
    for op, table in tables.items():
        t = np.array(table["time_s"], dtype=np.float64)
        if t.ndim == 1 or op in COMM:  # by bytes: largest size vs smallest
            assert t.reshape(-1)[-1] > t.reshape(-1)[0], op
        else:  # GEMM and attention: the largest cell vs the smallest, and along each axis
            assert t.flat[-1] > t.flat[0], op
            for axis in range(t.ndim):
                top = tuple(-1 if a != axis else 0 for a in range(t.ndim))
                if t.shape[axis] > 1:
                    assert t[(-1,) * t.ndim] > t[top], (op, axis)


def test_simulator_reads_the_measured_values_on_grid_points(quick):
    profile = load_profile(str(quick[0]))
    ops = OpModel(profile, cluster_for_profile(profile), Setup(dtype="fp32"))
    g = profile.tables["fp32"]["gemm"]
    m, n, k = np.meshgrid(g["grid"]["m"], g["grid"]["n"], g["grid"]["k"], indexing="ij")
    got = ops.gemm_s(m.ravel(), n.ravel(), k.ravel())
    # the measured in-step scale applies to every GEMM, table or analytical
    assert np.allclose(got, np.array(g["time_s"]).ravel() * profile.step_gemm_scale, rtol=1e-12)
    unscaled = OpModel(profile.with_params(step_gemm_scale=1.0), ops.cluster, ops.setup)
    assert np.array_equal(unscaled.gemm_s(m.ravel(), n.ravel(), k.ravel()), np.ravel(g["time_s"]))
    ln = profile.tables["fp32"]["layernorm"]
    got = ops.memory_s(np.array(ln["grid"]["nbytes"]), 1, "layernorm")
    assert np.array_equal(got, ln["time_s"])


def test_simulate_accepts_the_quick_profile(quick, tmp_path, capsys):
    model = tmp_path / "small.yaml"
    model.write_text(CHECK_MODEL)
    argv = ["simulate", "--profile", str(quick[0]), "--model", str(model)]
    assert main([*argv, "--micro-batch", "2", "--global-batch", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dtype"] == "fp32" and out["gpu"].startswith("cpu-")
    assert np.isfinite(out["iteration_time_s"]) and out["iteration_time_s"] > 0
    cov = out["measured_tables"]["ops"]
    # every op of this single-device plan is inside the quick grid
    assert all(set(c) == {"measured"} for c in cov.values()), cov
    assert sum(c["measured"] for c in cov.values()) > 20


def test_self_check_compares_a_real_model_with_the_prediction(quick):
    path, report = quick
    check = report["check"]
    # the standard-module model (independent of the profiled kernels) is the result; the
    # model built from the profiled kernels is kept beside it
    assert check["framework"] == "torch" and "standard modules" in check["implementation"]
    assert check["megatron_kernels"]["framework"] == "megatron"
    for part in (check, check["megatron_kernels"]):
        for what in ("layer", "model"):
            r = part[what]
            assert r["measured_s"] > 0 and r["predicted_s"] > 0
            assert np.isfinite(r["error"])
            # a timing on a shared CPU is noisy: this only catches a prediction that is off
            # by a factor (a missing backward, a unit error), not the error the note reports
            assert 1 / 3 < r["predicted_s"] / r["measured_s"] < 3, (part["framework"], what, r)
        assert part["model"]["measured_s"] > part["layer"]["measured_s"]
        cov = part["coverage"]["ops"]
        assert all(set(c) == {"measured"} for c in cov.values()), cov
    assert {"gelu", "gelu_bwd", "bias_grad", "adam"} <= set(check["coverage"]["ops"])
    assert check["shape"]["accumulation"] == 2 and "2 micro-batches" in check["plan"]
    assert load_profile(str(path)).provenance["self_check"]["model"] == check["model"]


def test_torch_tables_are_keyed_by_the_simulators_bytes(quick):
    """GELU, the bias gradient and AdamW in the compute dtype: measured, and keyed by the
    bytes sim/costs_torch.py counts for the measured elements."""
    profile = load_profile(str(quick[0]))
    factors = sim_bytes_per_element("fp32")
    tables = profile.tables["fp32"]
    for op in ("gelu", "gelu_bwd", "bias_grad", "adam"):
        shape = tables[op]["shape"]
        assert shape["bytes_per_element"] == factors[op], op
        keys = [factors[op] * e for e in shape["elements"]]
        assert tables[op]["grid"]["nbytes"] == keys, op
    assert "AdamW" in tables["adam"]["shape"]["impl"] and "fp32" in tables["adam"]["shape"]["impl"]
    note = profile.provenance["gemm_bias"]
    assert note["shapes"] and all(r["bias_s"] > 0 and r["ratio"] > 0 for r in note["shapes"])


def test_host_dispatch_is_measured(quick):
    profile = load_profile(str(quick[0]))
    d = PARAM_DEFS["torch_host_layer_s"]
    assert d.lower < profile.torch_host_layer_s < d.upper
    assert profile.sources["torch_host_layer_s"].startswith("measured on ")
    host = profile.provenance["host_dispatch"]
    assert host["torch"]["fwd_s"] == profile.torch_host_layer_s
    assert host["megatron"]["fwd_s"] > 0 and host["torch"]["bwd_s"] > 0
    # on a CPU the op tables include the dispatch: a pass takes the longer of the two
    assert profile.host_overlap == PARAM_DEFS["host_overlap"].upper


def test_step_gemm_scale_is_measured_in_a_real_layer(quick):
    profile = load_profile(str(quick[0]))
    d = PARAM_DEFS["step_gemm_scale"]
    assert d.lower <= profile.step_gemm_scale <= d.upper
    assert profile.sources["step_gemm_scale"].startswith("measured: GEMM op (CPU) time")
    details = profile.provenance["in_step_gemm"]
    assert details["framework"] == "torch"
    assert len(details["shapes"]) == len(profile.provenance["grid"]["step_layers"])
    for row in details["shapes"]:
        # 4 Linears: forward, input and weight gradients; all read from the GEMM table
        assert row["gemms"] == row["predicted_gemms"] == row["from_tables"] == 12, row
        assert 0 < row["gemm_s"] < row["all_ops_s"]
        assert np.isfinite(row["ratio"]) and 1 / 5 < row["ratio"] < 5, row
    ratio = details["ratio"]
    assert profile.step_gemm_scale == min(max(ratio, d.lower), d.upper)


def test_simulator_reads_the_torch_tables(quick):
    from vtrain_opt.sim.measured import measured_coverage
    from vtrain_opt.sim.step import make_context, simulate_arrays
    from vtrain_opt.spec.model import ModelSpec
    from vtrain_opt.spec.plan import ParallelPlan, PlanBatch

    profile = load_profile(str(quick[0]))
    spec = ModelSpec(
        family="gpt", num_layers=2, hidden_size=128, num_attention_heads=2, vocab_size=1000,
        seq_length=256,
    )  # fmt: skip
    setup = Setup(dtype="fp32", framework="torch", dropout=0.0, master_weights="none")
    ctx = make_context(spec, cluster_for_profile(profile), profile, setup)
    plan = ParallelPlan(tp=1, pp=1, dp=1, micro_batch=2, global_batch=4)
    out = simulate_arrays(ctx, PlanBatch.from_plans([plan]))
    assert np.isfinite(out["iteration_time_s"][0])
    cov = measured_coverage(ctx.ops)["ops"]
    for op in ("gelu", "gelu_bwd", "bias_grad", "adam", "layernorm", "gemm"):
        assert set(cov[op]) == {"measured"} and cov[op]["measured"] > 0, (op, cov[op])
    assert "bias_gelu" not in cov and "optimizer" not in cov  # Megatron's own ops


def test_check_an_existing_profile(quick, capsys):
    argv = ["profile", "--check", "--profile", str(quick[0]), "--no-progress"]
    assert main([*argv, "--layers", "1"]) == 0
    out = capsys.readouterr().out
    assert "layer" in out and "model" in out and "error" in out
    assert "torch: standard modules" in out and "megatron: the profiler's" in out


def test_check_of_one_framework(quick, capsys):
    argv = ["profile", "--check", "--profile", str(quick[0]), "--layers", "1", "--json"]
    assert main([*argv, "--framework", "megatron", "--no-progress"]) == 0
    check = json.loads(capsys.readouterr().out)["check"]
    assert check["framework"] == "megatron" and "megatron_kernels" not in check
    assert check["layer"]["measured_s"] > 0


# ---- bad input -------------------------------------------------------------------------------
def _one_line_error(capsys, argv: list[str], fragment: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert fragment in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert captured.out == ""


def test_cuda_asked_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "p.json"
    _one_line_error(capsys, ["profile", "--device", "cuda", "--out", str(out)], "--device cuda")
    assert not out.exists()


def test_no_torch(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    out = tmp_path / "p.json"
    _one_line_error(capsys, ["profile", "--out", str(out)], "torch is not installed")
    assert not out.exists()


def test_output_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    _one_line_error(
        capsys, ["profile", "--quick", "--out", str(blocker / "p.json")], "cannot create its folder"
    )
    _one_line_error(capsys, ["profile", "--quick", "--out", str(tmp_path)], "is a directory")
    _one_line_error(capsys, ["profile", "--quick"], "give --out FILE")


def test_check_of_a_profile_without_tables(capsys):
    _one_line_error(capsys, ["profile", "--check", "--profile", "a100-80gb"], "no measured tables")


def test_interrupted_run_leaves_no_profile(tmp_path, capsys, monkeypatch):
    from vtrain_opt.profiler import ops

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ops.OpBench, "attention", interrupt)
    out = tmp_path / "sub" / "p.json"
    argv = ["profile", "--device", "cpu", "--quick", "--out", str(out), "--no-progress"]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary file left behind either
