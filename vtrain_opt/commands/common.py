"""Arguments and helpers shared by the commands (model, cluster, profile, JSON output)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from vtrain_opt.commands.framework_args import (
    add_framework_args,
    framework_given,
    framework_kwargs,
    moe_kwargs,
)
from vtrain_opt.io import jsonable
from vtrain_opt.profiles import load_profile
from vtrain_opt.sim.step import SimContext, make_context
from vtrain_opt.spec.hardware import ClusterSpec, cluster_for_profile, get_cluster, gpu_names
from vtrain_opt.spec.model import ModelSpec, load_model
from vtrain_opt.spec.setup import ATTENTION_KERNELS, DTYPES, Setup
from vtrain_opt.units import parse_count, parse_money_usd


# ---- argparse types: raise ArgumentTypeError so argparse reports one line ----------------
def positive_int(text: str) -> int:
    try:
        value = float(str(text).replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not value.is_integer() or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive whole number")
    return int(value)


def non_negative_int(text: str) -> int:
    if str(text).strip() == "0":
        return 0
    return positive_int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def count(text: str) -> float:
    """A count with an optional suffix: 300B, 3e11, 1.5T."""
    try:
        return parse_count(text, "value")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("value: ")) from None


def price(text: str) -> float:
    """USD per GPU-hour: 2.5, $2.5."""
    t = str(text).strip()
    try:
        return parse_money_usd(
            t if t.startswith("$") or t.lower().endswith("usd") else f"${t}", "price"
        )
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a price; write e.g. 2.5 or $2.5"
        ) from None


# ---- argument groups ------------------------------------------------------------------------
def add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        required=required,
        metavar="NAME|FILE",
        help="a catalog name (see `catalog`) or a YAML/JSON file with Megatron's field names",
    )
    g.add_argument(
        "--seq-len",
        "--seq-length",
        type=positive_int,
        metavar="N",
        help="sequence length (default: the model's)",
    )


DEFAULT_GPU = "a100-80gb"
NVLINK_DOMAIN_HELP = (
    "GPUs per NVLink domain, a multiple of the node size: groups that fit in one stay on "
    "NVLink (default: the GPU's cluster: one node, 72 on gb200-nvl72)"
)


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster")
    g.add_argument(
        "--gpu",
        metavar="NAME",
        help=f"GPU type (default: the --profile's GPU, else {DEFAULT_GPU}); see `catalog`",
    )
    g.add_argument(
        "--gpus-per-node",
        type=positive_int,
        metavar="N",
        help="GPUs per node (default: the GPU's cluster: 8, 4 on gb200-nvl72)",
    )
    g.add_argument(
        "--nvlink-domain",
        type=positive_int,
        metavar="N",
        help=NVLINK_DOMAIN_HELP,
    )
    g.add_argument(
        "--inter-node-gbps",
        type=positive_float,
        metavar="GBPS",
        help="inter-node bandwidth per node and direction, in Gbit/s (default: the GPU's reference node)",
    )
    g.add_argument(
        "--price-per-gpu-hour",
        type=price,
        metavar="USD",
        help="price of one GPU-hour in USD (default: the catalog's list price)",
    )


def add_setup_args(parser: argparse.ArgumentParser, *, dtype_list: bool = False) -> None:
    """The profile and framework flags; ``dtype_list``: --dtype takes several (a dimension
    of a search, compared per plan)."""
    g = parser.add_argument_group("device profile and framework")
    g.add_argument(
        "--profile",
        metavar="NAME|FILE",
        help="device profile (default: profiles/<gpu>.json); a shipped name or a JSON file",
    )
    if dtype_list:
        g.add_argument(
            "--dtype",
            type=dtype_names,
            metavar="DTYPE[,DTYPE...]",
            help=f"compute dtype ({', '.join(DTYPES)}; default: bf16 where supported); several "
            "(bf16,fp8) are compared per plan",
        )
    else:
        g.add_argument(
            "--dtype",
            choices=DTYPES,
            help="compute dtype (default: bf16 where supported, else fp16)",
        )
    g.add_argument(
        "--attention",
        choices=ATTENTION_KERNELS,
        help="attention kernel (default: flash where the GPU supports it, else unfused)",
    )
    add_framework_args(g)


def dtype_names(text: str) -> list[str]:
    """--dtype's list form: 'bf16,fp8'."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [n for n in names if n not in DTYPES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(bad) or repr(text)}: not one of {', '.join(DTYPES)}"
        )
    return names


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout, nothing else"
    )


# ---- resolution -----------------------------------------------------------------------------
def resolve_model(args: argparse.Namespace) -> ModelSpec:
    model = load_model(args.model)
    if getattr(args, "seq_len", None):
        model = model.with_seq_length(args.seq_len)
    return model


def gpu_name(args: argparse.Namespace) -> str:
    """--gpu, else the GPU of --profile (so a profile of another GPU is not mixed up), else the default."""
    if getattr(args, "gpu", None):
        return str(args.gpu)
    if getattr(args, "profile", None):
        return load_profile(args.profile).gpu
    return DEFAULT_GPU


def resolve_cluster(args: argparse.Namespace, gpu: str | None = None) -> ClusterSpec:
    name = gpu or gpu_name(args)
    cluster = None
    if getattr(args, "profile", None) and name.strip().lower() not in gpu_names():
        # a measured profile of a device outside the catalog describes the device itself
        profile = load_profile(args.profile)
        if profile.gpu == name and profile.device:
            cluster = cluster_for_profile(profile)
    if cluster is None:
        cluster = get_cluster(name)
    return cluster.with_overrides(
        gpus_per_node=getattr(args, "gpus_per_node", None),
        nvlink_domain=getattr(args, "nvlink_domain", None),
        inter_node_gbps=getattr(args, "inter_node_gbps", None),
        price_per_gpu_hour_usd=getattr(args, "price_per_gpu_hour", None),
    )


def resolve_context(args: argparse.Namespace, model: ModelSpec, cluster: ClusterSpec) -> SimContext:
    setup = None
    if getattr(args, "dtype", None) or getattr(args, "attention", None) or framework_given(args):
        default = make_context(model, cluster, getattr(args, "profile", None)).setup
        setup = Setup(
            dtype=args.dtype or default.dtype,
            attention=args.attention or default.attention,
            **framework_kwargs(args),
            **moe_kwargs(args),
        )
    return make_context(model, cluster, getattr(args, "profile", None), setup)


# ---- output ---------------------------------------------------------------------------------
def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(obj), indent=2) + "\n")
