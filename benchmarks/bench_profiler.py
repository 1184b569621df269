"""Speed of the profiler and of simulating on a measured profile (issue 6). Prints its
figures; not a timed test.

1. ``profile --quick --device cpu`` end to end (the target: under a minute on a 2-core
   CPU), with one torch thread and with torch's default, and with ``--check``.
2. The simulator core on 1,000,000 random GPT-3 175B plans with that measured profile
   against the same profile without its tables (analytical only), in the same run:
   what the table lookups cost the core, as a ratio.

Run: python benchmarks/bench_profiler.py [--plans N] [--repeats R]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench_simulate import random_plans

from vtrain_opt import get_model, load_profile, make_context
from vtrain_opt.cli import main as cli
from vtrain_opt.sim.step import simulate_arrays
from vtrain_opt.spec.hardware import cluster_for_profile


def run_profile(out: Path, *extra: str) -> tuple[float, dict]:
    argv = ["profile", "--device", "cpu", "--quick", "--out", str(out), "--no-progress", "--json"]
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        assert cli([*argv, *extra]) == 0
    return time.perf_counter() - t0, json.loads(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp, "cpu1.json")
        for label, extra in (
            ("1 thread", ("--threads", "1")),
            ("torch default threads", ()),
            ("1 thread, with --check", ("--threads", "1", "--check")),
        ):
            seconds, report = run_profile(one, *extra)
            line = f"profile --quick --device cpu ({label}): {seconds:.1f} s wall"
            if "check" in report:
                c = report["check"]
                line += (
                    f"; self-check error layer {c['layer']['error']:+.1%}, "
                    f"model {c['model']['error']:+.1%}"
                )
            print(line)
        measured = load_profile(str(one))

    model = get_model("gpt3-175b")
    cluster = cluster_for_profile(measured)
    analytical = replace(measured, tables={})
    batch = random_plans(args.plans)
    rates: dict[str, list[float]] = {"measured": [], "analytical": []}
    for _ in range(args.repeats):
        for name, prof in (("measured", measured), ("analytical", analytical)):
            ctx = make_context(model, cluster, prof)  # fresh: no cached lookups
            t0 = time.perf_counter()
            simulate_arrays(ctx, batch, tokens=300e9)
            rates[name].append(args.plans / (time.perf_counter() - t0))
    m, a = statistics.median(rates["measured"]), statistics.median(rates["analytical"])
    print(
        f"simulate_arrays, GPT-3 175B, {args.plans:,} random plans, medians of {args.repeats}: "
        f"measured profile {m:,.0f} plans/s, same profile without tables {a:,.0f} plans/s "
        f"(ratio {m / a:.2f})"
    )


if __name__ == "__main__":
    main()
