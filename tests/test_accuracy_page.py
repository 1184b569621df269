"""docs/accuracy.md is written by benchmarks/report.py from benchmarks/accuracy.md.in: the
committed page is the template filled (no prose edited by hand on the page alone), its
images exist, and without the shared data the script leaves the page alone."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "benchmarks" / "accuracy.md.in"
PAGE = ROOT / "docs" / "accuracy.md"
FIELD = re.compile(r"\$\{(\w+)\}")


def _report():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return report


def test_the_page_is_the_template_filled():
    text = TEMPLATE.read_text()
    assert len(set(FIELD.findall(text))) > 30  # every figure of the page is a placeholder
    # the template's text literally, each placeholder any text on its line
    pattern = r"[^\n]+?".join(re.escape(part) for part in re.split(r"\$\{\w+\}", text))
    page = PAGE.read_text()
    header = _report().HEADER
    assert page.startswith(header)
    assert re.fullmatch(pattern, page[len(header) :]), (
        "docs/accuracy.md is not benchmarks/accuracy.md.in filled: edit the template and run "
        "python benchmarks/report.py"
    )


def test_the_page_images_exist():
    images = re.findall(r"!\[[^\]]*\]\((img/[^)]+)\)", PAGE.read_text())
    assert images
    for image in images:
        assert (ROOT / "docs" / image).is_file(), image


def test_render_fills_every_figure_and_only_those():
    report = _report()
    names = set(FIELD.findall(TEMPLATE.read_text()))
    page = report.render(dict.fromkeys(names, "X"))
    assert "${" not in page
    try:
        report.render({**dict.fromkeys(names, "X"), "not_a_figure": 1})
    except KeyError as e:
        assert "not_a_figure" in str(e)
    else:
        raise AssertionError("an extra figure was accepted")


def test_without_shared_data_the_page_is_left_alone(tmp_path, monkeypatch, capsys):
    report = _report()
    before = PAGE.read_bytes()
    monkeypatch.setattr(report.fid, "SHARED", tmp_path / "absent")
    monkeypatch.setattr(sys, "argv", ["report.py"])
    assert report.main() == 0
    assert "no shared data" in capsys.readouterr().out
    assert PAGE.read_bytes() == before
