"""The pipeline timeline of one plan for the HTML reports, from the reference replay.

The replay (``sim.timeline.reference``) gives its task timeline as a Chrome/Perfetto trace,
as ``simulate --trace`` writes it; this module reads that trace: one row per pipeline
stage with its forward and backward passes (per micro-batch and model chunk), its exposed
data-parallel reduction and its optimizer step. The transfers between stages run on their
own links and are left out of the rows. A timeline of very many tasks shows an even subset
of the stages (the first and the last always), and says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vtrain_opt.search.evaluate import plan_of_row
from vtrain_opt.search.reporting.page import Page

# The most tasks drawn (bars); beyond, fewer stages are shown.
MAX_TIMELINE_TASKS = 30_000
CATEGORIES = {  # trace category -> (legend name, colour)
    "forward": ("forward", "#4c78a8"),
    "backward": ("backward", "#f58518"),
    "dp_comm": ("data-parallel reduction", "#54a24b"),
    "optimizer": ("optimizer step", "#b279a2"),
}
_STAGE = re.compile(r"^stage(\d+)/")


@dataclass
class Timeline:
    """A timeline figure, what it shows and its height."""

    figure: dict[str, Any]
    stages: int  # stages of the plan
    shown: list[int]  # stages drawn
    tasks: int  # bars drawn
    makespan_s: float

    @property
    def height_px(self) -> int:
        return max(300, 140 + 30 * len(self.shown))


def timeline_section(page: Page, ctx: Any, row: Mapping[str, Any]) -> None:
    """The timeline of the plan of result row ``row`` on ``ctx`` (its GPU type's simulator
    context), and what it shows, into ``page``; or why the replay could not draw it."""
    plan = plan_of_row(row)
    try:
        trace, replay_s = plan_trace(ctx, plan)
    except (ValueError, RuntimeError) as e:  # a plan the replay cannot draw: say why
        page.text(f"No timeline: the reference replay of this plan failed ({e}).", note=True)
        return
    tl = timeline_figure(trace, f"{int(row['num_gpus']):,} × {row['gpu']}, {plan.describe()}")
    page.figure(tl.figure, "timeline", height_px=tl.height_px)
    page.text(
        f"One iteration replayed task by task (the reference simulator): {replay_s:.4g} s, "
        f"against {float(row['iteration_time_s']):.4g} s from the vectorized core. Each stage "
        "runs its forward and backward passes per micro-batch (and model chunk, interleaved), "
        "then its exposed data-parallel reduction and its optimizer step; transfers between "
        "stages run on their own links and are not drawn. The whole trace: simulate --trace.",
        note=True,
    )
    if len(tl.shown) < tl.stages:
        page.text(
            f"{len(tl.shown)} of the {tl.stages} stages are drawn ({tl.tasks:,} tasks): "
            f"stages {', '.join(map(str, tl.shown))}.",
            note=True,
        )


def plan_trace(ctx: Any, plan: Any) -> tuple[dict[str, Any], float]:
    """The reference replay of ``plan`` on ``ctx``: its Chrome trace and iteration time."""
    from vtrain_opt.sim.timeline import reference

    ref = reference(ctx, plan)
    return ref.chrome_trace(), float(ref.iteration_time_s)


def timeline_figure(trace: Mapping[str, Any], title: str) -> Timeline:
    """Bars per stage from a Chrome trace's complete events (times in microseconds)."""
    events = list(trace.get("traceEvents", []))
    threads = {
        (e.get("pid"), e.get("tid")): str(e.get("args", {}).get("name", ""))
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    by_stage: dict[int, list[dict[str, Any]]] = {}
    end_us = 0.0
    for e in events:
        if e.get("ph") != "X":
            continue
        end_us = max(end_us, float(e["ts"]) + float(e["dur"]))
        m = _STAGE.match(threads.get((e.get("pid"), e.get("tid")), ""))
        if m and e.get("cat") in CATEGORIES:
            by_stage.setdefault(int(m.group(1)), []).append(e)
    stages = sorted(by_stage)
    shown = _pick_stages(stages, {s: len(v) for s, v in by_stage.items()})
    rows = [f"stage {s}" for s in shown]
    data = []
    drawn = 0
    for cat, (name, color) in CATEGORIES.items():
        y, base, width, text = [], [], [], []
        for s in shown:
            for e in by_stage[s]:
                if e.get("cat") != cat:
                    continue
                start_ms, dur_ms = float(e["ts"]) / 1e3, float(e["dur"]) / 1e3
                y.append(f"stage {s}")
                base.append(round(start_ms, 4))
                width.append(round(dur_ms, 4))
                text.append(
                    f"stage {s}: {e.get('name')}<br>{start_ms:,.2f} → {start_ms + dur_ms:,.2f} ms "
                    f"({dur_ms:,.2f} ms)"
                )
        if not y:
            continue
        drawn += len(y)
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": name,
                "y": y,
                "x": width,
                "base": base,
                "marker": {"color": color, "line": {"width": 0.3, "color": "white"}},
                "text": text,
                "textposition": "none",
                "hovertemplate": "%{text}<extra></extra>",
            }
        )
    layout = {
        "title": {"text": title, "x": 0.01, "font": {"size": 15}},
        "barmode": "overlay",
        "bargap": 0.25,
        "plot_bgcolor": "white",
        "hovermode": "closest",
        "hoverlabel": {"align": "left"},
        "margin": {"l": 80, "r": 20, "t": 60, "b": 55},
        "xaxis": {"title": {"text": "time in the iteration (ms)"}, "gridcolor": "#e4e7eb"},
        "yaxis": {
            "type": "category",
            "categoryorder": "array",
            "categoryarray": rows,
            "autorange": "reversed",
            "automargin": True,
        },
    }
    return Timeline({"data": data, "layout": layout}, len(stages), shown, drawn, end_us / 1e6)


def _pick_stages(stages: list[int], tasks: Mapping[int, int]) -> list[int]:
    """Every stage when their tasks fit MAX_TIMELINE_TASKS, else an even subset with the
    first and the last stage."""
    if sum(tasks.values()) <= MAX_TIMELINE_TASKS or len(stages) <= 2:
        return stages
    per = max(tasks.values())
    k = max(2, MAX_TIMELINE_TASKS // max(per, 1))
    idx = sorted({round(i * (len(stages) - 1) / (k - 1)) for i in range(k)})
    return [stages[i] for i in idx]
