"""`python -m vtrain_opt simulate`: JSON and human output, traces, and bad input."""

import json
import subprocess
import sys

import pytest

from vtrain_opt.cli import main
from vtrain_opt.console import BREAKDOWN

MTNLG = [
    "simulate",
    "--model",
    "mt-nlg-530b",
    "--gpu",
    "a100-80gb",
    "--num-gpus",
    "3360",
    "--tp",
    "8",
    "--pp",
    "35",
    "--micro-batch",
    "1",
    "--global-batch",
    "1920",
]


def run_json(capsys, argv):
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object, nothing else on stdout


def test_headline_plan_json(capsys):
    d = run_json(capsys, [*MTNLG, "--tokens", "270B"])
    assert 10 < d["iteration_time_s"] < 100
    assert (d["tp"], d["pp"], d["dp"], d["num_gpus"]) == (8, 35, 12, 3360)
    assert d["recompute"] == "full" and d["recompute_chosen_by"] == "auto"  # none/selective OOM
    assert d["feasible"] is True and d["reason"] == ""
    for key in (
        "compute_s",
        "tp_comm_s",
        "pp_comm_s",
        "bubble_s",
        "dp_comm_s",
        "optimizer_s",
        "overhead_s",
        "memory_per_gpu_bytes",
        "tokens_per_s",
        "mfu",
        "training_time_s",
        "gpu_hours",
        "cost_usd",
        "profile",
    ):
        assert key in d
    # the breakdown the table shows is complete: its parts sum to the iteration
    parts = sum(d[key] for key, _ in BREAKDOWN)
    assert parts == pytest.approx(d["iteration_time_s"], rel=1e-9)


def test_explicit_recompute_and_overrides(capsys):
    d = run_json(
        capsys,
        [
            *MTNLG,
            "--recompute",
            "none",
            "--inter-node-gbps",
            "800",
            "--price-per-gpu-hour",
            "$2.5",
            "--tokens",
            "1e9",
            "--gpus-per-node",
            "8",
        ],
    )
    assert d["recompute"] == "none" and d["feasible"] is False and d["reason"] == "out of memory"
    assert d["cost_usd"] == pytest.approx(d["gpu_hours"] * 2.5)


def test_dp_derived_and_defaults(capsys):
    d = run_json(
        capsys, ["simulate", "--model", "gpt3-175b", "--num-gpus", "1024", "--tp", "8", "--pp", "8"]
    )
    assert d["dp"] == 16 and d["global_batch"] == 1536 and d["gpu"] == "a100-80gb"


def test_nvlink_domain_option(capsys):
    base = ["simulate", "--model", "gpt3-175b", "--num-gpus", "128", "--tp", "16", "--pp", "8"]
    rack = run_json(capsys, [*base, "--gpu", "gb200-nvl72"])
    assert (rack["gpus_per_node"], rack["nvlink_domain"]) == (4, 72)
    trays = run_json(capsys, [*base, "--gpu", "gb200-nvl72", "--nvlink-domain", "4"])
    assert trays["nvlink_domain"] == 4 and trays["tp_comm_s"] > rack["tp_comm_s"]
    h100 = run_json(capsys, [*base, "--gpu", "h100-sxm"])
    assert h100["nvlink_domain"] == 8
    wide = run_json(capsys, [*base, "--gpu", "h100-sxm", "--nvlink-domain", "16"])
    assert wide["tp_comm_s"] < h100["tp_comm_s"]
    assert main([*base, "--gpu", "gb200-nvl72"]) == 0
    assert "(4 per node, 72 per NVLink domain)" in capsys.readouterr().out


def test_human_output(capsys):
    assert main([*MTNLG, "--tokens", "270B"]) == 0
    out = capsys.readouterr().out
    assert "Where one iteration goes" in out and "pipeline bubble" in out
    assert "memory per GPU" in out and "days" in out and "MFU" in out


