"""``profile``: measure this machine's device with torch and write a measured profile;
``--check`` compares a real model's step time with the simulator's prediction.
``--framework`` picks whose op list is measured (Megatron's fused kernels, plain PyTorch
modules, or both) and which self-check runs."""

from __future__ import annotations

import argparse
import os
import shlex
import time
from pathlib import Path
from typing import Any

from vtrain_opt.commands.common import add_json_arg, positive_int, print_json
from vtrain_opt.console import console
from vtrain_opt.io import write_json_atomic
from vtrain_opt.profiles import Profile, load_profile
from vtrain_opt.spec.setup import DTYPES, FRAMEWORKS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure this machine's device (torch) and write a measured profile",
        description="Measure every op the simulator times (GEMMs, attention, norms, "
        "activations, softmax, dropout, embedding, cross-entropy, the optimizer, memory "
        "bandwidth and, with several devices, collectives) on this machine's device, as "
        "each framework launches them; the host's dispatch cost per layer of a plain PyTorch "
        "model (torch_host_layer_s); and the GEMMs inside a real layer's training step "
        "against the isolated GEMM table (step_gemm_scale). Writes a measured profile that "
        "`simulate --profile` and `search --profile` read. "
        "Needs torch: pip install 'vtrain_opt[profile]'.",
    )
    p.add_argument(
        "--device", choices=("cuda", "cpu"), help="device to measure (default: cuda if visible)"
    )
    p.add_argument(
        "--dtype",
        # fp8 training's non-GEMM ops are bf16: profile in bf16 (no fp8 GEMM table is measured)
        choices=[d for d in DTYPES if d != "fp8"],
        help="compute dtype (default: bf16 on cuda, fp32 on cpu)",
    )
    p.add_argument(
        "--framework",
        choices=("both", *FRAMEWORKS),
        default="both",
        help="whose op list to measure and check: megatron (fused bias-GELU, "
        "bias-dropout-add, mixed-precision Adam; the self-check model built from the "
        "profiled kernels), torch (plain PyTorch modules: GELU, the Linear's bias gradient, "
        "AdamW in the compute dtype, host dispatch, in-step GEMMs; the self-check model "
        "written with standard modules), or both (default)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small grid (under a minute on a CPU): for tests and a first look",
    )
    p.add_argument(
        "--fp8",
        action="store_true",
        help="also time fp8 GEMMs (torch._scaled_mm, bf16 output) into an fp8 GEMM table for "
        "--dtype fp8 simulations; skipped, with a note, where torch or the device has none",
    )
    p.add_argument("--out", metavar="FILE", help="where to write the profile (profiles/NAME.json)")
    p.add_argument("--name", help="profile name (default: the --out file's stem)")
    p.add_argument(
        "--world-size",
        type=positive_int,
        metavar="N",
        help="processes for the collectives (NCCL on GPUs, gloo on the CPU); default: every "
        "visible GPU, 1 (none) on the CPU",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads torch may use (cpu device; default: torch's, or the checked "
        "profile's); 1 is steadiest on a busy machine",
    )
    g = p.add_argument_group("self-check")
    g.add_argument(
        "--check",
        action="store_true",
        help="time a real layer and small model and compare with the simulator's prediction "
        "from the profile (--out's, once measured, or --profile's)",
    )
    g.add_argument("--profile", metavar="NAME|FILE", help="measured profile to check")
    g.add_argument("--family", choices=("gpt", "llama"), help="check model family (default gpt)")
    g.add_argument("--hidden", type=positive_int, metavar="N", help="check model hidden size")
    g.add_argument("--heads", type=positive_int, metavar="N", help="check model attention heads")
    g.add_argument("--layers", type=positive_int, metavar="N", help="check model layers")
    g.add_argument("--seq-len", type=positive_int, metavar="N", help="check model sequence length")
    g.add_argument("--micro-batch", type=positive_int, metavar="N", help="check micro-batch")
    g.add_argument(
        "--accumulation",
        type=positive_int,
        metavar="N",
        help="micro-batches per iteration in the standard-module check (default 2)",
    )
    g.add_argument("--vocab", type=positive_int, metavar="N", help="check model vocabulary")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_json_arg(p)
    p.set_defaults(func=run)


def _check_out(path: str) -> Path:
    """Fail before measuring if the profile could not be written."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--out {path}: is a directory; give a file name, e.g. profiles/NAME.json")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {path}: cannot create its folder ({e.strerror})") from None
    if not os.access(out.parent, os.W_OK | os.X_OK) or (
        out.exists() and not os.access(out, os.W_OK)
    ):
        raise ValueError(f"--out {path}: not writable (permission denied)")
    return out


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console(stderr=True),
        disable=not enabled,
    )


def _shape(args: argparse.Namespace, kind: str) -> Any:
    from dataclasses import replace

    from vtrain_opt.profiler.check import DEFAULT_SHAPES

    changes = {
        "family": args.family,
        "hidden_size": args.hidden,
        "num_attention_heads": args.heads,
        "num_layers": args.layers,
        "seq_length": args.seq_len,
        "micro_batch": args.micro_batch,
        "vocab_size": args.vocab,
        "accumulation": args.accumulation,
    }
    shape = replace(DEFAULT_SHAPES[kind], **{k: v for k, v in changes.items() if v is not None})
    shape.model()  # validates (heads divide hidden, ...)
    return shape


def run(args: argparse.Namespace) -> int:
    from vtrain_opt.profiler import require_torch

    if not args.out and not (args.check and args.profile):
        raise ValueError(
            "give --out FILE (where to write the measured profile, e.g. profiles/NAME.json), "
            "or --check --profile NAME|FILE to check an existing one"
        )
    if args.out and args.profile:
        raise ValueError(
            "give either --out (measure, then check it) or --profile (check it), not both"
        )
    out = _check_out(args.out) if args.out else None
    torch = require_torch()
    from vtrain_opt.profiler.device import describe, resolve_device

    checked: Profile | None = None
    if args.profile:
        checked = load_profile(args.profile)
        if not checked.tables:
            raise ValueError(
                f"profile {checked.name!r} has no measured tables (kind {checked.kind!r}); "
                "check a profile written by `vtrain_opt profile`"
            )
    device_name = args.device or (checked.provenance.get("kind") if checked else None)
    device = resolve_device(torch, device_name)
    kind = "cuda" if device.type == "cuda" else "cpu"
    threads = args.threads or (checked.device.get("num_sms") if checked and kind == "cpu" else None)
    if kind == "cpu" and threads:
        torch.set_num_threads(int(threads))
    dtype = args.dtype or (
        next(iter(checked.tables)) if checked else ("bf16" if kind == "cuda" else "fp32")
    )
    if kind == "cuda" and dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("--dtype bf16: this GPU has no bf16 support; use --dtype fp16")
    shape = _shape(args, kind) if args.check else None
    info = describe(torch, device)
    con = console(stderr=True)
    frameworks = _frameworks(args)
    report: dict[str, Any] = {"device": info["name"], "dtype": dtype, "frameworks": frameworks}

    if checked is None:
        assert out is not None
        profile = _measure(args, torch, device, kind, dtype, info, out, frameworks)
        write_json_atomic(out, profile.to_json_dict())
        report.update(_measure_report(profile, dtype, out))
        if not args.json:
            _print_measure(report)
    else:
        profile = checked
        if dtype not in profile.tables:
            raise ValueError(
                f"--dtype {dtype}: profile {profile.name!r} has tables for "
                f"{', '.join(profile.tables)} only"
            )
        measured_on = profile.provenance.get("device")
        if measured_on and measured_on != info["name"]:
            con.print(
                f"[yellow]note:[/yellow] profile {profile.name!r} was measured on {measured_on}; "
                f"this device is {info['name']}"
            )
        report["profile"] = profile.id

    if args.check:
        from vtrain_opt.profiler.check import self_check

        if not args.no_progress and not args.json:
            con.print("self-check: timing a real layer and model ...")
        assert shape is not None
        result = self_check(torch, device, dtype, profile, shape, frameworks=frameworks)
        result["device"] = info["name"]
        report["check"] = result
        if out is not None:  # keep the check with the profile it judged
            profile.provenance["self_check"] = result
            write_json_atomic(out, profile.to_json_dict())
        if not args.json:
            _print_check(result)
    if args.json:
        print_json(report)
    return 0


def _frameworks(args: argparse.Namespace) -> tuple[str, ...]:
    return FRAMEWORKS if args.framework == "both" else (args.framework,)


def _measure(
    args: argparse.Namespace,
    torch: Any,
    device: Any,
    kind: str,
    dtype: str,
    info: dict[str, Any],
    out: Path,
    frameworks: tuple[str, ...],
) -> Profile:
    from vtrain_opt.profiler.collectives import group_sizes, measure_collectives
    from vtrain_opt.profiler.grid import grid_for
    from vtrain_opt.profiler.ops import measure_fp8_gemm, measure_ops
    from vtrain_opt.profiler.writer import build_profile

    world = args.world_size or (torch.cuda.device_count() if kind == "cuda" else 1)
    if kind == "cuda" and world > torch.cuda.device_count():
        raise ValueError(
            f"--world-size {world}: only {torch.cuda.device_count()} GPU(s) are visible"
        )
    grid = grid_for(kind, args.quick)
    start = time.perf_counter()
    with _progress(not args.no_progress) as bar:
        steps = len(frameworks) + len(grid.step_layers)  # host dispatch, in-step GEMMs
        task = bar.add_task(f"{kind} {dtype} ops", total=grid.count(frameworks) + steps)

        def step(what: str) -> None:
            bar.update(task, advance=1, description=what[:34])

        tables, notes = measure_ops(torch, device, dtype, grid, step, frameworks)
        fp8_gemm = None
        if args.fp8:
            bar.update(task, description="fp8 GEMMs (torch._scaled_mm)")
            fp8_gemm, notes["fp8_gemm"] = measure_fp8_gemm(torch, device, grid, step)
        collectives = None
        if world >= 2:
            bar.update(task, description=f"collectives x{world} processes")
            tables.update(measure_collectives(kind, world, dtype, grid))
            collectives = {
                "backend": "nccl" if kind == "cuda" else "gloo",
                "processes": world,
                "groups": group_sizes(world),
            }
        profile = build_profile(
            name=args.name or out.stem,
            info=info,
            tables={dtype: tables, **({"fp8": {"gemm": fp8_gemm}} if fp8_gemm else {})},
            grid=grid,
            quick=args.quick,
            notes=notes,
            collectives=collectives,
            elapsed_s=time.perf_counter() - start,
            command="python -m vtrain_opt profile " + shlex.join(_argv(args)),
        )
        # the tables are minutes of device time: written now, they survive a failure of
        # the steps below (the file is rewritten with their parameters once they are done)
        write_json_atomic(out, profile.to_json_dict())
        host = _measure_host(torch, device, dtype, frameworks, step)
        instep_framework = "torch" if "torch" in frameworks else "megatron"
        bar.update(task, description="in-step GEMMs (torch.profiler)")
        instep = _measure_instep(torch, device, dtype, grid, instep_framework, step)
    profile.provenance["elapsed_s"] = round(time.perf_counter() - start, 1)
    return _with_host_and_instep(profile, info, dtype, host, instep_framework, instep)


def _measure_host(
    torch: Any, device: Any, dtype: str, frameworks: tuple[str, ...], step: Any
) -> dict[str, Any]:
    from vtrain_opt.profiler.host import measure_host

    out = {}
    for framework in frameworks:
        out[framework] = measure_host(torch, device, dtype, framework)
        step(f"host dispatch ({framework})")
    return out


def _measure_instep(
    torch: Any, device: Any, dtype: str, grid: Any, framework: str, step: Any
) -> list[dict[str, Any]]:
    from vtrain_opt.profiler.instep import measure_step_gemms

    out = []
    for shape in grid.step_layers:
        out += measure_step_gemms(torch, device, dtype, (shape,), framework)
        step(f"in-step GEMMs h={shape[0]}")
    return out


def _with_host_and_instep(
    profile: Profile,
    info: dict[str, Any],
    dtype: str,
    host: dict[str, Any],
    framework: str,
    instep: list[dict[str, Any]],
) -> Profile:
    """The built profile with the host dispatch cost and the in-step GEMM scale measured."""
    from vtrain_opt.profiler.device import host_cpu
    from vtrain_opt.profiler.host import host_source
    from vtrain_opt.profiler.instep import gemm_scale
    from vtrain_opt.profiler.writer import with_measured
    from vtrain_opt.spec.hardware import cluster_for_profile

    cluster = cluster_for_profile(profile)
    scale, source, details = gemm_scale(profile, cluster, dtype, framework, instep)
    values = {"step_gemm_scale": (scale, source)}
    if "torch" in host:
        r = host["torch"]
        values["torch_host_layer_s"] = (r["fwd_s"], host_source(r, host_cpu(), info["kind"]))
    notes = {"host_dispatch": {"host": host_cpu(), **host}, "in_step_gemm": details}
    return with_measured(profile, values, notes)


def _argv(args: argparse.Namespace) -> list[str]:
    """The profile command's options, as a user would type them (for the provenance)."""
    out = []
    for key in ("device", "dtype", "framework", "out", "name", "world_size", "threads"):
        value = getattr(args, key, None)
        if value is not None:
            out += [f"--{key.replace('_', '-')}", str(value)]
    if args.quick:
        out.append("--quick")
    if getattr(args, "fp8", False):
        out.append("--fp8")
    return out


def _measure_report(profile: Profile, dtype: str, out: Path) -> dict[str, Any]:
    from vtrain_opt.profiler.compare import compare
    from vtrain_opt.spec.hardware import cluster_for_profile, gpu_names

    cluster = cluster_for_profile(profile)
    # a catalog GPU: against its shipped analytical profile; else against its own fit
    against = load_profile(profile.gpu) if profile.gpu in gpu_names() else profile
    return {
        "out": str(out),
        "profile": profile.id,
        "gpu": profile.gpu,
        "elapsed_s": profile.provenance.get("elapsed_s"),
        "tables": {op: _points(t) for op, t in profile.tables[dtype].items()},
        "figures": profile.device.get("measured", {}).get(dtype, {}),
        "params": {k: profile.params[k] for k in sorted(profile.params)},
        "measured_params": {
            k: {"value": profile.params[k], "source": profile.sources.get(k, "")}
            for k in ("torch_host_layer_s", "step_gemm_scale")
        },
        "comparison": {
            "against": against.id
            + ("" if against is not profile else " (its own fitted analytical parameters)"),
            "measured_over_analytical": compare(profile, against, cluster, dtype),
        },
    }


def _points(table: dict[str, Any]) -> int:
    import numpy as np

    return int(np.isfinite(np.array(table["time_s"], dtype=np.float64)).sum())


def _print_measure(report: dict[str, Any]) -> None:
    from rich.table import Table

    con = console()
    f = report["figures"]
    con.print(
        f"wrote [b]{report['out']}[/b] ({report['profile']}, gpu {report['gpu']}) in "
        f"{report['elapsed_s']:.0f} s: {sum(report['tables'].values())} measured points, "
        f"{len(report['tables'])} op tables"
    )
    if f:
        con.print(
            f"GEMM best {f['gemm_best_flop_per_s'] / 1e12:.3g} TFLOP/s, attention best "
            f"{f['attention_best_flop_per_s'] / 1e12:.3g} TFLOP/s, memory bandwidth "
            f"{f['copy_large_bytes_per_s'] / 1e9:.3g} GB/s (large copy; "
            f"{f['copy_best_bytes_per_s'] / 1e9:.3g} GB/s at best, in cache)"
        )
    for key, m in report["measured_params"].items():
        con.print(f"{key} = {m['value']:.4g}: {m['source']}")
    comp = report["comparison"]
    table = Table(title=f"measured / analytical ({comp['against']})", title_justify="left")
    for col in ("op", "median", "min", "max", "points"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for op, r in comp["measured_over_analytical"].items():
        table.add_row(
            op, f"{r['median']:.2f}", f"{r['min']:.2f}", f"{r['max']:.2f}", str(r["points"])
        )
    con.print(table)


def _print_check(result: dict[str, Any]) -> None:
    con = console()
    shape = result["shape"]
    con.print(
        f"self-check on {result['device']} ({result['dtype']}), model {shape['family']} "
        f"h={shape['hidden_size']} heads={shape['num_attention_heads']} "
        f"layers={shape['num_layers']} seq={shape['seq_length']}:"
    )
    parts = [result]
    if result.get("megatron_kernels"):
        parts.append(result["megatron_kernels"])
    for part in parts:
        con.print(f" {part['framework']}: {part['implementation']}; {part['plan']}")
        for what in ("layer", "model"):
            r = part[what]
            con.print(
                f"  {what:<6} measured {r['measured_s'] * 1e3:9.3f} ms   predicted "
                f"{r['predicted_s'] * 1e3:9.3f} ms   error {r['error']:+.1%}"
            )
        if part.get("coverage"):
            con.print("  " + part["coverage"]["summary"])
