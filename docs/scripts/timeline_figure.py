"""Draw a pipeline timeline (a Gantt chart) from `simulate --trace`'s Chrome trace JSON.

    python -m vtrain_opt simulate ... --trace /tmp/trace.json
    python docs/scripts/timeline_figure.py /tmp/trace.json docs/img/timeline.png --title "..."

One row per pipeline stage (its compute stream, with the stage's data-parallel gradient
reduction and optimizer step on the same row); forward passes in blue, backward in
orange, each labelled with its micro-batch (and model chunk when interleaved).
"""

from __future__ import annotations

import argparse
import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {
    "forward": "#4c78a8",
    "backward": "#f58518",
    "dp_comm": "#54a24b",
    "optimizer": "#b279a2",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("out")
    ap.add_argument("--title", default="")
    args = ap.parse_args()

    with open(args.trace) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    stage_of_pid = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            m = re.fullmatch(r"stage(\d+)", e["args"]["name"])
            if m:
                stage_of_pid[e["pid"]] = int(m.group(1))
    spans = [e for e in events if e.get("ph") == "X" and e.get("pid") in stage_of_pid]
    chunks = max((e.get("args", {}).get("chunk", 0) for e in spans), default=0) + 1
    stages = max(stage_of_pid.values()) + 1

    fig, ax = plt.subplots(figsize=(10, 0.55 * stages + 1.4))
    end_ms = max((e["ts"] + e["dur"]) / 1e3 for e in spans)
    for e in spans:
        row = stage_of_pid[e["pid"]]
        start, dur = e["ts"] / 1e3, e["dur"] / 1e3
        color = COLORS.get(e.get("cat"), "#999999")
        ax.broken_barh([(start, dur)], (row - 0.4, 0.8), facecolors=color, edgecolors="white")
        a = e.get("args", {})
        if "microbatch" in a and dur > 0.015 * end_ms:  # label the bars wide enough
            label = str(a["microbatch"]) + (f".{a['chunk']}" if chunks > 1 else "")
            ax.text(
                start + dur / 2, row, label, ha="center", va="center", fontsize=5.5, color="white"
            )
    ax.set_yticks(range(stages), [f"stage {i}" for i in range(stages)])
    ax.invert_yaxis()
    ax.set_xlim(0, end_ms * 1.01)
    ax.set_xlabel("time (ms)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(
        handles,
        ["forward", "backward", "data-parallel reduction", "optimizer"],
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    if args.title:
        ax.set_title(args.title, fontsize=10, pad=22)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
