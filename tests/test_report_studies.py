"""`chinchilla --report` and `sweep --report`: their report.html, read as files and rendered
in headless Chromium (skipped, saying why, where there is none)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
from chromium import assert_rendered
from helpers import STATUSES_SWEEP

from vtrain_opt.cli import main

# A small study: 6 sizes from 0.3B to 20B on 64 A100s, for 7 and 30 days.
STUDY = ["chinchilla", "--num-gpus", "64", "--budgets", "7d,30d", "--min-params", "0.3B"]
STUDY += ["--max-params", "20B", "--num-sizes", "6", "--workers", "0", "--no-plots"]


def _run(argv: list[str]) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, json.loads(out.getvalue()) if out.getvalue().strip() else {}


def _traces(page: str, name: str) -> list[dict]:
    m = re.search(rf'Plotly\.newPlot\(\s*"fig-{name}",\s*(\[.*?\]),\s*\{{', page, re.S)
    assert m, f"figure {name} not in the page"
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("chinchilla")
    code, doc = _run([*STUDY, "--out", str(out), "--report", "--json"])
    assert code == 0
    return out, doc


def test_chinchilla_report(study) -> None:
    out, doc = study
    assert doc["files"]["report"] == str(out / "report.html")
    page = (out / "report.html").read_text()
    assert "<script src=" not in page  # plotly.js inlined
    traces = {t["name"]: t for t in _traces(page, "loss")}
    for budget in ("64 GPUs x 7 days", "64 GPUs x 30 days"):
        real = traces[f"real plans, {budget}"]
        assert len(real["x"]) == len(real["text"]) >= 3
        assert all("tp=" in t and "days" in t and "MFU" in t for t in real["text"])
        assert f"ideal at MFU 100%, {budget}" in traces
    main_budget = "64 GPUs x 30 days"  # the largest: the document's top answer
    star = traces[f"N* (real plans), {main_budget}"]
    circle = traces[f"ideal optimum, {main_budget}"]
    assert star["x"] == [pytest.approx(doc["optimal"]["params"])]
    assert circle["x"] == [pytest.approx(doc["ideal"]["params"])]
    assert star["y"] == [pytest.approx(doc["optimal"]["loss"])]
    assert "The answer at every budget" in page and "Inputs to reproduce this study" in page


def test_chinchilla_report_renders(study, tmp_path) -> None:
    out, _ = study
    attrs = assert_rendered(out / "report.html", tmp_path)
    assert attrs.body["data-figures-rendered"] == "1"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "statuses.yaml").write_text(STATUSES_SWEEP)
    out = tmp / "out"
    code, _ = _run(
        ["sweep", str(tmp / "statuses.yaml"), "--workers", "0", "--out", str(out), "--json"]
    )
    assert code == 1  # two scenarios fail, on purpose
    # the report afterwards, from what is done (runs nothing)
    code, doc = _run(
        ["sweep", str(tmp / "statuses.yaml"), "--summary", "--report", "--out", str(out), "--json"]
    )
    assert code == 1
    return out, doc


def test_sweep_report_links_each_scenario(sweep) -> None:
    out, doc = sweep
    assert doc["files"]["report"] == str(out / "report.html")
    page = (out / "report.html").read_text()
    ids = sorted(p.stem for p in (out / "scenarios").glob("*.json"))
    assert len(ids) == 4
    for sid in ids:  # one row per scenario, linking to its page
        assert f'href="reports/{sid}.html"' in page
        scenario = (out / "reports" / f"{sid}.html").read_text()
        assert "../report.html" in scenario and sid in scenario
    assert (out / "reports" / "plotly.min.js").stat().st_size > 1_000_000  # shared by them
    records = {p.stem: json.loads(p.read_text()) for p in (out / "scenarios").glob("*.json")}
    ok = next(k for k, r in records.items() if r["status"] == "ok")
    scenario = (out / "reports" / f"{ok}.html").read_text()
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in scenario
    assert {t["name"] for t in _traces(scenario, "breakdown")} >= {"compute"}
    stages = {y for t in _traces(scenario, "timeline") for y in t["y"]}
    assert stages == {f"stage {i}" for i in range(records[ok]["best_time"]["pp"])}
    failed = next(k for k, r in records.items() if r["status"] == "failed")
    assert "must divide the heads" in (out / "reports" / f"{failed}.html").read_text()


def test_sweep_report_renders(sweep, tmp_path) -> None:
    out, _ = sweep
    assert_rendered(out / "report.html", tmp_path)
    for page in sorted((out / "reports").glob("*.html")):
        assert_rendered(page, tmp_path)


@pytest.mark.parametrize("command", ["chinchilla", "sweep"])
def test_report_with_json_needs_out(command, capsys, tmp_path) -> None:
    (tmp_path / "s.yaml").write_text(STATUSES_SWEEP)
    argv = STUDY if command == "chinchilla" else ["sweep", str(tmp_path / "s.yaml")]
    code = main([*argv, "--report", "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and not out and err.count("\n") == 1
    assert "--report" in err and "--out" in err
