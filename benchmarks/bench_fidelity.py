"""Fidelity (issue 3): cross-validated MAPE on the measured runs and the NCCL sweeps.

Prints, for the calibration half in ../shared/data (absent: says so and exits):
  * k-fold cross-validated MAPE of the iteration-time model, per file (each row is
    predicted by a fit that never saw it), and the training MAPE;
  * groups (GPU count, tp, pp, micro-batch, model) whose cross-validated predictions are
    off by more than 10% on average;
  * measured runs their neighbours contradict (``vtrain_opt.consistency``), and the CV
    MAPE without them;
  * the intra-node all-reduce model against the nccl-tests sweeps, per group size and
    message-size band (fitted on the sweeps, as the shipped profile is);
  * the fitted profile against Megatron-LM's published weak-scaling runs (never fitted);
  * the shared H200 steps (plain PyTorch): the op list of ``--framework torch`` with the
    shipped ``h200`` profile (curves fitted to the measured H200 tables) and with the
    measured ``h200-measured`` profile; each with its one in-step parameter refitted
    k-fold (cross-validated) and as shipped (training), and peak memory;
  * the same configurations timed on an H100 and an H200 by this project (held out from
    every fit: the H100 profiles' in-step parameters come from the profiler), with the
    shipped profiles of each GPU and, on the H200, the profile the profiler alone measured
    in that session (not shipped).

The computations are functions, so ``benchmarks/report.py`` writes the Accuracy page from
the same figures.

Run: python benchmarks/bench_fidelity.py [--folds 5] [--seed 0] [--hopper-only]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.calibrate import Calibration, Predictor, RunSetup, calibrate, mape_pct
from vtrain_opt.consistency import describe
from vtrain_opt.measurements import read_measurements
from vtrain_opt.nccl import error_table, read_sweeps
from vtrain_opt.profiles import load_profile
from vtrain_opt.published import predict_published
from vtrain_opt.spec.hardware import get_cluster
from vtrain_opt.validation import ValidationReport, validate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
A100_FILES = (SHARED / "measured" / "single_node.csv", SHARED / "measured" / "multi_node.csv")
H200_STEPS = SHARED / "hopper" / "h200_gpt_single_gpu.csv"
# the H200 steps: a plain PyTorch GPT, bf16, flash attention, no dropout, AdamW on bf16
HOPPER_SETUP = RunSetup(gpu="h200", dtype="bf16", attention="flash", framework="torch",
                        dropout=0.0, master_weights="none")  # fmt: skip
HOPPER_PROFILES = ("h200", "h200-measured")
# The same ten configurations timed by this project (benchmarks/gpu_session.sh; provenance
# in benchmarks/data/hopper/README.md) on an H100 and on an H200: no profile was fitted
# on them. Per file: the GPU and the profiles to check (a path: a profile not shipped).
OWN_DATA = Path(__file__).resolve().parent / "data" / "hopper"
OWN_STEPS = {
    "h100_gpt_single_gpu.csv": ("h100-sxm", ("h100-sxm", "h100-sxm-measured")),
    "h200_gpt_single_gpu.csv": (
        "h200",
        ("h200", "h200-measured", str(OWN_DATA / "h200-session" / "h200-profiler.json")),
    ),
}
GROUP_KEYS = ("num_gpus", "tp", "pp", "micro_batch", "model")


# ---- vTrain's A100 set -----------------------------------------------------------------
def a100_calibration(folds: int = 5, seed: int = 0) -> Calibration:
    """The shipped A100 profile's calibration: NCCL sweeps, the fit, k-fold CV."""
    return calibrate(list(A100_FILES), RunSetup(), nccl_dir=SHARED / "nccl", folds=folds, seed=seed)


def cv_rows(cal: Calibration) -> pd.DataFrame:
    """The measured rows with their cross-validated predictions: ``predicted_s``,
    ``measured_s``, ``ratio`` (predicted / measured), ``ape_pct`` and a ``model`` key."""
    assert cal.cv is not None
    m = cal.predictor.measurements
    rows = m.rows.assign(predicted_s=cal.cv.predicted_s, measured_s=m.measured_s)
    rows["ratio"] = rows["predicted_s"] / rows["measured_s"]
    rows["model"] = "h" + rows["hidden_size"].astype(str) + "-l" + rows["num_layers"].astype(str)
    rows["ape_pct"] = np.abs(rows["ratio"] - 1) * 100
    return rows


def biased_groups(rows: pd.DataFrame, threshold: float = 0.10) -> pd.DataFrame:
    """Per file and group key, the groups whose mean ratio is off by more than ``threshold``:
    columns file, key, value, mean, size."""
    frames = []
    for key in GROUP_KEYS:
        agg = rows.groupby(["file", key])["ratio"].agg(["mean", "size"]).reset_index()
        agg = agg[(agg["mean"] - 1).abs() > threshold]
        frames.append(agg.rename(columns={key: "value"}).assign(key=key))
    return pd.concat(frames, ignore_index=True)[["file", "key", "value", "mean", "size"]]


