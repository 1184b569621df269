"""Time real training iterations of the plain PyTorch GPT (``torch_model.py``, the shared
Hopper runs' implementation) and write them as a CSV in the shared set's columns
(``../shared/data/hopper/h200_gpt_single_gpu.csv``), for ``validate`` and calibration.

    python -m vtrain_opt.profiler.steps --out runs.csv [--configs FILE.csv] [--device cuda]

Each configuration: build the model in the compute dtype on the device, fused AdamW on
its parameters, ``--warmup`` untimed iterations, then ``--repeats`` timed ones (wall
clock, synchronized); ``iteration_s`` is their median, ``min_s``/``max_s`` the extremes,
``peak_memory_bytes`` ``torch.cuda.max_memory_allocated()`` (empty on a CPU). One
iteration = ``accumulation`` micro-batches of forward + backward, the optimizer step and
``zero_grad``; ``recompute`` full = ``torch.utils.checkpoint`` around each layer. Rows are
written as they are measured (a run cut short keeps what it measured); a configuration
that runs out of memory gets empty times. ``--budget-s`` skips the configurations left
once that many seconds have passed (the default set runs the first configuration of each
model first).
"""

from __future__ import annotations

import csv
import gc
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vtrain_opt.profiler import kernels as K
from vtrain_opt.profiler import torch_model as TM
from vtrain_opt.spec.model import ModelSpec

COLUMNS = (
    "name", "num_layers", "hidden_size", "num_attention_heads", "seq_length", "vocab_size",
    "params", "micro_batch", "accumulation", "global_batch", "recompute", "iteration_s",
    "min_s", "max_s", "peak_memory_bytes", "tokens_per_s", "device", "torch",
)  # fmt: skip
CONFIG_COLUMNS = (
    "name", "num_layers", "hidden_size", "num_attention_heads", "seq_length", "vocab_size",
    "micro_batch", "accumulation", "recompute",
)  # fmt: skip
RECOMPUTE = ("none", "full")

# The configurations of the shared H200 set (GPT 350M to 6.7B, sequence 2048): a run on
# another GPU times the same ones.
_GPT = {
    "gpt-350m": (24, 1024, 16),
    "gpt-1.3b": (24, 2048, 16),
    "gpt-2.7b": (32, 2560, 32),
    "gpt-6.7b": (32, 4096, 32),
}
_HOPPER_RUNS = (
    ("gpt-350m", 4, 4, "none"),
    ("gpt-350m", 8, 4, "none"),
    ("gpt-1.3b", 1, 8, "none"),
    ("gpt-1.3b", 2, 4, "none"),
    ("gpt-1.3b", 4, 4, "none"),
    ("gpt-1.3b", 8, 2, "full"),
    ("gpt-2.7b", 2, 4, "none"),
    ("gpt-2.7b", 4, 4, "full"),
    ("gpt-6.7b", 1, 4, "full"),
    ("gpt-6.7b", 2, 4, "full"),
)
HOPPER_CONFIGS = tuple(
    {
        "name": name,
        "num_layers": _GPT[name][0],
        "hidden_size": _GPT[name][1],
        "num_attention_heads": _GPT[name][2],
        "seq_length": 2048,
        "vocab_size": 51200,
        "micro_batch": mb,
        "accumulation": acc,
        "recompute": rc,
    }
    for name, mb, acc, rc in _HOPPER_RUNS
)


