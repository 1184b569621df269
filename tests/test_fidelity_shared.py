"""Accuracy guards on the shared measurement data (skipped when ../shared is absent).

These are the calibration half, which the shipped A100 profile was fitted on, so the
figures here are training errors; cross-validated errors are measured by
``benchmarks/bench_fidelity.py``. The thresholds sit just above what the shipped profile
reaches (single-node 5.19%, multi-node 7.41%, NCCL 2.99%) so a regression shows; they are
also the issue's targets (6% and 8%).
"""

import json
from dataclasses import replace

import numpy as np
import pytest

from vtrain_opt.cli import main
from vtrain_opt.measurements import read_measurements
from vtrain_opt.nccl import error_table, read_sweeps
from vtrain_opt.predictor import Predictor, RunSetup
from vtrain_opt.profiles import load_profile
from vtrain_opt.spec.hardware import get_cluster
from vtrain_opt.validation import validate


@pytest.fixture(scope="module")
def report(shared_data):
    files = [
        shared_data / "measured" / "single_node.csv",
        shared_data / "measured" / "multi_node.csv",
    ]
    m = read_measurements(files)
    return validate(m, Predictor(m, RunSetup()), load_profile("a100-80gb"))


def test_shipped_profile_on_calibration_half(report):
    by_file = {
        f.rsplit("/", 1)[-1]: v for f, v in report.by_file().set_index("file")["mape_pct"].items()
    }
    assert by_file["single_node.csv"] < 6.0
    assert by_file["multi_node.csv"] < 8.0
    assert len(report.rows) == 776 and not report.skipped


def test_no_large_model_or_gpu_count_group_is_biased(report):
    # groups by model and GPU count stay within 15%; the known outliers are listed in the
    # README (tp=2 of the 39.1B model, micro-batch 64 on 64 GPUs)
    for key in ("model", "num_gpus", "pp"):
        agg = report.by_group(key)
        assert ((agg["mean_ratio"] - 1).abs() < 0.15).all(), agg
    # on one node no group is off by more than 10% (tp=8 was, at 0.89x, before the host
    # cost of the unfused softmax path was fitted)
    biased = report.biased_groups()
    assert not biased["file"].str.contains("single_node").any(), biased


def test_the_runs_their_neighbours_contradict(report):
    # the 39.1B runs at tp 2 / pp 16 / micro-batch 2 and 3 against the same runs at tp 4,
    # and the 3.6B run with one micro-batch of 64 against 16 micro-batches of 4
    out = report.contradictions()
    assert out["file"].str.endswith("multi_node.csv").all()
    assert set(out["row"]) == {10, 23, 27}
    assert (out["excess"] > 1.3).all()


def test_nccl_sweeps_per_size_band(shared_data):
    sweep = read_sweeps(shared_data / "nccl", "a100")
    table = error_table(sweep, load_profile("a100-80gb"), get_cluster("a100-80gb"))
    assert table["all"].mean() < 3.5
    bands = table.drop(columns=["gpus", "all"]).to_numpy()
    assert np.nanmax(bands) < 12.0  # every (group size, size band) cell


def test_v100_sweeps_follow_the_hybrid_cube_mesh(shared_data):
    # DGX-1V has no NVSwitch: rings of 2, 3, 4 and 8 GPUs get 1, 2, 4 and 6 of the 6 links
    sweep = read_sweeps(shared_data / "nccl", "v100")
    profile, cluster = load_profile("v100-32gb"), get_cluster("v100-32gb")
    table = error_table(sweep, profile, cluster).set_index("gpus")
    assert (table.loc[[2, 3, 4, 6, 7, 8], "all"] < 7.0).all(), table
    # five GPUs: NCCL relays GPU 4 through GPU 0 (measured 1.6 links' worth, modelled as 1)
    assert table.loc[5, "all"] < 60.0
    # the same fitted profile with every link behind a switch misses the small groups
    switched = error_table(sweep, profile, replace(cluster, nvlink_links=None)).set_index("gpus")
    assert switched.loc[2, "all"] > 50.0


def test_validate_command_json_and_plot(shared_data, tmp_path, capsys):
    plot = tmp_path / "scatter.png"
    assert (
        main(
            [
                "validate",
                "--measurements",
                str(shared_data / "measured" / "multi_node.csv"),
                "--json",
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert d["n_rows"] == 56 and d["mape_pct"] < 8.0 and d["max_ape_pct"] > d["mape_pct"]
    row = d["rows"][0]
    assert {"measured_s", "predicted_s", "ape_pct"} <= set(row)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("profile", ["h200", "h200-measured"])
def test_hopper_steps_with_the_torch_op_list(shared_data, profile):
    # the shared H200 steps (plain PyTorch, bf16 without master weights, no dropout): the
    # shipped profiles' one in-step parameter was fitted on them, so these are training
    # errors (cross-validated: benchmarks/bench_fidelity.py); the targets are 5% / 10%
    m = read_measurements([shared_data / "hopper" / "h200_gpt_single_gpu.csv"])
    setup = RunSetup(gpu="h200", dtype="bf16", attention="flash", framework="torch",
                     dropout=0.0, master_weights="none")  # fmt: skip
    report = validate(m, Predictor(m, setup), load_profile(profile))
    assert report.mape_pct < 5.0 and report.max_ape_pct < 10.0
    memory = report.peak_memory()
    assert memory is not None and memory["max_ape_pct"] < 10.0