def error_shares(rows: pd.DataFrame) -> pd.DataFrame:
    """(tp, hidden size, micro-batch) combinations by their share of the file's CV MAPE.

    A small spread of predicted/measured inside a combination means the error is one
    systematic offset per combination (kernel-level), not row noise."""
    return ValidationReport(rows, []).cross_groups(["tp", "hidden_size", "micro_batch"])


def contradicted(cal: Calibration) -> pd.DataFrame:
    """Runs a neighbouring run contradicts (``vtrain_opt/consistency.py``): error that no
    model taking at most c times as long for c times the work can remove."""
    return validate(cal.predictor.measurements, cal.predictor, cal.profile).contradictions()


def without(rows: pd.DataFrame, contra: pd.DataFrame) -> pd.DataFrame:
    """The rows that are not contradicted."""
    keep = ~rows.set_index(["file", "row"]).index.isin(contra.set_index(["file", "row"]).index)
    return rows[keep]


def cv_summary(folds: int, seed: int) -> dict[str, Any]:
    """One fold seed's figures as plain numbers, per file name: CV MAPE, and without the
    contradicted runs (a worker process of ``report.py`` returns it)."""
    cal = a100_calibration(folds, seed)
    rows = cv_rows(cal)
    kept = without(rows, contradicted(cal))
    return {
        "cv": {Path(f).name: v for f, v in cal.record["cv"]["mape_pct"].items()},
        "without": {Path(f).name: float(g["ape_pct"].mean()) for f, g in kept.groupby("file")},
    }


# ---- the NCCL sweeps and the published runs ----------------------------------------------
def nccl_a100(profile: Any) -> pd.DataFrame:
    """MAPE % of the intra-node all-reduce model per group size and message-size band."""
    return error_table(read_sweeps(SHARED / "nccl", "a100"), profile, get_cluster("a100-80gb"))


def nccl_v100() -> pd.DataFrame:
    """The same for the shipped V100 profile on the DGX-1 (hybrid cube-mesh) sweeps."""
    v100 = read_sweeps(SHARED / "nccl", "v100")
    return error_table(v100, load_profile("v100-32gb"), get_cluster("v100-32gb"))


