"""`search --report`: report.html, one self-contained page, rendered in headless Chromium.

The page is checked twice: as a file (one file, plotly.js inlined, every figure's data and
hover text) and in a real browser (no JavaScript error, every figure drawn with the traces
and points it holds, the axis menu and the hover label working), with a screenshot left in
the test's tmp folder. The browser tests skip, saying why, where no Chromium exists.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from chromium import assert_rendered, screenshot
from helpers import search_argv

from vtrain_opt.cli import main

FIGURES = ("front", "breakdown", "memory", "timeline")

# Appended to a copy of the report (the test build): once the time-cost figure has rendered,
# put GPU-hours on its x axis with the menu's own arguments, then hover the fastest plan's
# point; write what came out into <body data-probe-...>.
PROBE = """<script>
(function probe(){
  var gd = document.getElementById("fig-front");
  if (!gd || gd.getAttribute("data-rendered") !== "1") { setTimeout(probe, 50); return; }
  var b = document.body, button = gd.layout.updatemenus[0].buttons[1];
  Plotly.update(gd, button.args[0], button.args[1]).then(function(){
    b.setAttribute("data-probe-xaxis", gd.layout.xaxis.title.text);
    var k = gd.data.findIndex(function(t){ return t.name.indexOf("fastest") === 0; });
    b.setAttribute("data-probe-x", String(gd.data[k].x[0]));
    Plotly.Fx.hover(gd, [{curveNumber: k, pointNumber: 0}]);
    var label = gd.querySelector(".hoverlayer");
    b.setAttribute("data-probe-hover", label ? label.textContent : "");
  }).catch(function(e){ b.setAttribute("data-probe-error", String(e)); });
})();
</script>"""


@pytest.fixture(scope="module")
def mt_nlg(tmp_path_factory) -> tuple[Path, dict]:
    """`search --space mt-nlg-530b --report`, the command of the issue, run once."""
    out = tmp_path_factory.mktemp("mt-nlg-530b")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["search", "--space", "mt-nlg-530b", "--report", "--out", str(out), "--json"])
    assert code == 0
    return out, json.loads(stdout.getvalue())


def _figure_data(page: str) -> dict[str, list[dict]]:
    """Each figure's traces, read back from the Plotly.newPlot call in the page."""
    out = {}
    for name in FIGURES:
        m = re.search(rf'Plotly\.newPlot\(\s*"fig-{name}",\s*(\[.*?\]),\s*\{{', page, re.S)
        assert m, f"figure {name} not in the page"
        out[name] = json.loads(m.group(1))
    return out


def test_one_self_contained_file(mt_nlg) -> None:
    out, doc = mt_nlg
    path = out / "report.html"
    assert doc["files"]["report"] == str(path)
    page = path.read_text()
    assert "<script src=" not in page and 'src="http' not in page  # nothing to fetch
    assert page.count("plotly.js v") >= 1  # the library itself, inlined once
    assert not list(out.glob(".*.tmp"))  # written atomically
    traces = _figure_data(page)
    plans = pd.read_parquet(out / "plans.parquet")
    front = traces["front"]
    by_name = {t["name"].split(" (")[0]: t for t in front}
    feasible = by_name["feasible on a100-80gb"]
    assert len(feasible["x"]) == int(plans["feasible"].sum()) == doc["feasible"] == 1953
    assert len(by_name["Pareto front"]["x"]) == len(doc["pareto"])
    assert sum(len(t["x"]) for n, t in by_name.items() if n.startswith("infeasible")) == 5000
    assert "5,000 of the 37,365 plans rejected as &#x27;out of memory&#x27; are drawn" in page
    fastest = next(t for t in front if t["name"].startswith("fastest"))
    best = doc["best_time"]
    assert fastest["y"] == [pytest.approx(best["cost_usd"], rel=1e-5)]
    hover = fastest["text"][0]
    for part in (f"tp={best['tp']} pp={best['pp']} dp={best['dp']}", "mb=2", "days", "MFU", "GiB"):
        assert part in hover, (part, hover)
    assert all(t["text"] and all(t["text"]) for t in front)  # every point has its hover
    # the axis menus: days, GPU-hours, dollars on x; one array per trace
    menus = json.loads(re.search(r'"updatemenus":(\[.*?\]),"annotations"', page, re.S).group(1))
    assert [b["label"] for b in menus[0]["buttons"]] == ["days", "GPU-hours", "dollars"]
    assert [b["label"] for b in menus[1]["buttons"]] == ["dollars", "days", "GPU-hours"]
    assert all(len(b["args"][0]["x"]) == len(front) for b in menus[0]["buttons"])
    # the chosen plans' breakdown, memory and the fastest plan's timeline, per stage
    assert {t["name"] for t in traces["breakdown"]} >= {"compute", "pipeline bubble"}
    assert "GPU memory" in {t["name"] for t in traces["memory"]}
    stages = {y for t in traces["timeline"] for y in t["y"]}
    assert stages == {f"stage {i}" for i in range(best["pp"])}
    # the inputs that reproduce the run
    inputs = page[page.index('id="inputs"') :]
    assert "Command line:" in inputs and "python -m vtrain_opt" in inputs  # (pytest's argv here)
    assert "Model mt-nlg-530b: 529.6B parameters, 105 layers" in inputs
    assert "$1.8" in inputs and "a100-80gb:calibrated" in inputs and "plotly " in inputs


def test_renders_in_headless_chromium(mt_nlg, tmp_path) -> None:
    out, doc = mt_nlg
    original = (out / "report.html").read_text()
    build = tmp_path / "report.html"  # the test build: the report and the probe
    build.write_text(original.replace("</body>", PROBE + "\n</body>"))
    attrs = assert_rendered(build, tmp_path)
    assert attrs.body["data-figures-rendered"] == str(len(FIGURES))
    for name in FIGURES:  # every point and bar with its hover text
        assert (
            attrs.by_id[f"fig-{name}"]["data-hover-texts"]
            == attrs.by_id[f"fig-{name}"]["data-points"]
        )
    front = attrs.by_id["fig-front"]
    assert int(front["data-drawn"]) >= doc["feasible"] + 5000  # every point in the SVG
    # the menu put GPU-hours on the x axis; the hover label shows the fastest plan
    assert "data-probe-error" not in attrs.body, attrs.body.get("data-probe-error")
    assert attrs.body["data-probe-xaxis"] == "GPU-hours"
    assert float(attrs.body["data-probe-x"]) == pytest.approx(
        doc["best_time"]["gpu_hours"], rel=1e-5
    )
    hover = attrs.body["data-probe-hover"]
    assert f"{doc['best_time']['num_gpus']:,} × a100-80gb" in hover and "tp=8" in hover, hover
    # a screenshot of the page as it opens, kept in the test's tmp folder
    png = screenshot(out / "report.html", tmp_path / "report.png", height=1000)
    _not_blank(png)


def _not_blank(png: Path) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] >= 900 and pixels.shape[1] >= 1200
    assert float(pixels[..., :3].std()) > 0.05, "the screenshot is blank"


# ---- bad input: one line, exit status 2 ----------------------------------------------------
def _fails(capsys, argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and not out, (code, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_report_with_json_needs_out(capsys) -> None:
    err = _fails(capsys, [*search_argv(), "--report", "--json"])
    assert "--report" in err and "--out" in err


def test_report_into_an_unwritable_folder(capsys, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _fails(capsys, [*search_argv(), "--report", "--out", str(blocker / "out")])
    assert "cannot write there" in err and "not a folder" in err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        err = _fails(capsys, [*search_argv(), "--report", "--out", str(locked / "out")])
        assert "permission denied" in err
