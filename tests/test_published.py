"""The shipped A100 profile against published runs it was never fitted on."""

import numpy as np

from vtrain_opt.profiles import load_profile
from vtrain_opt.published import MEGATRON_2021, predict_published


def test_megatron_weak_scaling_table_is_predicted_within_ten_percent():
    df = predict_published("a100-80gb")
    assert len(df) == len(MEGATRON_2021)
    assert df["micro_batch"].notna().all()  # every run has a micro-batch that fits
    ratio = df["ratio"].to_numpy()
    assert ((ratio > 0.9) & (ratio < 1.1)).all(), df[["params_billion", "ratio"]]
    assert np.mean(np.abs(ratio - 1)) < 0.05


def test_the_chosen_micro_batch_is_the_fastest_that_fits():
    df = predict_published("a100-80gb")
    for _, row in df.iterrows():
        by_mb = row["by_micro_batch"]
        assert row["micro_batch"] in by_mb
        assert row["predicted_tflops"] == max(by_mb.values())
        # only micro-batches that divide the batch per data-parallel rank are tried
        dp = row["num_gpus"] // (row["tp"] * row["pp"])
        assert all(row["global_batch"] % (dp * mb) == 0 for mb in by_mb)


def test_without_stragglers_every_multi_node_run_is_predicted_faster():
    # the node-straggler term is what brings thousands of GPUs down to the published pace
    profile = load_profile("a100-80gb")
    with_spread = predict_published(profile)
    without = predict_published(profile.with_params(node_straggler=0.0))
    assert (without["predicted_tflops"] > with_spread["predicted_tflops"]).all()