def test_trace_file(tmp_path, capsys):
    trace = tmp_path / "t.json"
    d = run_json(
        capsys,
        [
            "simulate",
            "--model",
            "gpt3-175b",
            "--num-gpus",
            "256",
            "--tp",
            "8",
            "--pp",
            "8",
            "--global-batch",
            "64",
            "--trace",
            str(trace),
        ],
    )
    events = json.loads(trace.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["cat"] for e in spans} >= {"forward", "backward", "p2p", "dp_comm", "optimizer"}
    assert sum(e["name"].startswith("F s0 ") for e in spans) == 64 // 4  # 16 micro-batches
    assert d["reference_iteration_time_s"] == pytest.approx(d["iteration_time_s"], rel=1e-6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "gpt5"], "unknown model 'gpt5'; known models:"),
        (["--model", "gpt3-175b", "--gpu", "tpu9"], "unknown GPU 'tpu9'; known GPUs:"),
        (["--model", "gpt3-175b", "--tp", "5"], "tp=5 must divide the attention heads"),
        (["--model", "gpt3-175b", "--pp", "7"], "must divide the layers"),
        (["--model", "gpt3-175b", "--tp", "abc"], "'abc' is not a whole number"),
        (["--model", "gpt3-175b", "--tp", "0"], "must be a positive whole number"),
        (["--model", "gpt3-175b", "--num-gpus", "100", "--tp", "8"], "not a multiple of tp x pp"),
        (["--model", "gpt3-175b", "--tokens", "lots"], "is not a count"),
        (["--model", "gpt3-175b", "--profile", "nope"], "unknown profile 'nope'"),
        (["--model", "gpt3-175b", "--recompute", "some"], "invalid choice"),
        (["--model", "gpt3-175b", "--nvlink-domain", "0"], "must be a positive whole number"),
        (
            ["--model", "gpt3-175b", "--gpu", "h100-sxm", "--nvlink-domain", "12"],
            "nvlink_domain: 12 is not a multiple of gpus_per_node (8)",
        ),
        (
            ["--model", "gpt3-175b", "--gpu", "gb200-nvl72", "--gpus-per-node", "16"],
            "nvlink_domain: 72 is not a multiple of gpus_per_node (16)",
        ),
        (["--model", "gpt3-175b", "--dtype", "fp4"], "invalid choice: 'fp4'"),
        (
            ["--model", "gpt3-175b", "--gpu", "a100-80gb", "--dtype", "fp8"],
            "a100-80gb has no fp8 peak; FP8 needs Hopper or Blackwell",
        ),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, message):
    assert main(["simulate", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert message in err


def test_malformed_model_and_profile_files(tmp_path, capsys):
    bad_model = tmp_path / "m.yaml"
    bad_model.write_text("family: gpt\nnum_layers: 2\n")
    assert main(["simulate", "--model", str(bad_model)]) == 2
    assert "missing field" in capsys.readouterr().err
    bad_profile = tmp_path / "p.json"
    bad_profile.write_text(
        '{"format": "vtrain_opt.profile/1", "name": "x", "gpu": "a100-80gb", "par'
    )
    assert main(["simulate", "--model", "gpt3-175b", "--profile", str(bad_profile)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_module_entry_point():
    r = subprocess.run(
        [sys.executable, "-m", "vtrain_opt", "simulate", "--model", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1


def test_catalog_lists_models_gpus_and_profiles(capsys):
    assert main(["catalog", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"gpt3-175b", "llama3-405b", "megatron-1t"} <= {m["name"] for m in d["models"]}
    assert {g["name"] for g in d["gpus"]} >= {"v100-32gb", "a100-80gb", "h100-sxm", "h200", "b200"}
    kinds = {p["name"]: p["kind"] for p in d["profiles"]}
    assert kinds["a100-80gb"] == "calibrated" and kinds["b200"] == "derived"
    assert kinds["h100-sxm"] == "calibrated" and kinds["h200-measured"] == "measured"
    assert main(["catalog"]) == 0
    assert "Models" in capsys.readouterr().out
