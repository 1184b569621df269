"""What several test modules share (pytest puts tests/ on sys.path, so ``import helpers``)."""

from __future__ import annotations

import os
from pathlib import Path

# A sweep of 4 scenarios: one ok, one over budget (infeasible), two with a tp that cannot
# split 24 heads.
STATUSES_SWEEP = """\
name: statuses
product:
  budget: [$100k, $1]
  tp: [[1, 2, 4], 5]
search:
  model: megatron-1.7b
  gpu: a100-80gb
  tokens: 10B
  max_gpus: 16
"""


def search_argv(max_gpus: int = 32, **options: str) -> list[str]:
    """A small `search`: llama2-7b on a100-40gb GPUs, 100B tokens, at most ``max_gpus``;
    then ``--name value`` for each of ``options`` in order (underscores as dashes)."""
    argv = ["search", "--model", "llama2-7b", "--gpu", "a100-40gb"]
    argv += ["--max-gpus", str(max_gpus), "--tokens", "100B"]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", value]
    return argv


def session_pids(sid: int) -> list[int]:
    """Live processes of the session ``sid`` (a test's subprocess and the Ray processes it
    started), read from /proc, so a test ends exactly what it started."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(entry))
    return out
