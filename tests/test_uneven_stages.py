"""Uneven pipeline stages (issue 15 item 1): plan rules, memory per stage, the command line."""

import numpy as np
import pytest

from vtrain_opt.cli import main
from vtrain_opt.sim.memory import in_flight, layer_activation_bytes, stage_params, state_bytes
from vtrain_opt.sim.step import make_context, simulate_arrays
from vtrain_opt.spec import ParallelPlan, PlanBatch, get_cluster, get_model
from vtrain_opt.spec.plan import REASONS
from vtrain_opt.spec.stages import accounted_split, chunk_layers, stage_layer_counts

L405 = get_model("llama3.1-405b")  # 126 layers
META = dict(tp=8, pp=16, dp=64, micro_batch=1, global_batch=2048, recompute="full", zero=1)


def test_stage_layer_counts_and_chunks():
    batch = PlanBatch(
        tp=8,
        pp=[16, 16, 16, 2, 16],
        dp=1,
        mb=1,
        gb=16,
        vpp=[1, 2, 1, 1, 1],
        first=[7, 7, 0, 60, 0],
        last=[7, 7, 14, 0, 0],
    )
    first, mid, last = stage_layer_counts(batch, 126)
    np.testing.assert_array_equal(first, [7, 7, 112 / 15, 60, 126 / 16])
    np.testing.assert_array_equal(mid, [8, 8, 112 / 15, 66, 126 / 16])
    np.testing.assert_array_equal(last, [7, 7, 14, 66, 126 / 16])
    chunks = chunk_layers(batch, 126)
    # vpp 2, 7 layers: chunks of 4, the first stage's chunk 0 (last stage's last) holds 3
    assert chunks["first0"][1] == 3 and chunks["first"][1] == 4
    assert chunks["last_end"][1] == 3 and chunks["last"][1] == 4 and chunks["middle"][1] == 4


@pytest.mark.parametrize(
    ("kwargs", "reason", "message"),
    [
        (
            dict(first_stage_layers=7, last_stage_layers=14),
            "stage layers do not add up",
            "first 7 + last 14 leaves 105 layers for the other 14 stages (7.5 each",
        ),
        (
            dict(pp=2, dp=512, first_stage_layers=60, last_stage_layers=70),
            "stage layers do not add up",
            "first 60 + last 70 = 130 (pp=2: no other stage)",
        ),
        (dict(pp=1, dp=1024, first_stage_layers=7), "stage layers need pp > 1", "pp > 1"),
        (dict(first_stage_layers=126), "stage layers out of range", "[1, 126)"),
        (
            dict(vpp=3, first_stage_layers=7, last_stage_layers=7),
            "vpp does not divide stage layers",
            "middle stages' layers (8)",
        ),
    ],
)
def test_rules_single_plan_and_batch(kwargs, reason, message):
    plan = ParallelPlan(**META | kwargs)
    with pytest.raises(ValueError, match="invalid plan") as err:
        plan.validate(L405)
    assert message in str(err.value)
    # inside a batch the plan is marked with the rule, never raised
    out = simulate_arrays(
        make_context(L405, get_cluster("h100-sxm")),
        PlanBatch.from_plans(
            [ParallelPlan(**META, first_stage_layers=7, last_stage_layers=7), plan]
        ),
    )
    assert REASONS[out["reason_code"][1]] == reason and not out["feasible"][1]
    assert out["feasible"][0]


def test_even_rule_unchanged_for_even_plans():
    # 126 layers over pp 16 evenly: still refused with the old rule
    with pytest.raises(ValueError, match=r"must divide the layers \(126\)"):
        ParallelPlan(**META).validate(L405)


def test_accounted_split():
    # 126 + embedding + loss = 128 over 8 stages: 16 each, the edges hold 15 layers
    assert accounted_split(126, 8, 1, embedding=True, loss=True) == (15, 15)
    assert accounted_split(127, 8, 2, embedding=True, loss=False) == (15, 0)
    with pytest.raises(ValueError, match="must split evenly"):
        accounted_split(126, 16, 1, embedding=True, loss=False)


