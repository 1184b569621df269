"""Plan validation: every rule named in its error; batches mark invalid plans instead."""

import numpy as np
import pytest

from vtrain_opt.spec.model import get_model
from vtrain_opt.spec.plan import REASONS, ParallelPlan, PlanBatch

GPT3 = get_model("gpt3-175b")  # 96 layers, 96 heads
LLAMA = get_model("llama3-70b")  # 80 layers, 64 heads, 8 kv heads


@pytest.mark.parametrize(
    ("model", "plan", "message"),
    [
        (GPT3, dict(tp=5, global_batch=1536), "tp=5 must divide the attention heads"),
        (LLAMA, dict(tp=16, global_batch=512), "kv heads"),
        (GPT3, dict(pp=5, global_batch=1536), "must divide the layers"),
        (GPT3, dict(pp=8, vpp=5, global_batch=1536), "pp=8 x vpp=5"),
        (GPT3, dict(dp=7, micro_batch=2, global_batch=1536), "multiple of dp x micro_batch"),
        (GPT3, dict(vpp=2, global_batch=1536), "need pipeline parallelism"),
        (GPT3, dict(pp=8, vpp=2, dp=1, micro_batch=1, global_batch=12), "multiple of pp=8"),
        (GPT3, dict(sequence_parallel=True, global_batch=8), "needs tensor parallelism"),
        (GPT3, dict(pp=2, zero=2, global_batch=8), "ZeRO stage 2 cannot be combined"),
        (
            GPT3.with_seq_length(2050),
            dict(tp=4, sequence_parallel=True, global_batch=8),
            "sequence length",
        ),
    ],
)
def test_rule_violations_raise_with_the_rule(model, plan, message):
    with pytest.raises(ValueError, match=message):
        ParallelPlan(**plan).validate(model)


def test_valid_plan_passes():
    p = ParallelPlan(
        tp=8,
        pp=8,
        dp=24,
        micro_batch=2,
        global_batch=1536,
        vpp=3,
        sequence_parallel=True,
        zero=1,
        recompute="selective",
    )
    assert p.validate(GPT3) is p
    assert p.num_gpus == 1536 and p.num_microbatches == 32


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(tp=0),
        dict(pp=-1),
        dict(micro_batch=1.5),
        dict(recompute="some"),
        dict(zero=4),
        dict(global_batch=True),
    ],
)
def test_field_errors(kwargs):
    with pytest.raises(ValueError, match="plan"):
        ParallelPlan(**kwargs)


def test_from_mapping_aliases_and_gpu_count():
    p = ParallelPlan.from_mapping(
        {"tp": "8", "pp": 35, "dp": 12, "mb": 1, "gb": 1920, "sp": "true"}
    )
    assert (p.tp, p.pp, p.dp, p.micro_batch, p.global_batch, p.sequence_parallel) == (
        8,
        35,
        12,
        1,
        1920,
        True,
    )
    with pytest.raises(ValueError, match="num_gpus=100 must equal"):
        ParallelPlan.from_mapping({"tp": 8, "dp": 2, "num_gpus": 100})
    with pytest.raises(ValueError, match="unknown field 'tpp'"):
        ParallelPlan.from_mapping({"tpp": 8})


def test_batch_marks_invalid_plans_and_agrees_with_single_plans():
    rng = np.random.default_rng(0)
    n = 2000
    batch = PlanBatch(
        tp=rng.choice([1, 2, 3, 4, 8, 16], n),
        pp=rng.choice([1, 2, 5, 8, 12], n),
        dp=rng.choice([1, 2, 3, 4], n),
        mb=rng.choice([1, 2, 4], n),
        gb=rng.choice([12, 16, 1536], n),
        vpp=rng.choice([1, 2, 4], n),
        zero=rng.choice([0, 1, 2, 3], n),
        sp=rng.random(n) < 0.3,
        recompute=rng.integers(0, 3, n),
    )
    codes = batch.check(GPT3)
    assert 0 < (codes == 0).sum() < n  # a mix, and no exception
    for i in range(0, n, 37):
        plan = batch.plan(i)
        if codes[i] == 0:
            plan.validate(GPT3)
        else:
            with pytest.raises(ValueError):
                plan.validate(GPT3)
            assert REASONS[codes[i]]


def test_batch_broadcasts_and_round_trips_frames():
    b = PlanBatch(tp=[1, 2, 4], pp=1, dp=2, mb=1, gb=8, recompute="full")
    assert len(b) == 3 and b.pp.tolist() == [1, 1, 1]
    df = b.to_frame()
    assert list(df["recompute"]) == ["full"] * 3
    b2 = PlanBatch.from_frame(
        df.rename(columns={"micro_batch": "mb", "global_batch": "gb", "sequence_parallel": "sp"})
    )
    assert b2.tp.tolist() == [1, 2, 4] and b2.recompute.tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="length"):
        PlanBatch(tp=[1, 2], pp=[1, 2, 3], dp=1, mb=1, gb=1)
    with pytest.raises(ValueError, match="recompute"):
        PlanBatch(tp=1, pp=1, dp=1, mb=1, gb=1, recompute="lots")
