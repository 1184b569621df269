"""The screenshot of a search's report.html in the README and the search page.

    python docs/scripts/report_screenshot.py docs/img/report.png

Runs ``search --space mt-nlg-530b --report`` into a temporary folder, opens a copy of its
report.html in headless Chromium with the fastest plan's point hovered (Plotly.Fx.hover,
once the figure has rendered) and saves the top of the page as a PNG.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HOVER = """<script>
(function hover(){
  var gd = document.getElementById("fig-front");
  if (!gd || gd.getAttribute("data-rendered") !== "1") { setTimeout(hover, 50); return; }
  var k = gd.data.findIndex(function(t){ return t.name.indexOf("fastest") === 0; });
  Plotly.Fx.hover(gd, [{curveNumber: k, pointNumber: 0}]);
})();
</script>"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("png", type=Path, help="where to write the screenshot")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=900)
    args = ap.parse_args()
    browser = next(
        (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))),
        None,
    )
    if browser is None:
        sys.exit("no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        search = ["search", "--space", "mt-nlg-530b", "--report", "--out", str(out), "--json"]
        subprocess.run(
            [sys.executable, "-m", "vtrain_opt", *search],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        page = Path(tmp) / "report.html"
        page.write_text((out / "report.html").read_text().replace("</body>", HOVER + "</body>"))
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={tmp}/profile",
                "--virtual-time-budget=5000",
                f"--window-size={args.width},{args.height}",
                f"--screenshot={args.png.resolve()}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
        )
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
