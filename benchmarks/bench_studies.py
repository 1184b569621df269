"""Benchmark the studies; prints its figures (never a timed test).

1. The compute-optimal study at 30 days on 3,360 A100-80GB: wall time in this process
   and on local Ray, N*, D*, the ideal answer and the law at N*'s MFU beside them (Epoch's
   fit, the default, and Hoffmann's).
2. A 240-scenario sweep: wall time on local Ray vs in-process (one command each, Ray
   started and stopped inside it).
3. The same sweep killed with SIGKILL mid-run, then resumed: every scenario present
   exactly once and equal to the uninterrupted run.

Run: python benchmarks/bench_studies.py [--skip-kill]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """\
name: bench-240
product:
  model: [gpt3-175b, llama3-70b, llama2-7b, megatron-18b, llama3-8b]
  gpu: [a100-80gb, h100-sxm, h200, b200]
  max_gpus: [256, 1024, 4096]
  tokens: [300B, 1T]
  objective: [time, cost]
"""
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


def cli(*args: str) -> tuple[float, dict]:
    """Run ``python -m vtrain_opt ARGS --json`` in a fresh process; (wall seconds, JSON)."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "vtrain_opt", *args, "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, json.loads(done.stdout)


def chinchilla(tmp: Path) -> None:
    print("== chinchilla: 30 days on 3,360 A100-80GB (24 sizes, 0.5B..1T, GPT shapes) ==")
    base = ["chinchilla", "--gpu", "a100-80gb", "--num-gpus", "3360", "--days", "30"]
    for label, extra in (
        ("in-process (--workers 0)", ["--workers", "0"]),
        ("local Ray (2 workers)", ["--workers", "2"]),
    ):
        wall, doc = cli(*base, *extra, "--out", str(tmp / "ch"))
        print(
            f"  {label}: {wall:.1f} s wall for the command "
            f"({doc['elapsed_s']:.1f} s in the study, {doc['backend']})"
        )
    for fit in ("epoch", "hoffmann"):
        _, doc = cli(*base, "--workers", "0", "--loss-fit", fit, "--out", str(tmp / fit))
        o, i, g = doc["optimal"], doc["ideal"], doc["gap"]
        p = o["plan"]
        print(f"  [{fit} fit]")
        print(
            f"    real plans:  N* = {o['params'] / 1e9:.1f}B, D* = {o['tokens'] / 1e12:.2f}T, "
            f"{o['tokens_per_param']:.1f} tokens/param, loss {o['loss']:.4f}, MFU {o['mfu']:.1%}, "
            f"{o['days']:.0f} days, ${o['cost_usd'] / 1e6:.2f}M on {p['num_gpus']} GPUs "
            f"(tp{p['tp']} pp{p['pp']} dp{p['dp']} mb{p['micro_batch']} gb{p['global_batch']} "
            f"{p['recompute']} vpp{p['vpp']} zero{p['zero']})"
        )
        print(
            f"    ideal (MFU 100%, C = {i['compute_flop']:.3g} FLOP): N = {i['params'] / 1e9:.1f}B, "
            f"D = {i['tokens'] / 1e12:.2f}T, {i['tokens_per_param']:.1f} tokens/param, "
            f"loss {i['loss']:.4f}"
        )
        m = doc["law_at_real_mfu"]
        print(
            f"    law at N*'s MFU {m['mfu']:.1%} (C = {m['compute_flop']:.3g} FLOP): "
            f"N = {m['params'] / 1e9:.1f}B, D = {m['tokens'] / 1e12:.2f}T, "
            f"{m['tokens_per_param']:.1f} tokens/param, loss {m['loss']:.4f}"
        )
        r = i["rule"]
        print(
            f"    20 tokens/param rule: N = {r['params'] / 1e9:.1f}B, D = {r['tokens'] / 1e12:.2f}T, "
            f"loss {r['loss']:.4f}; on real plans that size reaches loss "
            f"{r['real']['loss']:.4f} ({r['real']['tokens_per_param']:.1f} tokens/param)"
        )
        print(
            f"    gap: N*/N_ideal = {g['params_ratio']:.2f}, D*/D_ideal = {g['tokens_ratio']:.2f}, "
            f"loss {g['loss_delta']:+.4f}; 6ND / (GPU time x peak) = {g['utilization_6nd']:.1%}"
        )


def sweep(tmp: Path, kill: bool) -> None:
    path = tmp / "bench-240.yaml"
    path.write_text(SWEEP)
    print(
        "== sweep: 240 scenarios (5 models x 4 GPUs x 3 GPU caps x 2 token targets x 2 objectives) =="
    )
    ray_wall, ray_doc = cli("sweep", str(path), "--workers", "2", "--out", str(tmp / "ray"))
    here_wall, here_doc = cli("sweep", str(path), "--workers", "0", "--out", str(tmp / "here"))
    print(
        f"  local Ray (2 workers): {ray_wall:.1f} s wall ({ray_doc['wall_s']:.1f} s running), "
        f"statuses {ray_doc['statuses']}"
    )
    print(
        f"  in-process:            {here_wall:.1f} s wall ({here_doc['wall_s']:.1f} s running); "
        f"Ray / in-process wall = {ray_wall / here_wall:.2f}"
    )
    same = _comparable(tmp / "ray") == _comparable(tmp / "here")
    print(f"  Ray and in-process records identical (timing fields aside): {same}")
    if not kill:
        return
    out = tmp / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vtrain_opt",
            "sweep",
            str(path),
            "--workers",
            "2",
            "--out",
            str(out),
            "--no-plot",
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    folder = out / "scenarios"
    while proc.poll() is None:
        if folder.is_dir() and len(list(folder.glob("*.json"))) >= 80:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = len(list(folder.glob("*.json")))
    wall, doc = cli("sweep", str(path), "--workers", "2", "--out", str(out))
    files = list(folder.iterdir())
    ids = [f.stem for f in files]
    print(
        f"  SIGKILL of the sweep's process group with {at_kill}/240 written; resume ran "
        f"{doc['ran']} (skipped {doc['skipped']}) in {wall:.1f} s"
    )
    print(
        f"  after resume: {len(files)} files, {len(set(ids))} distinct ids, "
        f"equal to the uninterrupted run: {_comparable(out) == _comparable(tmp / 'ray')}"
    )


def _comparable(folder: Path) -> dict[str, dict]:
    from vtrain_opt.studies.sweep import comparable

    return {
        f.stem: comparable(json.loads(f.read_text())) for f in (folder / "scenarios").glob("*.json")
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-kill", action="store_true", help="skip the kill-and-resume run")
    ap.add_argument("--only", choices=("chinchilla", "sweep"), help="run one part")
    args = ap.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load}; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only in (None, "chinchilla"):
            chinchilla(tmp)
        if args.only in (None, "sweep"):
            sweep(tmp, kill=not args.skip_kill)


if __name__ == "__main__":
    main()