# ---- Hopper ------------------------------------------------------------------------------
def hopper_results(folds: int = 5, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per shipped Hopper profile: its one in-step parameter refitted k-fold (``cv``, the
    CV ``ratio`` per row) and the profile as shipped (``shipped``, a ValidationReport)."""
    out = {}
    for name in HOPPER_PROFILES:
        profile = load_profile(name)
        cal = calibrate([H200_STEPS], HOPPER_SETUP, base=profile, folds=folds, seed=seed)
        assert cal.cv is not None
        out[name] = {
            "cv": cal.cv,
            "ratio": cal.cv.predicted_s / cal.predictor.measured_s,
            "shipped": validate(cal.predictor.measurements, cal.predictor, profile),
            "measurements": cal.predictor.measurements,
        }
    return out


def own_results() -> dict[str, dict[str, ValidationReport]]:
    """Per file of this project's steps, per profile: the profile as shipped (never
    fitted on these rows)."""
    out = {}
    for file, (gpu, profiles) in OWN_STEPS.items():
        measurements = read_measurements([OWN_DATA / file])
        predictor = Predictor(measurements, replace(HOPPER_SETUP, gpu=gpu))
        out[file] = {
            Path(p).stem: validate(measurements, predictor, load_profile(p)) for p in profiles
        }
    return out


def megatron_list_on_h200(measurements: Any) -> ValidationReport:
    """The H200 steps predicted with the Megatron op list (the default flags) and the
    measured profile: what the prediction was before the torch op list."""
    before = RunSetup(gpu="h200", dtype="bf16", attention="flash")
    return validate(measurements, Predictor(measurements, before), load_profile("h200-measured"))


# ---- the printout ------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hopper-only", action="store_true", help="only the H200 steps")
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"no shared data at {SHARED}; nothing to measure")
        sys.exit(0)
    if args.hopper_only:
        hopper(args.folds, args.seed)
        return
    t0 = time.perf_counter()
    cal = a100_calibration(args.folds, args.seed)
    elapsed = time.perf_counter() - t0
    rec = cal.record
    print(
        f"iteration-time model, {args.folds}-fold cross-validation (seed {args.seed}), "
        f"{len(cal.predictor.measured_s)} rows, {elapsed:.0f} s:"
    )
    for f in sorted(rec["train_mape_pct"]):
        print(
            f"  {Path(f).name:16s} CV MAPE {rec['cv']['mape_pct'][f]:5.2f}%   "
            f"training MAPE {rec['train_mape_pct'][f]:5.2f}%"
        )
    rows = cv_rows(cal)
    print("  cross-validated groups off by more than 10% on average:")
    for _, r in biased_groups(rows).iterrows():
        print(
            f"    {Path(r['file']).name}: {r['key']}={r['value']}: {r['mean']:.2f}x (n={r['size']})"
        )
    if biased_groups(rows).empty:
        print("    none")
    ape = rows["ape_pct"]
    print(f"  max CV error {ape.max():.1f}%; rows over 20%: {(ape > 20).sum()}")
    print("  largest shares of CV MAPE by (tp, hidden size, micro-batch):")
    for file, g in error_shares(rows).groupby("file"):
        items = [
            f"tp{r['tp']}/h{r['hidden_size']}/mb{r['micro_batch']}: {r['share_pct']:.2f} pts "
            f"({r['mean_ratio']:.2f}x, n={r['rows']}"
            + (f", spread {r['ratio_std']:.3f})" if r["rows"] > 1 else ")")
            for _, r in g.head(5).iterrows()
        ]
        print(f"    {Path(file).name}: " + "; ".join(items))
    contra = contradicted(cal)
    print("  measured runs their neighbours contradict:")
    for _, r in contra.iterrows():
        print(f"    {describe(r)}")
    if contra.empty:
        print("    none")
    else:
        for f, g in without(rows, contra).groupby("file"):
            print(
                f"  {Path(f).name} without them: CV MAPE {g['ape_pct'].mean():.2f}% ({len(g)} rows)"
            )

    table = nccl_a100(cal.profile)
    print("NCCL all-reduce (A100, 2-8 GPUs, 1 MiB-1 GiB), MAPE % by size band:")
    print(table.round(1).to_string(index=False))
    print(f"  mean over group sizes: {table['all'].mean():.2f}%")
    # Runs the fit never saw: Megatron-LM's published weak-scaling table (bench_published.py)
    pub = predict_published(cal.profile)
    pub_mape = mape_pct(pub["predicted_tflops"].to_numpy(), pub["tflops_per_gpu"].to_numpy())
    print(
        f"published runs (Megatron-LM weak scaling, {len(pub)} runs, 32-3,072 GPUs), this fit: "
        f"MAPE {pub_mape:.2f}%, predicted/published {pub['ratio'].min():.3f}-"
        f"{pub['ratio'].max():.3f}"
    )
    vt = nccl_v100()
    print(
        "V100 (DGX-1 hybrid cube-mesh; the shipped profile's collective model, fitted on these "
        "sweeps): MAPE by group size "
        + ", ".join(f"{int(g)}: {a:.0f}%" for g, a in zip(vt["gpus"], vt["all"], strict=True))
    )
    hopper(args.folds, args.seed)


def hopper(folds: int, seed: int) -> None:
    """The shared H200 steps with the torch op list, per shipped Hopper profile."""
    print(f"H200 steps ({H200_STEPS.name}), --framework torch --dropout 0 --master-weights none:")
    results = hopper_results(folds, seed)
    for name, res in results.items():
        shipped, ratio = res["shipped"], res["ratio"]
        memory = shipped.peak_memory() or {}
        print(
            f"  {name:14s} {folds}-fold CV MAPE {res['cv'].mape_pct:4.2f}% (max "
            f"{np.abs(ratio - 1).max() * 100:.1f}%, predicted/measured {ratio.min():.3f}-"
            f"{ratio.max():.3f}); shipped: MAPE {shipped.mape_pct:.2f}%, max "
            f"{shipped.max_ape_pct:.1f}%; peak memory MAPE {memory.get('mape_pct', np.nan):.1f}%, "
            f"max {memory.get('max_ape_pct', np.nan):.1f}%"
        )
    old = megatron_list_on_h200(results[HOPPER_PROFILES[-1]]["measurements"])
    print(
        f"  for comparison, the Megatron op list (default flags) with h200-measured: MAPE "
        f"{old.mape_pct:.1f}%, max {old.max_ape_pct:.1f}%"
    )
    for file, reports in own_results().items():
        print(f"{file} (this project's GPU session; never fitted), same flags:")
        for name, report in reports.items():
            memory = report.peak_memory() or {}
            print(
                f"  {name:18s} MAPE {report.mape_pct:.2f}%, max {report.max_ape_pct:.1f}%; peak "
                f"memory MAPE {memory.get('mape_pct', np.nan):.1f}%, max "
                f"{memory.get('max_ape_pct', np.nan):.1f}%"
            )


if __name__ == "__main__":
    main()
