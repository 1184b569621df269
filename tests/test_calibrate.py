"""Calibration on synthetic data with known parameters: the fit recovers them."""

import json

import numpy as np
import pandas as pd
import pytest

from vtrain_opt.calibrate import Predictor, RunSetup, cross_validate, derive, fit, folds
from vtrain_opt.cli import main
from vtrain_opt.measurements import COLUMNS, MeasurementSet
from vtrain_opt.profiles import Profile, load_profile

TRUTH = {
    "gemm_efficiency": 0.74,
    "memory_efficiency": 0.66,
    "host_layer_s": 0.9e-3,
    "microbatch_overhead_s": 1.5e-3,
    "network_efficiency": 0.72,
    "node_straggler": 0.03,
    "unfused_softmax_host_ops": 9.0,
}


def synthetic_rows() -> pd.DataFrame:
    """Plans of two small GPT shapes on one node and a 350M model on 4 nodes."""
    rows = []
    for h, layers in ((1024, 12), (2048, 16)):
        for tp, pp, dp in ((1, 1, 8), (2, 2, 2), (4, 1, 2), (8, 1, 1), (1, 4, 2), (2, 1, 4)):
            for mb in (1, 2, 8):
                for m in (2, 8):
                    rows.append((tp * pp * dp, m * dp * mb, mb, h, 16, layers, 1024, tp, dp, pp))
    for tp, pp, dp in ((1, 1, 32), (8, 1, 4), (2, 2, 8), (8, 4, 1)):
        rows.append((tp * pp * dp, 256, 2, 1024, 16, 24, 2048, tp, dp, pp))
    df = pd.DataFrame(rows, columns=[v for v in COLUMNS.values() if v != "iteration_time_ms"])
    df["iteration_time_ms"] = 1.0
    df["file"] = np.where(df["num_gpus"] > 8, "multi.csv", "single.csv")
    df["row"] = np.arange(1, len(df) + 1)
    return df


@pytest.fixture(scope="module")
def synthetic():
    setup = RunSetup()
    base = load_profile("a100-80gb")
    truth = base.with_params(**TRUTH)
    rows = synthetic_rows()
    probe = Predictor(MeasurementSet(rows), setup)
    rows["iteration_time_ms"] = probe.predict(truth) * 1e3
    return Predictor(MeasurementSet(rows), setup), base, truth


def test_fit_recovers_known_parameters(synthetic):
    predictor, base, _ = synthetic
    start = base.with_params(
        gemm_efficiency=0.9,
        memory_efficiency=0.9,
        host_layer_s=0.3e-3,
        microbatch_overhead_s=0.2e-3,
        network_efficiency=0.9,
        node_straggler=0.0,
        unfused_softmax_host_ops=4.0,
    )
    result = fit(predictor, start, list(TRUTH))
    for name, value in TRUTH.items():
        assert result.params[name] == pytest.approx(value, rel=0.03), name
    assert result.train_mape_pct < 0.5


def test_cross_validation_holds_rows_out(synthetic):
    predictor, _, truth = synthetic
    parts = folds(predictor, 3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(predictor.measured_s)))
    assert all(len(p) > 10 for p in parts)
    start = truth.with_params(gemm_efficiency=0.9, host_layer_s=0.3e-3)
    cv = cross_validate(predictor, start, k=3, params=["gemm_efficiency", "host_layer_s"])
    assert np.isfinite(cv.predicted_s).all() and len(cv.fold_params) == 3
    # the model is exact up to the two free parameters: each fold recovers them, so the
    # held-out rows are predicted almost perfectly
    assert cv.mape_pct < 0.5
    for p in cv.fold_params:
        assert p["gemm_efficiency"] == pytest.approx(TRUTH["gemm_efficiency"], rel=0.02)


