"""Published runs the profile was never fitted on: Megatron-LM's weak-scaling table.

Prints, for each run of Narayanan et al. (SC 2021, Table 1: GPT 1.7B-1T on 32-3,072
A100s), the published teraFLOP/s per GPU (recomputation counted), the prediction of the
shipped A100 profile at the fastest micro-batch that fits (the table does not give it),
their ratio, and the error over the table; then the same with the node-straggler term
off, with the gradient all-reduce overlapped, and with interleaved stages allowed as well,
to show what each assumption moves. ``benchmarks/report.py`` writes the Accuracy page
from the same functions.

Run: python benchmarks/bench_published.py [--profile a100-80gb]
"""

from __future__ import annotations

import argparse

import pandas as pd

from vtrain_opt.calibrate import mape_pct
from vtrain_opt.profiles import Profile, load_profile
from vtrain_opt.published import MEGATRON_2021, predict_published


def error(df: pd.DataFrame) -> str:
    """Mean error over the table and the range of predicted/published."""
    mape = mape_pct(df["predicted_tflops"].to_numpy(), df["tflops_per_gpu"].to_numpy())
    return f"MAPE {mape:.2f}%, ratios {df['ratio'].min():.3f}-{df['ratio'].max():.3f}"


MAX_VPP = 6
INTERLEAVED = f"interleaved stages (vpp up to {MAX_VPP}) and the all-reduce overlapped"


def variants(profile: Profile) -> dict[str, pd.DataFrame]:
    """The table predicted under other assumptions: label -> predict_published's frame."""
    return {
        "node_straggler = 0": predict_published(profile.with_params(node_straggler=0.0)),
        "gradient all-reduce overlapped": predict_published(profile, dp_overlap=True),
        INTERLEAVED: predict_published(profile, dp_overlap=True, max_vpp=MAX_VPP),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="a100-80gb")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    df = predict_published(profile)
    print(
        f"Megatron-LM weak scaling (Narayanan et al. 2021, Table 1), {len(MEGATRON_2021)} runs, "
        f"profile {profile.name}:"
    )
    print("  params   GPUs  tp  pp  published  predicted (mb)  predicted/published")
    for _, r in df.iterrows():
        print(
            f"  {r['params_billion']:6.1f}B {r['num_gpus']:5d} {r['tp']:3d} {r['pp']:3d} "
            f"{r['tflops_per_gpu']:8.0f}   {r['predicted_tflops']:8.1f} ({r['micro_batch']})"
            f"   {r['ratio']:.3f}"
        )
    print(f"  {error(df)}")
    for label, other in variants(profile).items():
        if label == INTERLEAVED:  # the pipelined runs, which it can change
            other = other[other["pp"] > 1]
            print(f"  with {label}: pipelined runs {error(other)}")
            continue
        print(f"  with {label}: {error(other)}")


if __name__ == "__main__":
    main()
