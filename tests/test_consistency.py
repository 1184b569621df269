"""Measured runs their neighbours contradict: the bound between pairs of runs."""

import pandas as pd
import pytest

from vtrain_opt.consistency import contradictions, describe


def runs(*plans: tuple[int, int, int, int, float], heads: int = 16, pp: int = 1) -> pd.DataFrame:
    """Rows of one model on 64 GPUs, global batch 512; plans are (row, tp, dp, mb, seconds)."""
    return pd.DataFrame(
        [
            {
                "file": "m.csv",
                "hidden_size": 3072,
                "num_attention_heads": heads,
                "num_layers": 24,
                "seq_length": 2048,
                "num_gpus": 64,
                "pp": pp,
                "global_batch": 512,
                "row": row,
                "tp": tp,
                "dp": dp,
                "micro_batch": mb,
                "measured_s": t,
                "after_pipeline_s": 0.1,
            }
            for row, tp, dp, mb, t in plans
        ]
    )


def test_one_large_micro_batch_is_bounded_by_many_small_ones():
    # pp 1: 16 micro-batches of 4 bound 1 micro-batch of 64 (the same work, larger kernels)
    out = contradictions(runs((1, 8, 8, 4, 5.0), (2, 8, 8, 64, 9.0)))
    assert len(out) == 1
    r = out.iloc[0]
    assert (r["row"], r["row_other"]) == (2, 1)
    assert r["bound_s"] == pytest.approx(5.0 + 0.1)
    assert r["excess"] == pytest.approx(9.0 / 5.1)
    assert describe(r) == (
        "m.csv row 2 (tp 8, mb 64: 9.00 s) against row 1 (tp 8, mb 4: 5.00 s): "
        "1.76x its bound of 5.10 s"
    )
    # 1.18x over the bound is within what two 10% errors allow (1.1 / 0.9 = 1.22)
    assert contradictions(runs((1, 8, 8, 4, 5.0), (2, 8, 8, 64, 6.0))).empty


def test_the_pipeline_bound_scales_with_fill_and_work():
    # pp 4: tp 2 (32 micro-batches, each twice the work per GPU) against tp 4 (64)
    rows = runs((1, 2, 8, 2, 20.0), (2, 4, 4, 2, 10.0), pp=4)
    out = contradictions(rows, tolerance=0.0)
    assert out["row"].tolist() == [1]
    assert out.iloc[0]["bound_s"] == pytest.approx(2 * (32 + 3) / (64 + 3) * 10.0 + 0.1)
    assert contradictions(rows).iloc[0]["excess"] == pytest.approx(20.0 / (70 / 67 * 10 + 0.1))


def test_only_comparable_runs_are_paired():
    # less work per GPU (smaller micro-batch, more tp) never bounds more
    assert contradictions(runs((1, 8, 8, 2, 9.0), (2, 4, 16, 4, 1.0))).empty
    # other pipeline depths or files are not paired
    a, b = runs((1, 8, 8, 4, 5.0)), runs((2, 8, 8, 64, 9.0), pp=2)
    assert contradictions(pd.concat([a, b], ignore_index=True)).empty
    b = runs((2, 8, 8, 64, 9.0)).assign(file="other.csv")
    assert contradictions(pd.concat([a, b], ignore_index=True)).empty


def test_a_run_on_the_unfused_softmax_path_is_not_bounded_by_a_fused_one():
    # 12 heads: tp 2 at micro-batch 1 has 6 score matrices (unfused path), tp 3 has 4 (fused)
    rows = runs((1, 2, 32, 1, 9.0), (2, 3, 21, 1, 2.0), heads=12)
    assert contradictions(rows).empty
    # both fused (micro-batch 2 on tp 2: 12 matrices): the pair is compared
    rows.loc[0, "micro_batch"] = 2
    assert not contradictions(rows).empty
