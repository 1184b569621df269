"""Headless Chromium for the HTML report tests: the DOM after the page's scripts ran, and a
screenshot. Chromium's own command line (no Playwright, no driver): ``--dump-dom`` prints
the DOM once the virtual time budget has run out, so what the page's scripts wrote into it
(the figures' render markers, recorded JavaScript errors) can be read back."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
VIRTUAL_TIME_MS = 5000
TIMEOUT_S = 120


def chromium() -> str:
    """The Chromium binary, or a clean skip that says why there is none."""
    for name in (os.environ.get("CHROMIUM"), *NAMES):
        if name and (path := shutil.which(name)):
            return path
    pytest.skip(
        "no Chromium here (looked for $CHROMIUM, " + ", ".join(NAMES) + "): the report is "
        "not checked in a browser; .ci/run installs it (apt-get install chromium)"
    )


def _run(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    argv = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        *extra,
        page.resolve().as_uri(),
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


def dump_dom(page: Path, tmp: Path) -> str:
    """The page's DOM after its scripts ran (serialized HTML)."""
    return _run(page, tmp, "--dump-dom").stdout


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 2400) -> Path:
    """A PNG of the page's first ``height`` pixels at ``width``."""
    _run(page, png.parent, f"--window-size={width},{height}", f"--screenshot={png}")
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", f"no screenshot at {png}"
    return png


class _Attrs(HTMLParser):
    """The attributes of <html>, <body> and of every element with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.root: dict[str, str] = {}
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "html":
            self.root = a
        elif tag == "body":
            self.body = a
        if "id" in a:
            self.by_id[a["id"]] = a


def attributes(dom: str) -> _Attrs:
    # the inlined plotly.js and the figures' data are long scripts: drop them first
    parser = _Attrs()
    parser.feed(re.sub(r"<script\b.*?</script>", "", dom, flags=re.S | re.I))
    return parser


def assert_rendered(page: Path, tmp: Path) -> _Attrs:
    """Open ``page`` in headless Chromium: no JavaScript error, and every figure drawn with
    the traces and points Python put in it (each point with its hover text). Returns the
    DOM's attributes for more checks."""
    attrs = attributes(dump_dom(page, tmp))
    assert "data-js-errors" not in attrs.root, attrs.root.get("data-js-errors")
    assert attrs.body.get("data-figures-rendered", "0") == attrs.body["data-figures"], attrs.body
    names = [k.removeprefix("figure-") for k in attrs.by_id if k.startswith("figure-")]
    assert len(names) == int(attrs.body["data-figures"])
    for name in names:
        want, got = attrs.by_id[f"figure-{name}"], attrs.by_id[f"fig-{name}"]
        assert got["data-rendered"] == "1", name
        assert got["data-traces"] == want["data-expected-traces"], name
        assert got["data-points"] == want["data-expected-points"], name
        assert int(got["data-drawn"]) > 0, name
    return attrs
