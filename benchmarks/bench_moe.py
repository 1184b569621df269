"""Mixture-of-Experts (issue 16): the core's speed on MoE plans, the shipped deepseek-v3 space
searched exactly, and DeepSeek-V3's pre-training predicted against its report. Prints its
figures; not a timed test.

1. The vectorized core on random plans of DeepSeek-V3 (MLA, 256 experts, ep 1-256, etp 1-2,
   even and 3/2 pipeline splits) on 2,048-16,384 H800s, one core: plans/s.
2. ``search_spaces/deepseek-v3.yaml`` searched exhaustively: plans, seconds, the best plans.
3. DeepSeek-V3 as published (DeepSeek-AI 2024, Sec. 3: 2,048 H800s, pp 16, ep 64 over 8
   nodes, ZeRO-1 data parallelism, FP8 GEMMs, sequence 4,096, 15,360 sequences a batch,
   14.8T tokens): predicted H800 GPU-hours against the reported 2.664M, for the dispatch
   and overlap settings and the recomputation modes (the report overlaps the all-to-all
   with DualPipe and limits each token to 4 nodes; it recomputes norms and MLA
   up-projections, between our 'selective' and 'full'). The report trains with a depth-1
   multi-token-prediction module (the catalog's ``mtp_num_layers: 1``) on the last stage;
   the pipeline split is not published: 4 + 14 x 4 + 1 and 3 + 14 x 4 + 2 are shown, with
   and without the MTP module.

Run: python benchmarks/bench_moe.py [--plans N] [--repeats R] [--workers W]
(the space is searched in-process, then on W local Ray workers; 0: in-process only)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from vtrain_opt import ParallelPlan, PlanBatch, get_cluster, get_model, make_context, simulate
from vtrain_opt.search.engine import search
from vtrain_opt.search.spacefile import load_space
from vtrain_opt.sim.step import simulate_arrays
from vtrain_opt.spec.setup import Setup

REPORTED_GPU_HOURS = 2.664e6  # DeepSeek-V3 Technical Report, Table 1: pre-training
TOKENS = 14.8e12


def random_moe_plans(n: int, seed: int = 0) -> PlanBatch:
    """Random DeepSeek-V3 plans (some break a rule, as in a raw search)."""
    rng = np.random.default_rng(seed)
    tp = rng.choice([1, 2, 4, 8], n)
    even = rng.random(n) < 0.5
    return PlanBatch(
        tp=tp,
        pp=np.where(even, 1, 16),
        dp=rng.choice([128, 256, 512, 1024], n),
        mb=rng.choice([1, 2], n),
        gb=15360,
        recompute=rng.integers(0, 3, n),
        sp=tp > 1,
        zero=1,
        ep=rng.choice([1, 8, 16, 32, 64, 128, 256], n),
        etp=rng.choice([1, 1, 2], n),
        first=np.where(even, 0, 3),
        last=np.where(even, 0, 2),
    )


def core_speed(plans: int, repeats: int) -> None:
    model, cluster = get_model("deepseek-v3"), get_cluster("h800")
    ctx = make_context(model, cluster, setup=Setup(dtype="fp8", moe_node_limit=4))
    batch = random_moe_plans(plans)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = simulate_arrays(ctx, batch, tokens=TOKENS)
        rates.append(plans / (time.perf_counter() - t0))
    share = np.mean(~np.isnan(out["iteration_time_s"]))
    print(
        f"simulate_arrays, DeepSeek-V3 (MLA, 256 experts), {plans:,} random plans "
        f"({share:.0%} pass the rules), one core:"
    )
    print(
        f"  {statistics.median(rates):,.0f} plans/s (median of {repeats}; first run "
        f"{rates[0]:,.0f}, best {max(rates):,.0f})"
    )


def space_search(workers: int) -> None:
    space = load_space("search_spaces/deepseek-v3.yaml")
    t0 = time.perf_counter()
    result = search(space, strategy="exhaustive", workers=workers)
    elapsed = time.perf_counter() - t0
    print(
        f"search_spaces/deepseek-v3.yaml exhaustively, {workers or 'in-process'} worker(s): "
        f"{result.space_size:,} plans in {elapsed:.1f} s ({int(result.plans.feasible.sum()):,} "
        "feasible)"
    )
    for label, row in (("fastest", result.best_time), ("cheapest", result.best_cost)):
        print(
            f"  {label}: {int(row.num_gpus):,} GPUs tp {int(row.tp)} pp {int(row.pp)} "
            f"dp {int(row.dp)} ep {int(row.ep)} mb {int(row.micro_batch)} "
            f"recompute {row.recompute}: {row.training_time_s / 86400:.1f} days, "
            f"{row.gpu_hours / 1e6:.3f}M GPU-hours, MFU {row.mfu:.1%}"
        )


def published() -> None:
    model, cluster = get_model("deepseek-v3"), get_cluster("h800")
    without_mtp = replace(model, mtp_num_layers=0, name="deepseek-v3 without MTP")
    print(
        "DeepSeek-V3 as published: 2,048 H800s, pp 16 (first + 14 x 4 + last layers), ep 64, "
        "dp 128, ZeRO-1, fp8, mb 1, gb 15,360 x 4,096, 14.8T tokens; reported 2.664M GPU-hours"
    )
    # (label, setup, whether the model keeps its group-limited routing: 4 of 8 nodes)
    settings = (
        ("NCCL all-to-all (routing limit removed), not overlapped", {}, False),
        ("node-limited dispatch (the model's routing: 4 nodes)", {}, True),
        ("all-to-all overlapped (routing limit removed)", {"moe_a2a_overlap": True}, False),
        ("as the report: node-limited + overlapped", {"moe_a2a_overlap": True}, True),
    )
    for m, split in (
        (model, (4, 1)),
        (model, (3, 2)),
        (without_mtp, (4, 1)),
        (without_mtp, (3, 2)),
    ):
        plans = [
            ParallelPlan(
                pp=16,
                dp=128,
                ep=64,
                micro_batch=1,
                global_batch=15360,
                zero=1,
                first_stage_layers=split[0],
                last_stage_layers=split[1],
                recompute=r,
            )
            for r in ("none", "selective", "full")
        ]
        mtp = "with its MTP module" if m.mtp_num_layers else "without MTP"
        print(f" {mtp}, stages {split[0]} + 14 x 4 + {split[1]}:")
        for label, kwargs, grouped in settings:
            routed = (
                m if grouped else replace(m, moe_router_num_groups=None, moe_router_group_topk=None)
            )
            df = simulate(routed, cluster, plans, setup=Setup(dtype="fp8", **kwargs), tokens=TOKENS)
            cells = []
            for _, row in df.iterrows():
                fits = "fits" if row.feasible else f"OOM {row.memory_per_gpu_bytes / 2**30:.0f} GiB"
                err = row.gpu_hours / REPORTED_GPU_HOURS - 1
                cells.append(f"{row.recompute} {row.gpu_hours / 1e6:.3f}M ({err:+.1%}, {fits})")
            print(f"  {label}: " + "; ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    core_speed(args.plans, args.repeats)
    space_search(0)
    if args.workers:
        space_search(args.workers)
    published()


if __name__ == "__main__":
    main()