def test_memory_follows_the_stage_layers():
    """Meta's plan: the second stage (8 layers, 15 micro-batches in flight) holds more
    activations than the first (7 layers, 16 in flight): it is the worst stage."""
    ctx = make_context(L405, get_cluster("h100-sxm"))
    setup = ctx.setup
    plan = ParallelPlan(**META, first_stage_layers=7, last_stage_layers=7)
    out = simulate_arrays(ctx, PlanBatch.from_plans([plan]))
    one = np.array([1])
    stored, transient = layer_activation_bytes(
        L405, setup, one, one * 8, np.array([False]), np.array([2])
    )
    m = np.array([2048 // 64])
    mid_act = in_flight(np.array([16]), one, m, one) * 8 * stored + transient
    assert in_flight(np.array([16]), one, m, one)[0] == 15
    params = stage_params(
        L405, one * 8, one * 16, (np.array([7.0]), np.array([8.0]), np.array([7.0]))
    )
    mid_states = state_bytes(params.middle, setup, one, one * 64)
    np.testing.assert_allclose(out["memory_activations_bytes"], mid_act, rtol=1e-12)
    np.testing.assert_allclose(out["memory_states_bytes"], mid_states, rtol=1e-12)
    assert mid_act[0] > (16 * 7 * stored + transient)[0]  # the first stage's activations


def test_target_plan_simulates(capsys):
    argv = [
        "simulate",
        "--model",
        "llama3.1-405b",
        "--gpu",
        "h100-sxm",
        "--num-gpus",
        "8192",
        "--tp",
        "8",
        "--pp",
        "16",
        "--first-stage-layers",
        "7",
        "--last-stage-layers",
        "7",
        "--global-batch",
        "2048",
        "--micro-batch",
        "1",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "iteration" in out


@pytest.mark.parametrize(
    "extra",
    [
        ["--first-stage-layers", "7", "--last-stage-layers", "14"],
        ["--account-for-embedding-in-pipeline-split"],
        ["--account-for-loss-in-pipeline-split", "--first-stage-layers", "7"],
    ],
)
def test_bad_splits_are_one_line_exit_2(capsys, extra):
    argv = [
        "simulate",
        "--model",
        "llama3.1-405b",
        "--gpu",
        "h100-sxm",
        "--tp",
        "8",
        "--pp",
        "16",
        "--dp",
        "64",
        "--global-batch",
        "2048",
        *extra,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err


def test_account_flags_simulate(capsys):
    argv = [
        "simulate",
        "--model",
        "llama3.1-405b",
        "--gpu",
        "h100-sxm",
        "--tp",
        "8",
        "--pp",
        "8",
        "--dp",
        "8",
        "--global-batch",
        "512",
        "--zero",
        "1",
        "--account-for-embedding-in-pipeline-split",
        "--account-for-loss-in-pipeline-split",
        "--json",
    ]
    assert main(argv) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    text = json.dumps(data)
    assert "15" in text


# ---- search ----------------------------------------------------------------------------------
def _space(**kw):
    from vtrain_opt.search import SearchSpace

    base = dict(
        min_gpus=8192,
        max_gpus=8192,
        global_batch=2048,
        tp=8,
        micro_batch=1,
        recompute="full",
        sequence_parallel=True,
        zero=1,
    )
    return SearchSpace.create(L405, ["h100-sxm"], **base | kw)


def test_space_auto_split_finds_meta_plan():
    s = _space(stage_layers="auto")
    assert 16 in s.pp and 1 in s.pp  # pp 16 only with an uneven split; pp 1 even
    b = s.plans(0)
    cols = zip(b.pp, b.vpp, b.first, b.last, strict=True)
    combos = {(int(p), int(v), int(f), int(x)) for p, v, f, x in cols}
    assert (16, 1, 7, 7) in combos and (16, 2, 7, 7) in combos and (1, 1, 0, 0) in combos
    assert (8, 1, 15, 15) in combos  # 15 + 6 x 16 + 15
    assert (b.check(L405) == 0).all()
    frame = b.to_frame()
    assert not frame.duplicated().any()  # no split tried twice
    assert s.to_dict()["stage_layers"] == "auto"
    assert "stage_layers" not in _space().to_dict()  # even spaces keep their fingerprint


def test_space_fixed_split_and_errors():
    s = _space(stage_layers=[7, 7])
    # the pipelines where 7 + 7 leaves whole middle stages: 112 / (pp - 2) layers each
    assert 16 in s.pp and s.pp == tuple(p for p in range(3, 115) if 112 % (p - 2) == 0)
    assert set(s.plans(0).first.tolist()) == {7}
    with pytest.raises(ValueError, match="stage_layers"):
        _space(stage_layers="uneven")
    with pytest.raises(ValueError, match=r"space\.pp: 5 allows no pipeline split"):
        _space(stage_layers="7,7", pp=[5, 16])


def test_space_file_stage_layers():
    from vtrain_opt.search.spacefile import SpaceFileError, parse_space

    text = """space:
  model: llama3.1-405b
  gpus: [h100-sxm]
  num_gpus: {min: 8192, max: 8192}
  global_batch: 2048
  tp: 8
  micro_batch: 1
  stage_layers: STAGES
"""
    assert parse_space(text.replace("STAGES", "auto"), "s.yaml").stage_layers == "auto"
    assert parse_space(text.replace("STAGES", "[7, 7]"), "s.yaml").stage_layers == "7,7"
    with pytest.raises(SpaceFileError) as e:
        parse_space(text.replace("STAGES", "sometimes"), "s.yaml")
    assert str(e.value).startswith("s.yaml:8: space.stage_layers:"), str(e.value)


def test_search_stage_layers_results_carry_the_split(capsys, tmp_path):
    import json

    argv = [
        "search", "--model", "llama3.1-405b", "--gpu", "h100-sxm", "--min-gpus", "8192",
        "--max-gpus", "8192", "--global-batch", "2048", "--tp", "8", "--micro-batch", "1",
        "--pp", "8,16", "--vpp", "1", "--recompute", "full", "--sequence-parallel", "on",
        "--zero", "1", "--stage-layers", "auto", "--tokens", "15T",
        "--strategy", "exhaustive", "--json", "--out", str(tmp_path / "r"),
    ]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    best = doc["best_time"]
    assert "first_stage_layers" in best and "last_stage_layers" in best
    assert (best["pp"], best["first_stage_layers"]) in ((8, 15), (16, 7))
    # Optuna samples the split too (a categorical parameter) and finds the same plan
    optuna = [*argv[:-5], "--strategy", "optuna", "--trials", "12", "--json"]
    assert main([*optuna, "--out", str(tmp_path / "o")]) == 0
    found = json.loads(capsys.readouterr().out)["best_time"]
    key = ("pp", "vpp", "first_stage_layers", "last_stage_layers", "training_time_s")
    assert [found[k] for k in key] == [best[k] for k in key]