def spread(configs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first configuration of each model, then the others: a run cut short by its
    budget still covers every model size."""
    seen: set[str] = set()
    first, rest = [], []
    for cfg in configs:
        (rest if cfg["name"] in seen else first).append(cfg)
        seen.add(cfg["name"])
    return first + rest


def read_configs(path: str) -> list[dict[str, Any]]:
    """Configurations from a CSV with (at least) ``CONFIG_COLUMNS``; other columns ignored."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ValueError(f"--configs {path}: cannot be read ({e.strerror})") from None
    if not rows:
        raise ValueError(f"--configs {path}: no rows")
    missing = [c for c in CONFIG_COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"--configs {path}: missing column(s) {', '.join(missing)}")
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            cfg: dict[str, Any] = {c: int(row[c]) for c in CONFIG_COLUMNS[1:-1]}
        except ValueError:
            raise ValueError(f"--configs {path}: line {i}: sizes must be integers") from None
        if row["recompute"] not in RECOMPUTE:
            raise ValueError(
                f"--configs {path}: line {i}: recompute {row['recompute']!r} is not one of "
                f"{', '.join(RECOMPUTE)}"
            )
        out.append({"name": row["name"], **cfg, "recompute": row["recompute"]})
    return out


def _spec(cfg: dict[str, Any]) -> ModelSpec:
    return ModelSpec(
        family="gpt",
        num_layers=cfg["num_layers"],
        hidden_size=cfg["hidden_size"],
        num_attention_heads=cfg["num_attention_heads"],
        seq_length=cfg["seq_length"],
        vocab_size=cfg["vocab_size"],
        name=cfg["name"],
    )


def time_config(
    torch: Any,
    device: Any,
    dtype: str,
    cfg: dict[str, Any],
    warmup: int,
    repeats: int,
    label: str = "",
) -> dict[str, Any]:
    """One CSV row: the configuration and its measured iteration."""
    spec = _spec(cfg)
    cuda = device.type == "cuda"
    mb, acc = cfg["micro_batch"], cfg["accumulation"]
    row: dict[str, Any] = {
        **{c: cfg[c] for c in CONFIG_COLUMNS},
        "global_batch": mb * acc,
        "device": label or (torch.cuda.get_device_name(device) if cuda else "cpu"),
        "torch": torch.__version__,
    }
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = opt = None
    try:
        model = TM.build_model(
            torch, spec, device, K.torch_dtype(torch, dtype), recompute=cfg["recompute"] == "full"
        )
        row["params"] = TM.counted_params(model)
        opt, _ = TM.adamw(torch, list(model.parameters()))
        step = TM.training_iteration(torch, model, opt, spec, mb, acc, device)
        samples = TM.time_calls(torch, device, step, warmup, repeats)
    except RuntimeError as e:
        if "out of memory" not in str(e).lower():
            raise
        print(f"{cfg['name']} mb={mb}: out of memory", file=sys.stderr)
        return row
    finally:
        del model, opt
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    median = TM.median(samples)
    row.update(
        iteration_s=round(median, 6),
        min_s=round(min(samples), 6),
        max_s=round(max(samples), 6),
        peak_memory_bytes=int(torch.cuda.max_memory_allocated(device)) if cuda else "",
        tokens_per_s=round(mb * acc * spec.seq_length / median, 1),
    )
    return row


def run(
    out: Path,
    configs: Sequence[dict[str, Any]],
    device_name: str | None = None,
    dtype: str | None = None,
    warmup: int = 2,
    repeats: int = 5,
    budget_s: float | None = None,
) -> list[dict[str, Any]]:
    """Time every configuration (within the budget) and write the CSV; returns the rows."""
    from vtrain_opt.profiler import require_torch
    from vtrain_opt.profiler.device import describe, resolve_device

    torch = require_torch()
    device = resolve_device(torch, device_name)
    dtype = dtype or ("bf16" if device.type == "cuda" else "fp32")
    label = describe(torch, device)["name"]
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        for cfg in configs:
            if budget_s is not None and time.perf_counter() - start > budget_s:
                print(f"skipped {cfg['name']} mb={cfg['micro_batch']}: budget", file=sys.stderr)
                continue
            row = time_config(torch, device, dtype, cfg, warmup, repeats, label)
            writer.writerow(row)
            f.flush()
            rows.append(row)
            print(
                f"{row['name']} mb={row['micro_batch']} acc={row['accumulation']} "
                f"{row['recompute']}: {row.get('iteration_s', 'n/a')} s",
                file=sys.stderr,
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from vtrain_opt.cli import Parser

    p = Parser(prog="python -m vtrain_opt.profiler.steps", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, metavar="FILE", help="the CSV to write")
    p.add_argument(
        "--configs",
        metavar="FILE",
        help="CSV of configurations (columns " + ", ".join(CONFIG_COLUMNS) + "); default: "
        "the shared H200 set's ten GPT configurations",
    )
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda if visible")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="default bf16 (cpu: fp32)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed iterations (default 5)")
    p.add_argument("--budget-s", type=float, metavar="S", help="skip what is left after S s")
    args = p.parse_args(argv)
    try:
        if args.warmup < 0 or args.repeats < 1:
            raise ValueError("--warmup must be >= 0 and --repeats >= 1")
        configs = read_configs(args.configs) if args.configs else spread(HOPPER_CONFIGS)
        run(Path(args.out), configs, args.device, args.dtype, args.warmup, args.repeats,
            args.budget_s)  # fmt: skip
    except ValueError as e:
        print(f"{p.prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
