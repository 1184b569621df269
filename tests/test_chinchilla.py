"""The compute-optimal study: real answer vs ideal, budgets, the command and its errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from rich.table import Table

from vtrain_opt.cli import main
from vtrain_opt.search import SearchSpace, gpu_choice, search
from vtrain_opt.studies.chinchilla import (
    REF_TOKENS,
    StudyBudget,
    StudyConfig,
    run_study,
)
from vtrain_opt.studies.chinchilla.config import budgets_from, split_budgets
from vtrain_opt.studies.chinchilla.results import run_to_folder
from vtrain_opt.studies.chinchilla.tables import report
from vtrain_opt.studies.lossfit import FITS
from vtrain_opt.studies.shapes import ShapeRules
from vtrain_opt.units import DAY_S

# A small study: 6 sizes from 0.3B to 20B on one A100 cluster of 64 GPUs.
SMALL = ["--min-params", "0.3B", "--max-params", "20B", "--num-sizes", "6"]


def small_config(*budgets: StudyBudget, **kw) -> StudyConfig:
    return StudyConfig(
        gpu=gpu_choice("a100-80gb"),
        budgets=budgets,
        min_params=0.3e9,
        max_params=20e9,
        num_sizes=6,
        **kw,
    )


@pytest.fixture(scope="module")
def cluster_study():
    return run_study(small_config(StudyBudget(num_gpus=64, time_s=7 * DAY_S)), workers=0)


def test_fixed_cluster_answer_is_consistent(cluster_study) -> None:
    a = cluster_study.main
    fit = FITS["epoch"]  # the default law
    assert cluster_study.config.law is fit
    c = a.candidates
    ok = c[c["status"] == "ok"]
    assert len(ok) >= 3
    # every candidate: D = its plan's throughput x the time, loss = the law at (N, D)
    assert np.allclose(ok["tokens"], ok["tokens_per_s"] * 7 * DAY_S)
    assert np.allclose(ok["loss"], fit.loss(ok["params"].to_numpy(), ok["tokens"].to_numpy()))
    assert (ok["num_gpus"] <= 64).all()
    # N* is the loss minimum of the candidates
    assert a.optimal["loss"] == pytest.approx(ok["loss"].min())
    assert a.optimal["params"] == ok.loc[ok["loss"].idxmin(), "params"]
    # the ideal answer: the law's optimum at 64 GPUs x peak x 7 days x 100%
    compute = 64 * 312e12 * 7 * DAY_S
    assert a.ideal["compute_flop"] == pytest.approx(compute)
    n, d = fit.optimum(compute)
    assert (a.ideal["params"], a.ideal["tokens"]) == (pytest.approx(n), pytest.approx(d))
    assert a.ideal["rule"]["tokens"] / a.ideal["rule"]["params"] == pytest.approx(20)
    # real plans run below peak: fewer FLOPs, a higher loss than the ideal minimum
    assert 6 * a.optimal["params"] * a.optimal["tokens"] < compute
    assert a.optimal["loss"] > a.ideal["loss"]
    assert 0 < a.optimal["mfu"] < 1
    assert a.gap["params_ratio"] == pytest.approx(a.optimal["params"] / n)
    # the law at the MFU N*'s plan reaches: the same budget x that MFU, like for like
    m = a.at_real_mfu
    assert m["mfu"] == a.optimal["mfu"]
    assert m["compute_flop"] == pytest.approx(compute * a.optimal["mfu"])
    n_m, d_m = fit.optimum(compute * a.optimal["mfu"])
    assert (m["params"], m["tokens"]) == (pytest.approx(n_m), pytest.approx(d_m))
    assert m["loss"] == pytest.approx(fit.loss(n_m, d_m))
    assert m["params"] < a.ideal["params"] and m["loss"] > a.ideal["loss"]
    assert a.gap["params_ratio_at_real_mfu"] == pytest.approx(a.optimal["params"] / n_m)


def test_money_budget_picks_the_plan_with_most_tokens() -> None:
    """D = max over every plan of min(B / cost, T / time): checked by brute force."""
    budget = StudyBudget(usd=20_000.0, time_s=10 * DAY_S)
    cfg = small_config(budget, max_gpus=64)
    result = run_study(cfg, workers=0)
    cands = result.main.candidates
    for _, row in cands[cands["status"] != "no plan"].head(3).iterrows():
        model = ShapeRules().shape(int(row["hidden_size"]), int(row["num_layers"]))
        assert model.num_params() == row["params"]
        space = SearchSpace.create(model, ["a100-80gb"], max_gpus=64)
        every = search(space, tokens=REF_TOKENS, objective="pareto", keep_all_max=10**7).plans
        every = every[every["feasible"]]
        d = np.minimum(20_000.0 / every["cost_usd"], 10 * DAY_S / every["training_time_s"])
        assert row["tokens"] == pytest.approx(float(d.max()) * REF_TOKENS, rel=1e-9)
        assert row["cost_usd"] <= 20_000.0 * (1 + 1e-9)
        assert row["days"] <= 10 * (1 + 1e-9)


def test_several_budgets_draw_a_frontier(tmp_path, capsys) -> None:
    code = main(
        [
            "chinchilla",
            "--num-gpus",
            "64",
            "--budgets",
            "2d,7d,30d",
            *SMALL,
            "--workers",
            "0",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    front = doc["frontier"]
    assert [f["budget"]["days"] for f in front] == [2, 7, 30]
    ideal_n = [f["ideal"]["params"] for f in front]
    assert ideal_n == sorted(ideal_n)
    # more days on the same cluster: every size trains more tokens, so the best loss falls
    losses = [f["optimal"]["loss"] for f in front]
    assert losses == sorted(losses, reverse=True)
    assert doc["optimal"] == front[-1]["optimal"]
    for name in ("loss_vs_size.png", "frontier.png", "study.json", "candidates.parquet"):
        assert (tmp_path / name).stat().st_size > 0


def test_command_json_has_the_answers_and_plot(tmp_path, capsys) -> None:
    code = main(
        [
            "chinchilla",
            "--gpu",
            "h100-sxm",
            "--budget",
            "$30k",
            "--max-days",
            "20",
            "--max-gpus",
            "64",
            *SMALL,
            "--loss-fit",
            "hoffmann",  # still selectable
            "--workers",
            "0",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    for key in ("optimal", "ideal", "law_at_real_mfu"):
        assert {"params", "tokens", "loss"} <= set(doc[key])
    assert doc["law_at_real_mfu"]["mfu"] == doc["optimal"]["mfu"]
    assert doc["loss_fit"]["name"] == "hoffmann"
    assert len(doc["candidates"]) == 6
    assert {"params", "tokens", "loss", "status", "mfu"} <= set(doc["candidates"][0])
    assert doc["optimal"]["cost_usd"] <= 30_000 * (1 + 1e-9)
    assert doc["optimal"]["days"] <= 20 * (1 + 1e-9)
    assert (tmp_path / "loss_vs_size.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "study.json").read_text())["optimal"] == doc["optimal"]


def _run_err(args, capsys) -> tuple[int, str]:
    code = main(["chinchilla", *SMALL, *args, "--workers", "0", "--no-plots"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err.strip()


def test_too_small_cluster_time_names_the_smallest_budget_that_works(tmp_path, capsys) -> None:
    code, err = _run_err(["--num-gpus", "8", "--days", "0.001", "--out", str(tmp_path)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    m = re.search(r"smallest budget that works is ([0-9.e+-]+) days on 8 GPUs", err)
    assert m, err
    days = float(m.group(1)) * 1.02
    code, err = _run_err(["--num-gpus", "8", "--days", str(days), "--out", str(tmp_path)], capsys)
    assert code == 0, err


def test_too_small_money_budget_names_the_smallest_budget_that_works(tmp_path, capsys) -> None:
    code, err = _run_err(["--budget", "$0.5", "--max-gpus", "64", "--out", str(tmp_path)], capsys)
    assert code == 2
    m = re.search(r"smallest budget that works is \$([0-9.]+)(k?)", err)
    assert m, err
    usd = float(m.group(1)) * (1e3 if m.group(2) else 1) * 1.02
    code, err = _run_err(
        ["--budget", f"${usd:.2f}", "--max-gpus", "64", "--out", str(tmp_path)], capsys
    )
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-gpus", "64"], "give a budget"),
        (["--num-gpus", "64", "--days", "7", "--budget", "$1M"], "not both"),
        (["--budget", "$1M", "--days", "7"], "not both"),
        (["--budget", "5M"], "no unit"),
        (["--num-gpus", "64", "--days", "7", "--max-days", "9"], "--max-days goes with --budget"),
        (["--num-gpus", "64", "--days", "7", "--ideal-mfu", "150%"], "(0, 1]"),
        (["--num-gpus", "64", "--days", "7", "--min-params", "30B"], "above --max-params"),
        (["--num-gpus", "64", "--days", "7", "--nvlink-domain", "12"], "not a multiple of"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, capsys, tmp_path) -> None:
    code, err = _run_err([*args, "--out", str(tmp_path)], capsys)
    assert code == 2
    assert message in err and len(err.splitlines()) == 1


def test_on_ray_matches_in_process(ray_local, cluster_study) -> None:
    on_ray = run_study(small_config(StudyBudget(num_gpus=64, time_s=7 * DAY_S)), workers=2)
    assert on_ray.backend == "ray"
    here, there = cluster_study.main.candidates, on_ray.main.candidates
    assert here.equals(there)
    assert on_ray.main.optimal == cluster_study.main.optimal


def test_sizes_that_do_not_fit_are_listed_with_the_reason(tmp_path, capsys) -> None:
    args = ["chinchilla", "--num-gpus", "8", "--days", "30", "--min-params", "0.5B"]
    args += ["--max-params", "500B", "--num-sizes", "4", "--workers", "0", "--no-plots"]
    assert main([*args, "--out", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    no_plan = [c for c in doc["candidates"] if c["status"] == "no plan"]
    assert no_plan and all("memory" in c["reason"] for c in no_plan)
    assert all(c["loss"] is None for c in no_plan)
    assert doc["optimal"]["params"] < min(c["params"] for c in no_plan)
    plan = doc["optimal"]["plan"]
    assert all(isinstance(plan[k], int) for k in ("num_gpus", "tp", "pp", "dp", "micro_batch"))
    assert plan["num_gpus"] <= 8


def test_the_vtrain_paper_case_ideal_above_real_with_three_rows(tmp_path, capsys) -> None:
    """30 days on 3,360 A100s (the vTrain paper's case): with the default (Epoch) law the
    ideal at 100% utilization is larger than the real optimum, ~20 tokens per parameter."""
    args = ["chinchilla", "--gpu", "a100-80gb", "--num-gpus", "3360", "--days", "30"]
    args += ["--workers", "0", "--no-plots", "--out", str(tmp_path)]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["loss_fit"]["name"] == "epoch"
    ideal, at_mfu, real = doc["ideal"], doc["law_at_real_mfu"], doc["optimal"]
    assert ideal["params"] > real["params"]
    assert ideal["params"] > at_mfu["params"]
    assert 10 < ideal["tokens_per_param"] < 30 and 10 < at_mfu["tokens_per_param"] < 30
    assert at_mfu["compute_flop"] == pytest.approx(ideal["compute_flop"] * real["mfu"])
    assert main(args) == 0
    text = capsys.readouterr().out
    for label in ("real plans (N*)", "ideal: law optimum at MFU 100%", "law optimum at N*'s MFU"):
        assert label in text
    assert f"law optimum at N*'s MFU {real['mfu']:.1%}" in text


def test_budget_lists_keep_the_commas_of_money() -> None:
    assert split_budgets("$1,000,000, $5M,7d") == ["$1,000,000", "$5M", "7d"]
    with pytest.raises(ValueError, match="at least one"):
        split_budgets(" , ")


def test_budgets_from_the_flags_values() -> None:
    fixed = budgets_from(num_gpus=8, budget_list="7d,30d")
    assert [(b.num_gpus, b.time_s) for b in fixed] == [(8, 7 * DAY_S), (8, 30 * DAY_S)]
    (money,) = budgets_from(budget="$2M", max_days="10")
    assert (money.usd, money.time_s, money.num_gpus) == (2e6, 10 * DAY_S, None)
    with pytest.raises(ValueError, match="--max-gpus goes with --budget"):
        budgets_from(num_gpus=8, days="7", max_gpus=16)


def test_run_to_folder_writes_the_document_the_report_shows(tmp_path) -> None:
    config = small_config(StudyBudget(num_gpus=64, time_s=7 * DAY_S))
    saved = run_to_folder(config, tmp_path / "study", plots_too=False)
    on_disk = json.loads((tmp_path / "study" / "study.json").read_text())
    assert on_disk["optimal"] == saved.doc["optimal"]
    assert on_disk["files"] == {k: str(v) for k, v in saved.files.items()}
    assert "loss_vs_size" not in saved.files and (tmp_path / "study" / "candidates.csv").is_file()
    parts = report(saved.result, saved.files)
    titles = [p.title for p in parts if isinstance(p, Table)]
    assert titles == [
        "Candidate sizes, 64 GPUs x 7 days",
        "Compute-optimal answer, 64 GPUs x 7 days",
    ]
    assert str(parts[-1]).endswith(f"results in {tmp_path / 'study'}")


def test_nvlink_domain_reaches_the_study() -> None:
    from vtrain_opt.cli import build_parser
    from vtrain_opt.commands.chinchilla import config_from

    argv = ["chinchilla", "--gpu", "gb200-nvl72", "--num-gpus", "144", "--days", "7"]
    rack = config_from(build_parser().parse_args(argv))
    trays = config_from(build_parser().parse_args([*argv, "--nvlink-domain", "8"]))
    assert rack.gpu.cluster.domain_gpus == 72 and trays.gpu.cluster.domain_gpus == 8
    assert trays.gpu.cluster.gpus_per_node == 4
