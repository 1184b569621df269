"""The `search` command: outputs, JSON, baseline, resume, and one-line errors."""

from __future__ import annotations

import json
import re
import time

import pandas as pd
import pytest
from helpers import search_argv

from vtrain_opt.cli import main

SMALL = search_argv(global_batch="64,128", micro_batch="1,2,4", vpp="1,2", zero="0,1")


def _json(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_json_and_files(capsys, tmp_path):
    out = tmp_path / "run"
    code, data, err = _json(capsys, [*SMALL, "--out", str(out), "--json"])
    assert code == 0, err
    for key in ("best_time", "best_cost", "pareto", "evaluated"):
        assert key in data
    assert data["strategy"] == "exhaustive" and data["evaluated"] == data["space_size"] > 0
    assert data["best_time"]["training_time_s"] <= data["best_cost"]["training_time_s"]
    assert data["best_cost"]["cost_usd"] <= data["best_time"]["cost_usd"]
    pareto = pd.read_csv(out / "pareto.csv")
    assert len(pareto) == len(data["pareto"]) >= 1
    plans = pd.read_parquet(out / "plans.parquet")
    assert len(plans) == data["evaluated"] and plans["feasible"].sum() == data["feasible"]
    best = json.loads((out / "best.json").read_text())
    assert best["space"]["model"]["name"] == "llama2-7b"
    assert best["prices_per_gpu_hour_usd"]["a100-40gb"] > 0
    assert best["profiles"]["a100-40gb"]
    assert best["vtrain_opt_version"] and best["tokens"] == 1e11
    assert best["plans_parquet"]["complete"] is True
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # no temporary files left behind


def test_table_and_baseline(capsys, tmp_path):
    code = main(
        [*SMALL, "--out", str(tmp_path), "--baseline", "tp=4,pp=2,dp=4,mb=1", "--budget", "$20k"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Best plans" in out and "fastest" in out and "cheapest" in out and "baseline" in out
    assert "against the baseline, the fastest plan" in out
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["baseline"]["plan"]["tp"] == 4
    saved = best["baseline"]["savings"]["best_time"]
    assert saved["time_saved_s"] == pytest.approx(
        best["baseline"]["plan"]["training_time_s"] - best["best_time"]["training_time_s"]
    )
    assert best["limits"]["budget_usd"] == 20e3


def test_optuna_resumes_in_its_folder(capsys, tmp_path):
    argv = [*SMALL, "--strategy", "optuna", "--out", str(tmp_path), "--json", "--batch-size", "8"]
    code, first, err = _json(capsys, [*argv, "--trials", "16"])
    assert code == 0, err
    assert first["storage"] == str(tmp_path / "study.journal")
    code, second, err = _json(capsys, [*argv, "--trials", "32"])
    assert code == 0, err
    assert second["study_name"] == first["study_name"] and second["trials"] == 32


def test_second_search_on_a_journal_is_refused(capsys, tmp_path):
    import os
    import subprocess
    import sys

    journal = tmp_path / "study.journal"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from vtrain_opt.search.study_store import journal_lock\n"
            "with journal_lock(sys.argv[1], 'x'):\n"
            "    print('locked', flush=True); sys.stdin.read()",
            str(journal),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = [*SMALL, "--strategy", "optuna", "--trials", "8", "--storage", str(journal)]
        code = main([*argv, "--out", str(tmp_path / "run")])
        out, err = capsys.readouterr()
        assert code == 2 and not out
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert f"in use by another search (pid {holder.pid} on " in err
        assert "study.journal.search.lock" in err
        assert not (tmp_path / "run").exists() and not journal.exists()  # nothing written
    finally:
        holder.communicate("")
    assert main([*argv, "--out", str(tmp_path / "run"), "--json"]) == 0  # free again
    capsys.readouterr()


def test_space_file_with_overrides(capsys, tmp_path):
    code, data, err = _json(
        capsys,
        [
            "search",
            "--space",
            "mt-nlg-530b",
            "--max-gpus",
            "512",
            "--tp",
            "8",
            "--objective",
            "cost",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert code == 0, err
    assert data["best_cost"]["num_gpus"] <= 512 and data["best_cost"]["tp"] == 8
    assert data["objective"] == "cost"


def test_nvlink_domain_reaches_the_space(capsys, tmp_path):
    argv = ["search", "--model", "gpt3-175b", "--gpu", "h100-sxm", "--tokens", "1B"]
    argv += ["--min-gpus", "64", "--max-gpus", "64", "--tp", "16", "--pp", "4"]
    argv += ["--micro-batch", "1", "--recompute", "full", "--zero", "1", "--global-batch", "64"]
    argv += ["--sequence-parallel", "on", "--vpp", "1"]
    runs = {}
    for domain in ("8", "16"):
        out = tmp_path / domain
        code, data, err = _json(
            capsys, [*argv, "--nvlink-domain", domain, "--out", str(out), "--json"]
        )
        assert code == 0, err
        best = json.loads((out / "best.json").read_text())
        cluster = best["space"]["gpus"][0]["cluster"]
        assert cluster.get("nvlink_domain", cluster["gpus_per_node"]) == int(domain)
        runs[domain] = data["best_time"]
    # tp=16 on NVLink across two nodes is faster than over the adapters
    assert runs["16"]["tp_comm_s"] < runs["8"]["tp_comm_s"]
    assert runs["16"]["iteration_time_s"] < runs["8"]["iteration_time_s"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "gpt5"], "unknown model 'gpt5'"),
        (
            ["--model", "gpt3-175b", "--gpu", "a100-90gb", "--tokens", "1B"],
            "unknown GPU 'a100-90gb'",
        ),
        (["--model", "gpt3-175b", "--sampler", "cmaes"], "'cmaes' is not one of"),
        (["--model", "gpt3-175b", "--budget=-$5"], "must be positive"),
        (["--model", "gpt3-175b", "--budget", "2000000"], "has no unit"),
        (["--model", "gpt3-175b", "--max-days", "soon"], "not a duration"),
        (["--model", "gpt3-175b"], "give --tokens"),
        (["--model", "gpt3-175b", "--space", "gpt3-175b"], "--space or --model"),
        (["--space", "no-such-space"], "unknown space 'no-such-space'"),
        (["--model", "gpt3-175b", "--tokens", "1B", "--baseline", "tp=8,pp=5"], "--baseline"),
        (["--model", "gpt3-175b", "--tokens", "1B", "--inner", "tp"], "not an inner dimension"),
        (
            ["--model", "gpt3-175b", "--gpu", "h100-sxm", "--tokens", "1B", "--nvlink-domain", "6"],
            "nvlink_domain: 6 is not a multiple of gpus_per_node (8)",
        ),
        (["--model", "gpt3-175b", "--nvlink-domain", "0"], "must be a positive whole number"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, needle):
    code = main(["search", *argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert out == ""


def test_malformed_space_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("space:\n  model: gpt3-175b\n  tp: [8, 5]\n")
    code = main(["search", "--space", str(bad)])
    _, err = capsys.readouterr()
    assert code == 2
    assert f"{bad}:3: space.tp: 5 must divide" in err


def test_impossible_budget(capsys, tmp_path):
    code = main([*SMALL, "--budget", "$100", "--out", str(tmp_path / "x")])
    _, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("vtrain_opt search: error: no feasible plan")
    m = re.search(
        r"budget \$100\.00 binds: the cheapest plan costs \$([\d.]+)k \(([\d.]+)x the limit\)",
        lines[-1],
    )
    assert m, lines[-1]
    assert (
        float(m[2]) > 10 and abs(float(m[1]) * 1e3 / 100 - float(m[2])) < 0.1
    )  # cost = ratio x limit
    assert "closest plans:" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing written for a failed search
    code, data, err = _json(capsys, [*SMALL, "--budget", "$100", "--max-days", "1", "--json"])
    assert code == 2 and data["ok"] is False and len(data["closest"]) > 0
    assert "budget" in data["error"]


def test_unreachable_ray_address(capsys):
    start = time.perf_counter()
    code = main([*SMALL, "--ray-address", "127.0.0.1:9", "--json"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "--ray-address '127.0.0.1:9': cannot reach the Ray cluster" in err
    assert time.perf_counter() - start < 30


def test_profile_of_a_device_outside_the_catalog(tmp_path, capsys):
    """--profile alone picks the profile's device, even one the GPU catalog lacks."""
    import json as _json

    from vtrain_opt.resources import data_dir

    data = _json.loads((data_dir("profiles") / "a100-80gb.json").read_text())
    data.update(name="mydev", gpu="mydev", kind="measured")
    data["device"] = {
        "peak_flop_per_s": {"bf16": 200e12, "fp16": 200e12},
        "hbm_bytes": 48e9,
        "hbm_bytes_per_s": 1.0e12,
        "nvlink_bytes_per_s": 100e9,
        "num_sms": 64,
        "devices_per_node": 4,
    }
    path = tmp_path / "mydev.json"
    path.write_text(_json.dumps(data))
    assert (
        main(
            [
                "search",
                "--model",
                "megatron-1.7b",
                "--profile",
                str(path),
                "--tokens",
                "1e9",
                "--max-gpus",
                "16",
                "--workers",
                "0",
                "--out",
                str(tmp_path / "run"),
                "--json",
            ]
        )
        == 0
    )
    out = _json.loads(capsys.readouterr().out)
    assert out["best_time"]["gpu"] == "mydev"
    assert out["best_time"]["num_gpus"] % 4 == 0  # whole 4-device nodes