def test_calibrate_command_writes_a_profile_with_its_record(synthetic, tmp_path, capsys):
    predictor, _, _ = synthetic
    rows = predictor.measurements.rows
    csv = tmp_path / "single.csv"
    rows[rows["file"] == "single.csv"].rename(columns={v: k for k, v in COLUMNS.items()})[
        list(COLUMNS)
    ].to_csv(csv, index=False)
    out = tmp_path / "prof.json"
    assert (
        main(
            [
                "calibrate",
                "--measurements",
                str(csv),
                "--out",
                str(out),
                "--folds",
                "2",
                "--derive",
                "h100-sxm",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert set(report["train_mape_pct"]) == {str(csv)} and report["cv_mape_pct"][str(csv)] < 5
    data = json.loads(out.read_text())
    profile = Profile.from_json_dict(data)
    assert (
        profile.kind == "calibrated"
        and profile.fit["data"][0]["rows"] == (rows["file"] == "single.csv").sum()
    )
    assert len(profile.fit["data"][0]["sha256"]) == 64 and profile.fit["cv"]["folds"] == 2
    derived = Profile.from_json_dict(json.loads((tmp_path / "h100-sxm.json").read_text()))
    assert derived.kind == "derived" and derived.gpu == "h100-sxm"
    assert derived.params == profile.params and "derived" in derived.provenance["method"]
    # the written profile is usable by simulate
    assert (
        main(
            [
                "simulate",
                "--model",
                "gpt3-175b",
                "--profile",
                str(out),
                "--num-gpus",
                "512",
                "--tp",
                "8",
                "--pp",
                "8",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["gpu"] == "a100-80gb"


def test_calibrate_refuses_unwritable_output_before_fitting(tmp_path, capsys):
    assert (
        main(
            [
                "calibrate",
                "--measurements",
                str(tmp_path / "x.csv"),
                "--out",
                str(tmp_path / "no" / "such" / "dir.json"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_derive_keeps_efficiencies():
    a100 = load_profile("a100-80gb")
    h100 = derive(a100, "h100-sxm")
    assert h100.params == a100.params and h100.kind == "derived" and not h100.fit


def write_sweeps(folder, profile: Profile, cluster) -> None:
    """nccl-tests style v100 sweeps, 2-8 GPUs, generated by the model from ``profile``."""
    from vtrain_opt.nccl import Sweep, predict

    sizes = np.arange(1, 65, 3, dtype=float) * (1 << 20)
    for n in range(2, 9):
        t_s = predict(Sweep("v100", np.full(len(sizes), n), sizes, sizes), profile, cluster)
        ns = t_s * 1e9
        pd.DataFrame(
            {
                "size(B)": sizes.astype(int),
                "count": (sizes // 4).astype(int),
                "type": "float",
                "time(ns)": ns,
                "busbw(GB/s)": 0.0,
                "time(ns).1": ns,
                "busbw(GB/s).1": 0.0,
            }
        ).to_csv(folder / f"v100_allreduce_{n}gpu.csv", index=False)


def test_calibrate_with_sweeps_alone_fits_only_the_collective_model(tmp_path, capsys):
    from vtrain_opt.spec.hardware import get_cluster

    base = load_profile("v100-32gb")
    truth = base.with_params(
        nvlink_efficiency=0.8, collective_latency_s=25e-6, collective_hbm_passes=2.0
    )
    write_sweeps(tmp_path, truth, get_cluster("v100-32gb"))
    out = tmp_path / "v100.json"
    args = ["calibrate", "--gpu", "v100-32gb", "--nccl", str(tmp_path), "--out", str(out)]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["profile"] == str(out) and len(report["nccl"]["files"]) == 7
    profile = Profile.from_json_dict(json.loads(out.read_text()))
    for name in ("nvlink_efficiency", "collective_latency_s", "collective_hbm_passes"):
        assert profile.params[name] == pytest.approx(truth.params[name], rel=1e-3)
        assert "nccl-tests" in profile.sources[name]
    untouched = set(base.params) - set(report["nccl"]["fitted"])
    assert all(profile.params[k] == base.params[k] for k in untouched)
    assert max(r["all"] for r in report["nccl"]["mape_pct_by_group_and_size"]) < 0.1
    # neither data source, or --derive without iteration data: one line, exit status 2
    assert main(["calibrate", "--gpu", "v100-32gb", "--out", str(out)]) == 2
    assert "needs --measurements" in capsys.readouterr().err
    assert main([*args, "--derive", "h100-sxm"]) == 2
    assert "--derive needs --measurements" in capsys.readouterr().err


def test_carry_from_a_same_gpu_measured_profile_recomputes_the_gemm_scale():
    """--carry of a profile the profiler measured on this GPU: step_gemm_scale is its
    in-step GEMM kernel times over this profile's own GEMM model (the shipped h100-sxm is
    what the documented command writes); from another GPU the values are copied."""
    from vtrain_opt.commands.calibrate import carry_step_params
    from vtrain_opt.profiler.instep import predicted_gemm_s

    torch_setup = {
        "dtype": "bf16",
        "attention": "flash",
        "framework": "torch",
        "dropout": 0.0,
        "master_weights": "none",
    }
    measured = load_profile("h100-sxm-measured")
    curves = load_profile("h100-sxm")
    setup = RunSetup(gpu="h100-sxm", **torch_setup)
    carried = carry_step_params(curves.with_params(step_gemm_scale=1.0), measured, setup)
    shapes = measured.provenance["in_step_gemm"]["shapes"]
    predicted = sum(
        predicted_gemm_s(
            curves,
            setup.cluster(),
            "bf16",
            "torch",
            (s["hidden"], s["heads"], s["seq"], s["micro_batch"]),
        )[0]
        for s in shapes
    )
    want = sum(s["gemm_s"] for s in shapes) / predicted
    assert carried.step_gemm_scale == pytest.approx(want, rel=1e-9)
    assert carried.step_gemm_scale == pytest.approx(curves.step_gemm_scale, rel=1e-9)
    assert abs(carried.step_gemm_scale - measured.step_gemm_scale) > 0.005
    assert carried.torch_host_layer_s == measured.torch_host_layer_s
    assert carried.sources["step_gemm_scale"].startswith("in-step GEMM times of h100-sxm-measured")
    other = carry_step_params(load_profile("b200"), measured, RunSetup(gpu="b200", **torch_setup))
    assert other.step_gemm_scale == measured.step_gemm_scale
    assert "carried from" in other.sources["step_gemm_scale"]
