"""Arguments shared by `validate` and `calibrate`: the measurement files and how they were run."""

from __future__ import annotations

import argparse

from vtrain_opt.commands.common import positive_float, positive_int
from vtrain_opt.commands.framework_args import add_framework_args, framework_kwargs
from vtrain_opt.predictor import RunSetup
from vtrain_opt.spec.model import FAMILIES
from vtrain_opt.spec.plan import RECOMPUTE_MODES
from vtrain_opt.spec.setup import ATTENTION_KERNELS, DTYPES

DEFAULTS = RunSetup()


def add_measurement_args(
    p: argparse.ArgumentParser,
    required: bool = True,
    help: str = "measurement CSV files (vTrain's column format; a BOM is tolerated)",
) -> None:
    p.add_argument("--measurements", nargs="+", required=required, metavar="FILE.csv", help=help)
    g = p.add_argument_group(
        "setup of the measured runs (defaults: the stated setup of vTrain's A100 set)"
    )
    g.add_argument("--gpu", default=DEFAULTS.gpu, metavar="NAME", help=f"default {DEFAULTS.gpu}")
    g.add_argument("--family", choices=FAMILIES, default=DEFAULTS.family, help="default gpt")
    g.add_argument(
        "--vocab",
        type=positive_int,
        default=DEFAULTS.vocab_size,
        metavar="N",
        help=f"vocabulary size (default {DEFAULTS.vocab_size})",
    )
    g.add_argument("--dtype", choices=DTYPES, default=DEFAULTS.dtype, help="default fp16")
    g.add_argument(
        "--attention",
        choices=ATTENTION_KERNELS,
        default=DEFAULTS.attention,
        help="attention kernel of the runs (default unfused: Megatron's fused softmax)",
    )
    g.add_argument(
        "--recompute",
        choices=RECOMPUTE_MODES,
        default=DEFAULTS.recompute,
        help="activation recomputation of the runs (default full)",
    )
    g.add_argument(
        "--gpus-per-node",
        type=positive_int,
        default=DEFAULTS.gpus_per_node,
        metavar="N",
        help="default 8",
    )
    g.add_argument(
        "--inter-node-gbps",
        type=positive_float,
        default=DEFAULTS.inter_node_gbps,
        metavar="GBPS",
        help="per node and direction (default 800)",
    )
    g.add_argument(
        "--dp-overlap",
        action="store_true",
        help="the runs overlapped the gradient reduction with the backward "
        "(default: not, as with no gradient bucketing)",
    )
    add_framework_args(g)


def run_setup(args: argparse.Namespace) -> RunSetup:
    return RunSetup(
        gpu=args.gpu,
        family=args.family,
        vocab_size=args.vocab,
        dtype=args.dtype,
        attention=args.attention,
        recompute=args.recompute,
        gpus_per_node=args.gpus_per_node,
        inter_node_gbps=args.inter_node_gbps,
        dp_overlap=args.dp_overlap,
        **framework_kwargs(args),
    )
