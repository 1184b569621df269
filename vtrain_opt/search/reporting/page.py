"""An HTML report page: sections, tables and Plotly figures in one file.

A page inlines Plotly's JavaScript once (``include_plotlyjs=True``), so the file opens with
no network; pages of one folder may share a ``plotly.min.js`` beside them instead
(``plotlyjs="plotly.min.js"``: a sweep's scenario pages). Once ``Plotly.newPlot`` has
resolved, every figure writes what it holds and what it drew into ``<div id="fig-NAME">``
(``data-rendered``, ``data-traces``, ``data-points``, ``data-hover-texts``, and
``data-drawn``: the markers and bars in its SVG), beside what Python put in it
(``data-expected-traces``, ``data-expected-points`` of ``<div id="figure-NAME">``); a
script at the top of the page records any JavaScript error in ``<html data-js-errors>``.
So a headless browser's dumped DOM tells whether the page rendered. Plotly is imported
when a page is built, never before.
"""

from __future__ import annotations

import html
import json
import platform
import shlex
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from vtrain_opt import __version__
from vtrain_opt.io import write_with

REPORT_FILE = "report.html"
SHARED_PLOTLYJS = "plotly.min.js"
# --report with --json and no --out: the page would land in a folder nobody named
REPORT_NEEDS_OUT = (
    "--report writes report.html into the results folder: with --json, name that folder "
    "with --out DIR"
)

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1180px;padding:0 20px 40px;color:#1f2933;line-height:1.45}
h1{font-size:1.6em;margin:.8em 0 .2em}h2{font-size:1.25em;margin:1.6em 0 .4em;
border-bottom:1px solid #d9e2ec;padding-bottom:.2em}h3{font-size:1.05em}
p.lead{color:#52606d;margin-top:0}.note{color:#52606d;font-size:.9em}
table{border-collapse:collapse;font-size:.88em;margin:.5em 0;width:100%}
th,td{border-bottom:1px solid #e4e7eb;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f5f7fa;position:sticky;top:0}td.l,th.l{text-align:left}
td.wrap{white-space:normal;text-align:left}
pre{background:#f5f7fa;padding:10px;overflow-x:auto;font-size:.82em}
code{background:#f5f7fa;padding:1px 4px}.bad{color:#b42318}.ok{color:#027a48}
.figure{margin:.5em 0 1em}nav a{margin-right:1em}
"""

# First script of the page: records JavaScript errors (and rejected promises, as
# Plotly.newPlot's) into <html data-js-errors>, for a headless browser's dumped DOM.
_ERRORS = """<script>
(function(){var seen=[];function keep(m){seen.push(String(m));
document.documentElement.setAttribute("data-js-errors",JSON.stringify(seen));}
window.addEventListener("error",function(e){keep(e.message||e);});
window.addEventListener("unhandledrejection",function(e){keep(e.reason);});})();
</script>"""

# Runs after Plotly.newPlot resolved: what the figure holds and what the SVG drew.
_RENDERED = """var gd=document.getElementById("{plot_id}");var n=0,h=0;
gd.data.forEach(function(t){var k=(t.x||t.y||[]).length;n+=k;
if(t.text&&typeof t.text!=="string"){h+=t.text.filter(function(s){return s;}).length;}});
gd.setAttribute("data-traces",gd.data.length);gd.setAttribute("data-points",n);
gd.setAttribute("data-hover-texts",h);
gd.setAttribute("data-drawn",gd.querySelectorAll(".point").length);
gd.setAttribute("data-rendered","1");var b=document.body;
b.setAttribute("data-figures-rendered",Number(b.getAttribute("data-figures-rendered")||0)+1);"""


class Raw(str):
    """Table cell HTML that is not escaped (a link)."""


class Page:
    """An HTML report being assembled: call the builders in order, then ``write``."""

    def __init__(self, title: str, lead: str = "", plotlyjs: str = "inline") -> None:
        self.title = title
        self.parts: list[str] = [f"<h1>{_e(title)}</h1>"]
        if lead:
            self.parts.append(f'<p class="lead">{_e(lead)}</p>')
        self.plotlyjs = plotlyjs  # "inline" or the name of a shared plotly.min.js
        self.figures = 0

    def heading(self, text: str, anchor: str | None = None, level: int = 2) -> None:
        ident = f' id="{_e(anchor)}"' if anchor else ""
        self.parts.append(f"<h{level}{ident}>{_e(text)}</h{level}>")

    def text(self, text: str, note: bool = False) -> None:
        self.parts.append(f"<p{' class=note' if note else ''}>{_e(text)}</p>")

    def raw(self, markup: str) -> None:
        self.parts.append(markup)

    def code(self, text: str) -> None:
        self.parts.append(f"<pre>{_e(text)}</pre>")

    def command(self, argv: Sequence[str] | None) -> None:
        """The command line that wrote the page, as one would type it again."""
        if not argv:
            return
        words = list(argv)
        if words[0] == "vtrain_opt":
            words = ["python", "-m", "vtrain_opt", *words[1:]]
        self.text("Command line:")
        self.code(shlex.join(words))

    def versions(self) -> None:
        self.text("Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".")

    def table(
        self,
        header: Sequence[str],
        rows: Iterable[Sequence[Any]],
        left: Sequence[int] = (0,),
        wrap: Sequence[int] = (),
        ident: str | None = None,
    ) -> None:
        """A table; columns ``left`` align left, ``wrap`` wrap; a ``Raw`` cell is HTML."""

        def cls(i: int) -> str:
            return ' class="wrap"' if i in wrap else (' class="l"' if i in left else "")

        head = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(header))
        body = []
        for row in rows:
            cells = "".join(
                f"<td{cls(i)}>{c if isinstance(c, Raw) else _e(c)}</td>" for i, c in enumerate(row)
            )
            body.append(f"<tr>{cells}</tr>")
        tid = f' id="{_e(ident)}"' if ident else ""
        self.parts.append(
            f"<table{tid}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )

    def figure(self, fig: dict[str, Any], name: str, height_px: int = 520) -> None:
        """A Plotly figure (a dict: data, layout); the first one of a page carries plotly.js
        (inlined, or the shared file's script tag)."""
        import plotly.io as pio

        if self.figures == 0:
            include: Any = True if self.plotlyjs == "inline" else self.plotlyjs
        else:
            include = False
        self.figures += 1
        traces = fig["data"]
        points = sum(len(t.get("x", t.get("y", ()))) for t in traces)
        markup = pio.to_html(
            fig,
            include_plotlyjs=include,
            full_html=False,
            div_id=f"fig-{name}",
            default_height=f"{height_px}px",
            default_width="100%",
            post_script=_RENDERED,
            config={"displaylogo": False, "responsive": True},
            validate=False,
        )
        self.parts.append(
            f'<div class="figure" id="figure-{_e(name)}" data-expected-traces="{len(traces)}" '
            f'data-expected-points="{points}">{markup}</div>'
        )

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (
            f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n{_ERRORS}\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(self.title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f'<body data-figures="{self.figures}">\n{body}\n'
            f'<p class="note">Written by vtrain_opt {_e(__version__)}.</p>\n</body>\n</html>\n'
        )

    def write(self, path: str | Path) -> Path:
        """Write the page atomically (temporary name, then rename); return its path."""
        target = Path(path)
        text = self.render()
        write_with(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return target


def write_shared_plotlyjs(folder: Path) -> Path:
    """``plotly.min.js`` in ``folder`` for pages that share it (rewritten when it differs)."""
    from plotly.offline import get_plotlyjs

    path = folder / SHARED_PLOTLYJS
    js = get_plotlyjs()
    if not path.is_file() or path.stat().st_size != len(js.encode()):
        write_with(path, lambda tmp: tmp.write_text(js, encoding="utf-8"))
    return path


def versions() -> dict[str, str]:
    """The versions that produced a report: vtrain_opt, Python and the main libraries."""
    out = {"vtrain_opt": __version__, "python": platform.python_version()}
    for name in ("numpy", "pandas", "scipy", "optuna", "plotly"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def pretty_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str, sort_keys=False)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
