"""Speed and quality of the search engine (issue 4). Prints its figures; not a timed test.

1. Exhaustive: the MT-NLG 530B space (search_spaces/mt-nlg-530b.yaml: A100-80GB, 8 to
   4,096 GPUs in whole nodes, global batch 1920, every recompute mode, tp up to 8, pp any
   divisor of the 105 layers, micro-batches powers of two, sp on/off, interleaving, ZeRO
   0-3): its plan count and the wall time of a whole search (enumeration, simulation,
   reductions), in this process. Target: under 10 s. Also a larger space (GPT-3 175B on
   five GPU types, 6 global batches, up to 16,384 GPUs) for the rate on millions of plans.
2. Optuna on the MT-NLG space: trials (and distinct plans simulated) until the best
   feasible plan is within 1% of the exhaustive optimum, per seed, and the median over the
   seeds, for the time and the cost objectives; with the default inner dimensions and with
   none (a trial is a single plan). Target: median under 500 trials.
4. Today's dense dimensions (issue 15): the shipped llama3-405b space (H100/H200/B200, 64
   to 16,384 GPUs, cp 1-16, bf16 and fp8 per plan, stage_layers auto: even and uneven
   pipeline splits) searched exactly, its plans/s beside the same space as it was before
   those dimensions (even stages, bf16, no cp, pp the divisors of 126). Target: under 60 s.
3. Ray: a small space searched in-process (--workers 0) and on a local 2-worker Ray started
   by the search (cold: includes starting Ray), then on an already running Ray (warm);
   the larger space in-process and on Ray. Ratios within this run.

Run: python benchmarks/bench_search.py [--seeds 5] [--max-trials 1000] [--skip-ray]
     [--only-dense]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np

from vtrain_opt import get_model
from vtrain_opt.search import SearchSpace, search
from vtrain_opt.search.exhaustive import raw_size
from vtrain_opt.search.optuna_search import DEFAULT_INNER
from vtrain_opt.search.spacefile import load_space

warnings.filterwarnings("ignore")


def timed(fn, repeats: int = 3):  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def large_space() -> SearchSpace:
    return SearchSpace.create(
        get_model("gpt3-175b"),
        ["a100-40gb", "a100-80gb", "h100-sxm", "h200", "b200"],
        max_gpus=16384,
        global_batch=[512, 768, 1024, 1536, 2048, 3072],
        dp_overlap=[False, True],
    )


def exhaustive_figures() -> dict[str, float]:
    space = load_space("mt-nlg-530b")
    t_count, _, size = timed(lambda: load_space("mt-nlg-530b").size, 3)
    med, times, res = timed(lambda: search(space, strategy="exhaustive"), 5)
    print("== 1. exhaustive, MT-NLG 530B space (in-process, one core)")
    print(f"plans in the space: {size:,} (raw core x extras product {raw_size(space):,})")
    print(f"counting them (enumeration only): {t_count:.3f} s")
    print(
        f"whole search: {med:.3f} s median of {len(times)} "
        f"({', '.join(f'{t:.3f}' for t in times)}), {res.evaluated / med:,.0f} plans/s; "
        f"feasible {res.feasible:,}; front {len(res.pareto)} plans"
    )
    bt, bc = res.best_time, res.best_cost
    print(
        f"fastest: {int(bt['num_gpus'])} GPUs tp{bt['tp']} pp{bt['pp']} dp{bt['dp']} "
        f"mb{bt['micro_batch']} {bt['recompute']} sp={bt['sequence_parallel']} vpp{bt['vpp']} "
        f"zero{bt['zero']}: {bt['training_time_s'] / 86400:.2f} days, ${bt['cost_usd'] / 1e6:.3f}M"
    )
    print(
        f"cheapest: {int(bc['num_gpus'])} GPUs tp{bc['tp']} pp{bc['pp']} dp{bc['dp']} "
        f"mb{bc['micro_batch']} {bc['recompute']} vpp{bc['vpp']} zero{bc['zero']}: "
        f"{bc['training_time_s'] / 86400:.2f} days, ${bc['cost_usd'] / 1e6:.3f}M"
    )
    big = large_space()
    med_big, times_big, res_big = timed(lambda: search(big, 300e9, strategy="exhaustive"), 2)
    print(
        f"larger space (GPT-3 175B, 5 GPU types, 6 batches, up to 16,384 GPUs): "
        f"{res_big.evaluated:,} plans in {med_big:.2f} s "
        f"({', '.join(f'{t:.2f}' for t in times_big)}), {res_big.evaluated / med_big:,.0f} plans/s"
    )
    return {"mt_s": med, "big_s": med_big}


def optuna_figures(seeds: int, max_trials: int) -> None:
    space = load_space("mt-nlg-530b")
    exact = search(space, strategy="exhaustive")
    optimum = {
        "time": float(exact.best_time["training_time_s"]),
        "cost": float(exact.best_cost["cost_usd"]),
    }
    print("\n== 2. Optuna (TPE, batches of 16) on the MT-NLG space: trials to within 1%")
    for inner, label in ((DEFAULT_INNER, "inner=" + ",".join(DEFAULT_INNER)), ((), "inner=none")):
        for objective in ("time", "cost"):
            trials, plans, walls, final = [], [], [], []
            for seed in range(seeds):
                t0 = time.perf_counter()
                r = search(
                    space,
                    strategy="optuna",
                    objective=objective,
                    trials=max_trials,
                    seed=seed,
                    inner=inner,
                )
                walls.append(time.perf_counter() - t0)
                h = r.history
                v = np.where(h["feasible"], h["value0"], np.inf)
                best = np.minimum.accumulate(v)
                hit = np.flatnonzero(best <= 1.01 * optimum[objective])
                trials.append(int(hit[0]) + 1 if hit.size else None)
                plans.append(int(h["evaluated"].iloc[hit[0]]) if hit.size else None)
                final.append(best[-1] / optimum[objective])
            found = sorted(t if t is not None else np.inf for t in trials)
            median = statistics.median(found)
            print(
                f"{label:<60} {objective:<4}: trials per seed {trials} -> median "
                f"{'>' + str(max_trials) if median == np.inf else int(median)}; plans simulated "
                f"at that point {plans} (space {exact.evaluated:,}); best after {max_trials} "
                f"trials / optimum: {', '.join(f'{x:.4f}' for x in final)}; "
                f"{statistics.median(walls):.1f} s per {max_trials}-trial run"
            )


def ray_figures(big_in_process_s: float) -> None:
    from vtrain_opt.search.ray_backend import RayBackend

    small = SearchSpace.create(get_model("gpt3-175b"), ["a100-80gb"], max_gpus=256)
    print(f"\n== 3. Ray overhead (small space: GPT-3 175B up to 256 A100s, {small.size:,} plans)")
    here, here_times, r0 = timed(lambda: search(small, 300e9, strategy="exhaustive", workers=0), 5)
    t0 = time.perf_counter()
    r1 = search(small, 300e9, strategy="exhaustive", workers=2)  # starts and stops Ray
    cold = time.perf_counter() - t0
    with RayBackend(workers=2):  # a running runtime: the search reuses it
        warm, _, r2 = timed(lambda: search(small, 300e9, strategy="exhaustive", workers=2), 5)
        opt_here, _, o0 = timed(
            lambda: search(small, 300e9, strategy="optuna", trials=200, workers=0), 3
        )
        opt_ray, _, o1 = timed(
            lambda: search(small, 300e9, strategy="optuna", trials=200, workers=2), 3
        )
        big = large_space()
        big_ray, _, rb = timed(lambda: search(big, 300e9, strategy="exhaustive", workers=2), 2)
    same = r0.pareto.equals(r1.pareto) and r0.pareto.equals(r2.pareto)
    print(
        f"exhaustive, --workers 0: {here:.3f} s median ({', '.join(f'{t:.3f}' for t in here_times)})"
    )
    print(f"exhaustive, 2 Ray workers, cold (starts Ray): {cold:.2f} s = {cold / here:.0f}x")
    print(f"exhaustive, 2 Ray workers, warm: {warm:.3f} s median = {warm / here:.2f}x")
    print(
        f"optuna 200 trials: in-process {opt_here:.2f} s, one Ray task per batch (warm) "
        f"{opt_ray:.2f} s = {opt_ray / opt_here:.2f}x; same history: "
        f"{o0.history.equals(o1.history)}"
    )
    print(f"same Pareto front with and without Ray: {same}")
    print(
        f"larger space ({rb.evaluated:,} plans): in-process {big_in_process_s:.2f} s, "
        f"2 Ray workers (warm) {big_ray:.2f} s = {big_ray / big_in_process_s:.2f}x"
    )


def dense_dims_figures() -> None:
    new = load_space("llama3-405b")
    old = SearchSpace.create(  # the space as shipped before cp, fp8 and the split were free
        new.model,
        list(new.gpus),
        min_gpus=64,
        max_gpus=16384,
        global_batch=2048,
        micro_batch=[1, 2, 4],
        zero=[0, 1],
        dp_overlap=True,
        tokens=new.tokens,
        name="llama3-405b-before",
    )
    print("\n== 4. exhaustive, llama3-405b: today's dense dimensions (in-process, one core)")
    for label, space, repeats in (("before (even, bf16, no cp)", old, 3), ("shipped", new, 1)):
        med, _, res = timed(lambda s=space: search(s, strategy="exhaustive"), repeats)
        bt = res.best_time
        print(
            f"{label:<27} {res.evaluated:>9,} plans (raw {raw_size(space):,}) in {med:6.2f} s "
            f"= {res.evaluated / med:>9,.0f} plans/s; fastest {int(bt['num_gpus'])} x "
            f"{bt['gpu']} {bt['dtype']} tp{bt['tp']} cp{bt['cp']} pp{bt['pp']} dp{bt['dp']} "
            f"vpp{bt['vpp']} stages {bt['first_stage_layers']}/{bt['last_stage_layers']}: "
            f"{bt['training_time_s'] / 86400:.1f} days"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-trials", type=int, default=1000)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-optuna", action="store_true")
    ap.add_argument("--only-dense", action="store_true", help="part 4 alone")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs")
    if args.only_dense:
        dense_dims_figures()
        return
    ex = exhaustive_figures()
    if not args.skip_optuna:
        optuna_figures(args.seeds, args.max_trials)
    dense_dims_figures()
    if not args.skip_ray:
        ray_figures(ex["big_s"])


if __name__ == "__main__":
    main()
