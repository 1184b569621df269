"""Issue 15 item 6: the search over the dense dimensions of today's plans: the compute dtype
(bf16 against fp8, per plan), the pipeline split (stage_layers auto) under Optuna as well as
exhaustively, and the errors of such spaces."""

from __future__ import annotations

import json

import pytest

from vtrain_opt import get_model
from vtrain_opt.cli import main
from vtrain_opt.search import SearchSpace, search
from vtrain_opt.search.spacefile import SpaceFileError, parse_space
from vtrain_opt.search.trial_space import ParamSpace

PLAN = ("gpu", "dtype", "num_gpus", "tp", "pp", "dp", "micro_batch", "recompute", "vpp")
SPLIT = ("first_stage_layers", "last_stage_layers")


def _small(**kw):  # type: ignore[no-untyped-def]
    """Llama 3 405B on 1,024-2,048 GPUs: pp 8, 9 and 16, splits and dtypes free (240 plans)."""
    args = dict(
        min_gpus=1024, max_gpus=2048, global_batch=1024, tp=8, pp=[8, 9, 16],
        micro_batch=1, zero=1, recompute=["none", "full"], stage_layers="auto",
        dtypes=["bf16", "fp8"],
    )  # fmt: skip
    args.update(kw)
    return SearchSpace.create(get_model("llama3-405b"), ["a100-80gb", "h100-sxm"], **args)


def test_dtype_dimension_compares_per_plan_and_skips_gpus_without_fp8():
    space = _small()
    assert "dtype" in space.free_dimensions()
    assert [(t.gpu_index, t.dtype, t.ok) for t in space.targets] == [
        (0, "bf16", True), (0, "fp8", False), (1, "bf16", True), (1, "fp8", True),
    ]  # fmt: skip
    both = search(space, 1e12, strategy="exhaustive")
    # the A100's fp8 plans are counted with their reason, never simulated
    per_gpu = space.size // 4
    assert both.reason_counts["dtype not on this GPU"] == per_gpu
    assert set(both.plans["dtype"].astype(str)) == {"bf16", "fp8"}
    # the best over the dimension is the best of the two single-dtype searches
    singles = [
        search(space.with_changes(dtypes=[d]), 1e12, strategy="exhaustive") for d in ("bf16", "fp8")
    ]
    times = [float(r.best_time["training_time_s"]) for r in singles]
    assert float(both.best_time["training_time_s"]) == min(times)
    assert str(both.best_time["dtype"]) == "fp8" and times[1] < times[0]
    # the terminal's and the report's options say fp8 (bf16 is the plain plan's)
    from vtrain_opt.search.reporting.plans import plan_options as report_options
    from vtrain_opt.search.summary import plan_options

    assert plan_options(both.best_time).endswith(" fp8")
    assert report_options(both.best_time.to_dict()).endswith(" fp8")
    assert "fp8" not in plan_options(singles[0].best_time)
    # a single fp8 on a mixed space: the A100 plans rejected, the search goes on
    fp8 = singles[1]
    assert fp8.reason_counts["dtype not on this GPU"] == 2 * per_gpu // 2
    assert set(fp8.plans["gpu"].astype(str)) == {"h100-sxm"}


def test_optuna_samples_the_split_and_the_dtype_and_agrees_with_exhaustive():
    space = _small()
    exact = search(space, 1e12, strategy="exhaustive", objective="time")
    found = search(space, 1e12, strategy="optuna", objective="time", trials=200, seed=0)
    best, got = exact.best_time, found.best_time
    assert [got[k] for k in (*PLAN, *SPLIT)] == [best[k] for k in (*PLAN, *SPLIT)]
    assert (int(best["pp"]), int(best["first_stage_layers"])) == (16, 7)  # Meta's 7 + 14x8 + 7
    # the parameters a trial samples, and what an A100 under fp8 resolves to (outside)
    params = ParamSpace(space)
    key = params.resolve({"gpu": "a100-80gb", "dtype": "fp8", "pp_index": 2})
    assert key is None
    key = params.resolve(
        {"gpu": "h100-sxm", "dtype": "fp8", "stage_split": "edges-1", "pp_index": 2}
    )
    assert key is not None and key[0] == 3 and key[3] == 16 and key[11:13] == (7, 7)
    # resolved once per distinct parameter set (samplers repeat them), whatever their order
    seen = len(params._resolved)
    again = {"pp_index": 2, "stage_split": "edges-1", "dtype": "fp8", "gpu": "h100-sxm"}
    assert params.resolve(again) == key and len(params._resolved) == seen
    # a split not whole for pp 9 (119 / 9 layers) falls back to one that is: even, 14 each
    key = params.resolve({"gpu": "h100-sxm", "stage_split": "edges-1", "pp_index": 1})
    assert key is not None and key[3] == 9 and key[11:13] == (0, 0)


