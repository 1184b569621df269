"""Speed of the simulator core (issue 2). Prints its figures; not a timed test.

1. The vectorized core on 1,000,000 random plans of GPT-3 175B, on one core:
   prints "N plans/s" (median of repeated runs) and the first (cold) run.
2. The reference event-driven replay of MT-NLG 530B on 3,360 A100s (tp 8, pp 35,
   micro-batch 1, global batch 1920): seconds per plan, and its agreement with the core.

Run: python benchmarks/bench_simulate.py [--plans N] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: numpy's elementwise ops are serial

import numpy as np

from vtrain_opt import ParallelPlan, PlanBatch, get_cluster, get_model, make_context
from vtrain_opt.sim.step import simulate_arrays
from vtrain_opt.sim.timeline import reference


def random_plans(n: int, seed: int = 0) -> PlanBatch:
    """Random plans of GPT-3 175B over every dimension (some break a rule, as in a raw search)."""
    rng = np.random.default_rng(seed)
    layers = 96
    pp_choices = [d for d in range(1, layers + 1) if layers % d == 0]
    tp = rng.choice([1, 2, 4, 8, 16], n)
    return PlanBatch(
        tp=tp,
        pp=rng.choice(pp_choices, n),
        dp=rng.choice([1, 2, 4, 8, 16, 32, 64, 128], n),
        mb=rng.choice([1, 2, 4, 8], n),
        gb=rng.choice([512, 1024, 1536, 2048], n),
        recompute=rng.integers(0, 3, n),
        sp=(rng.random(n) < 0.5) & (tp > 1),
        vpp=rng.choice([1, 1, 2, 3, 4], n),
        zero=rng.choice([0, 1], n),
        dp_overlap=rng.random(n) < 0.5,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    model, cluster = get_model("gpt3-175b"), get_cluster("a100-80gb")
    ctx = make_context(model, cluster)
    batch = random_plans(args.plans)
    # the same number of plans that all pass the rules (as a search space holds)
    valid = np.flatnonzero(batch.check(model) == 0)
    all_valid = batch.take(np.resize(valid, args.plans))
    for label, plans in (("random plans", batch), ("valid plans", all_valid)):
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = simulate_arrays(ctx, plans, tokens=300e9)
            rates.append(args.plans / (time.perf_counter() - t0))
        share = np.mean(~np.isnan(out["iteration_time_s"]))
        print(
            f"simulate_arrays, GPT-3 175B, {args.plans:,} {label} ({share:.0%} pass the "
            "rules; the others are marked, not simulated), one core:"
        )
        print(
            f"  {statistics.median(rates):,.0f} plans/s (median of {args.repeats}; "
            f"first run {rates[0]:,.0f}, best {max(rates):,.0f})"
        )

    mtnlg = get_model("mt-nlg-530b")
    ctx = make_context(mtnlg, cluster)
    plan = ParallelPlan(tp=8, pp=35, dp=12, micro_batch=1, global_batch=1920, recompute="full")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        ref = reference(ctx, plan)
        times.append(time.perf_counter() - t0)
    core = simulate_arrays(ctx, PlanBatch.from_plans([plan]))["iteration_time_s"][0]
    print(
        "reference replay, MT-NLG 530B on 3,360 A100 (tp 8, pp 35, mb 1, gb 1920, "
        f"{len(ref.graph.tasks):,} tasks):"
    )
    print(
        f"  {statistics.median(times):.3f} s per plan (median of 3); "
        f"iteration {ref.iteration_time_s:.3f} s vs core {core:.3f} s "
        f"(rel. diff {abs(ref.iteration_time_s - core) / core:.1e})"
    )


if __name__ == "__main__":
    main()
