"""Collectives over torch.distributed: all-reduce, all-gather, reduce-scatter and send/recv,
over message sizes and group sizes, in one process per device on this machine.

NCCL on GPUs (one process per GPU); gloo on the CPU, which exercises the same code path
with two or more local processes. Each rank times its own calls (the ranks agree on the
number of calls per sample and meet at a barrier before each); the table keeps the
slowest rank's median, as a collective ends when its slowest member does. Every group is
inside this one machine: the tables are marked ``intra_node``, and the simulator uses its
analytical model for groups that span nodes.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

from vtrain_opt.profiler.grid import Grid

KINDS = ("all_reduce", "all_gather", "reduce_scatter")


def group_sizes(world: int) -> list[int]:
    """Powers of two up to the world size, and the world size itself."""
    sizes = [2**e for e in range(1, int(math.log2(world)) + 1)] if world >= 2 else []
    if world >= 2 and world not in sizes:
        sizes.append(world)
    return sizes


def _worker(
    rank: int,
    world: int,
    device_kind: str,
    dtype: str,
    grid: dict[str, Any],
    init_file: str,
    out_dir: str,
) -> None:
    """One rank: measure, and rank 0 writes the tables to ``out_dir/result.json``."""
    try:
        _run_rank(rank, world, device_kind, dtype, grid, init_file, out_dir)
    except BaseException:
        Path(out_dir, f"error-{rank}.txt").write_text(traceback.format_exc())
        raise


def _run_rank(
    rank: int,
    world: int,
    device_kind: str,
    dtype: str,
    grid: dict[str, Any],
    init_file: str,
    out_dir: str,
) -> None:
    import torch
    import torch.distributed as dist

    from vtrain_opt.profiler.kernels import torch_dtype
    from vtrain_opt.profiler.timing import Timer

    if device_kind == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
        backend, tdtype = "nccl", torch_dtype(torch, dtype)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        backend, tdtype = "gloo", torch.float32  # gloo reduces fp32 on every build
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    timer = Timer(torch, device, grid["warmup"], grid["repeats"], grid["min_sample_s"])
    elem = torch.tensor([], dtype=tdtype).element_size()
    sizes = [int(b) for b in grid["collective_bytes"]]
    groups = group_sizes(world)
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    nan = float("nan")
    result: dict[str, Any] = {k: [[nan] * len(sizes) for _ in groups] for k in KINDS}
    spread: dict[str, Any] = {k: [[nan] * len(sizes) for _ in groups] for k in KINDS}

    def slowest(value: float, pg: Any) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=pg)
        return float(t.item())

    def agree_in(pg: Any) -> Any:
        return lambda inner: int(slowest(float(inner), pg))

    for gi, g in enumerate(groups):
        pg = dist.new_group(list(range(g)))  # every rank takes part in creating it
        if rank < g:
            for kind in KINDS:
                for si, nbytes in enumerate(sizes):
                    n = max(g, (nbytes // elem) // g * g)
                    full = torch.zeros(n, dtype=tdtype, device=device)
                    shard = torch.zeros(n // g, dtype=tdtype, device=device)
                    if kind == "all_reduce":
                        fn = partial(dist.all_reduce, full, group=pg)
                    elif kind == "all_gather":
                        fn = partial(all_gather, full, shard, group=pg)
                    else:
                        fn = partial(reduce_scatter, shard, full, group=pg)
                    t = timer.time(
                        fn, agree=agree_in(pg), before_sample=partial(dist.barrier, group=pg)
                    )
                    result[kind][gi][si] = slowest(t.median_s, pg)
                    spread[kind][gi][si] = slowest(t.spread, pg)
                    del full, shard
        dist.barrier()

    # send/recv: ping-pong between ranks 0 and 1, half the round trip
    pair = dist.new_group([0, 1])
    p2p = [nan] * len(sizes)
    p2p_spread = [nan] * len(sizes)
    if rank < 2:
        peer = 1 - rank
        for si, nbytes in enumerate(sizes):
            buf = torch.zeros(max(1, nbytes // elem), dtype=tdtype, device=device)

            def ping(buf: Any = buf) -> None:
                if rank == 0:
                    dist.send(buf, peer)
                    dist.recv(buf, peer)
                else:
                    dist.recv(buf, peer)
                    dist.send(buf, peer)

            t = timer.time(
                ping, agree=agree_in(pair), before_sample=partial(dist.barrier, group=pair)
            )
            p2p[si] = slowest(t.median_s, pair) / 2
            p2p_spread[si] = slowest(t.spread, pair)
            del buf
    dist.barrier()
    if rank == 0:
        out = {
            "backend": backend,
            "world": world,
            "groups": groups,
            "bytes": sizes,
            "element_dtype": str(tdtype).removeprefix("torch."),
            "time_s": {**result, "send_recv": p2p},
            "spread": {**spread, "send_recv": p2p_spread},
        }
        tmp = Path(out_dir, "result.json.tmp")
        tmp.write_text(json.dumps(out))
        os.replace(tmp, Path(out_dir, "result.json"))
    dist.destroy_process_group()


def measure_collectives(
    device_kind: str, world: int, dtype: str, grid: Grid, timeout_s: float = 1800.0
) -> dict[str, Any]:
    """Run one process per device, measure, and return the tables (JSON layout)."""
    if world < 2:
        raise ValueError(f"collectives need at least 2 processes, got {world}")
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="vtrain-collectives-") as tmp:
        init_file = os.path.join(tmp, "store")
        args = (world, device_kind, dtype, grid.to_dict(), init_file, tmp)
        procs = [ctx.Process(target=_worker, args=(r, *args), daemon=True) for r in range(world)]
        try:
            for p in procs:
                p.start()
            deadline = time.monotonic() + timeout_s
            for p in procs:
                p.join(max(0.0, deadline - time.monotonic()))
            if any(p.is_alive() for p in procs):
                raise ValueError(f"collective measurement did not finish within {timeout_s:.0f} s")
        finally:
            for p in procs:  # only the processes started here, by handle
                if p.is_alive():
                    p.terminate()
                    p.join(10)
        errors = sorted(Path(tmp).glob("error-*.txt"))
        if errors or any(p.exitcode != 0 for p in procs):
            detail = errors[0].read_text().strip().splitlines()[-1] if errors else "no message"
            codes = ", ".join(str(p.exitcode) for p in procs)
            raise ValueError(f"collective measurement failed (exit codes {codes}): {detail}")
        raw = json.loads(Path(tmp, "result.json").read_text())
    return _tables(raw)


def _tables(raw: dict[str, Any]) -> dict[str, Any]:
    """The measured times as profile tables (``profile_tables.py`` layout)."""

    def clean(rows: Any) -> Any:
        if isinstance(rows, list):
            return [clean(r) for r in rows]
        return None if rows is None or not math.isfinite(rows) else rows

    info = {
        "backend": raw["backend"],
        "processes": raw["world"],
        "element_dtype": raw["element_dtype"],
    }
    sizes = [float(b) for b in raw["bytes"]]
    tables: dict[str, Any] = {}
    for kind in KINDS:
        tables[kind] = {
            "axes": ["group", "nbytes"],
            "grid": {"group": [float(g) for g in raw["groups"]], "nbytes": sizes},
            "time_s": clean(raw["time_s"][kind]),
            "spread": clean(raw["spread"][kind]),
            "scope": "intra_node",
            "shape": {**info, "nbytes": "the full (unsharded) buffer"},
        }
    tables["send_recv"] = {
        "axes": ["nbytes"],
        "grid": {"nbytes": sizes},
        "time_s": clean(raw["time_s"]["send_recv"]),
        "spread": clean(raw["spread"]["send_recv"]),
        "scope": "intra_node",
        "shape": {**info, "method": "ping-pong between ranks 0 and 1, half the round trip"},
    }
    return tables