def test_optuna_samples_cp_as_a_categorical():
    # 131,072 tokens on 16,384 H100s (Meta's long-context stage): cp 4, 8 or 16
    model = get_model("llama3-405b").with_seq_length(131072)
    space = SearchSpace.create(
        model, ["h100-sxm"], min_gpus=8192, max_gpus=16384, global_batch=128, tp=8,
        cp=[1, 2, 4, 8, 16], pp=16, stage_layers="7,7", micro_batch=1, recompute="full",
        sequence_parallel=True, zero=1, dtypes=["bf16", "fp8"],
    )  # fmt: skip
    exact = search(space, 1e12, strategy="exhaustive", objective="time")
    found = search(space, 1e12, strategy="optuna", objective="time", trials=80, seed=1)
    key = (*PLAN, "cp", *SPLIT, "training_time_s")
    assert [found.best_time[k] for k in key] == [exact.best_time[k] for k in key]
    assert int(exact.best_time["cp"]) > 1
    params = ParamSpace(space)
    got = params.resolve({"cp": 16, "gpus_log2": 14.0, "dtype": "fp8"})
    assert got is not None and got[13] == 16 and got[4] == 16384 // (8 * 16 * 16)


def test_fp8_space_errors_are_one_line():
    model = get_model("gpt3-175b")
    with pytest.raises(ValueError, match=r"^space.dtype: a100-80gb has no fp8 peak"):
        SearchSpace.create(model, ["a100-80gb"], max_gpus=64, dtypes=["bf16", "fp8"])
    with pytest.raises(ValueError, match=r"no GPU of the space \(a100-80gb, v100-32gb\) has fp8"):
        SearchSpace.create(model, ["a100-80gb", "v100-32gb"], max_gpus=64, dtypes="fp8")
    text = (
        "space:\n  model: gpt3-175b\n  gpus: [a100-80gb]\n  num_gpus: {max: 64}\n"
        "  dtype: [bf16, fp8]\n"
    )
    with pytest.raises(SpaceFileError) as e:
        parse_space(text, "s.yaml")
    assert str(e.value).startswith("s.yaml:5: space.dtype: a100-80gb has no fp8"), str(e.value)
    ok = parse_space(text.replace("a100-80gb", "h100-sxm"), "s.yaml")
    assert ok.dtypes == ("bf16", "fp8") and ok.setup is not None and ok.setup.dtype == "bf16"


def test_search_cli_dtype_list_and_bad_input(capsys, tmp_path):
    argv = [
        "search", "--model", "gpt3-175b", "--gpu", "a100-80gb,h100-sxm", "--dtype", "bf16,fp8",
        "--max-gpus", "128", "--tokens", "300B", "--json", "--out", str(tmp_path / "r"),
        "--baseline", "gpu=h100-sxm,dtype=fp8,tp=8,pp=8,dp=2,mb=1",
    ]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["best_time"]["dtype"] == "fp8"
    assert doc["reason_counts"]["dtype not on this GPU"] > 0
    assert doc["baseline"]["plan"]["dtype"] == "fp8"
    best = json.loads((tmp_path / "r" / "best.json").read_text())
    assert best["space"]["dtypes"] == ["bf16", "fp8"]
    assert best["setup"]["a100-80gb"]["dtype"] == "bf16"
    assert best["setup"]["h100-sxm"]["dtype"] == "bf16/fp8"
    bad = ["search", "--model", "gpt3-175b", "--gpu", "a100-80gb", "--dtype", "bf16,fp8"]
    assert main([*bad, "--tokens", "300B"]) == 2
    err = capsys.readouterr().err.strip()
    assert "a100-80gb has no fp8 peak" in err and len(err.splitlines()) == 1
    assert main([*bad[:-1], "bf16,fp4", "--tokens", "300B"]) == 2
    assert "fp4: not one of" in capsys.readouterr().err


def test_a_split_that_does_not_add_up_says_the_sum():
    with pytest.raises(ValueError, match=r"first 5 \+ last 5 leaves 116 layers for the other 14"):
        SearchSpace.create(get_model("llama3-405b"), ["h100-sxm"], pp=16, stage_layers="5,5")


def test_the_best_plans_table_wraps_long_options_and_never_cuts_a_figure(tmp_path, capsys):
    """A plan with every new option (cp, split, fp8) has long options: they wrap, while the
    GPUs, days, cost and MFU columns stay whole (they used to read '16,…', '$10…')."""
    argv = ["search", "--model", "llama3-405b", "--seq-len", "131072", "--gpu", "h100-sxm"]
    argv += ["--min-gpus", "16384", "--max-gpus", "16384", "--global-batch", "128", "--tp", "8"]
    argv += ["--cp", "8,16", "--pp", "16", "--stage-layers", "7,7", "--dtype", "bf16,fp8"]
    argv += ["--tokens", "1e12", "--strategy", "exhaustive", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    table = out[out.index("Best plans") : out.index("Where an iteration")]
    assert "…" not in table
    fastest = next(line for line in table.splitlines() if "fastest" in line)
    assert "16,384" in fastest and "8.16.8" in fastest and "%" in fastest
    assert "stages 7/7" in table and "fp8" in table  # wrapped onto the next line if need be
