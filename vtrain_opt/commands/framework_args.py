"""Options for the implementation being predicted: framework, dropout, optimizer precision.

Shared by every command that simulates (simulate, search, chinchilla, validate, calibrate),
so they read and check the same way: a bad value is one line, exit status 2.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from vtrain_opt.spec.moe import MOE_IMBALANCE
from vtrain_opt.spec.setup import FP8_RECIPES, FRAMEWORKS, MASTER_WEIGHTS, custom_framework

# The commands import it from here; it lives with Setup, where the search library reads it.
from vtrain_opt.spec.setup import check_torch_plan as check_torch_plan


def probability(text: str) -> float:
    """A dropout probability in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1)")
    return value


def add_framework_args(
    p: argparse.ArgumentParser | Any, default_framework: str = "megatron"
) -> None:
    """--framework, --dropout and --master-weights on a parser or argument group."""
    p.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        default=default_framework,
        help="the implementation whose kernels are predicted: megatron (Megatron-LM's fused "
        "kernels, tp/pp/sp/vpp) or torch (a plain PyTorch model: nn.Linear, nn.LayerNorm, "
        f"SDPA, fused AdamW; data parallelism only); default {default_framework}",
    )
    p.add_argument(
        "--dropout",
        type=probability,
        metavar="P",
        help="hidden and attention dropout probability in [0, 1) (default: 0.1 for gpt "
        "models, as Megatron's GPT defaults, 0 for llama)",
    )
    p.add_argument(
        "--master-weights",
        choices=MASTER_WEIGHTS,
        default="fp32",
        help="fp32: mixed precision with fp32 master weights and Adam states (default); "
        "none: parameters and Adam states in the compute dtype",
    )
    p.add_argument(
        "--fp8-recipe",
        choices=FP8_RECIPES,
        default="delayed",
        help="with --dtype fp8 (Transformer Engine): delayed scaling from the amax history "
        "(default) or current scaling (an amax pass before every cast)",
    )
    add_moe_args(p)


def positive_float(text: str) -> float:
    """A positive finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def add_moe_args(p: argparse.ArgumentParser | Any) -> None:
    """The Mixture-of-Experts options of a Setup (sim/moe.py)."""
    p.add_argument(
        "--moe-imbalance",
        type=positive_float,
        default=MOE_IMBALANCE,
        metavar="X",
        help="MoE: the busiest expert-parallel rank's routed tokens over the mean, >= 1 "
        f"(default {MOE_IMBALANCE}: an assumption, see the MoE docs)",
    )
    p.add_argument(
        "--moe-capacity-factor",
        type=positive_float,
        metavar="X",
        help="MoE: drop the tokens beyond this x the mean per expert (default: no dropping)",
    )
    p.add_argument(
        "--moe-a2a-overlap",
        action="store_true",
        help="MoE: run the token all-to-all behind another micro-batch's compute (DualPipe, "
        "Megatron-core's overlapped expert-parallel communication)",
    )
    p.add_argument(
        "--moe-node-limit",
        type=int,
        metavar="M",
        help="MoE: DeepEP-style dispatch, each token sent once to each of at most M nodes; "
        "default: the model's group-limited routing where it has one (DeepSeek-V3's "
        "moe_router_group_topk: 4 nodes at ep 64 over 8 nodes), else NCCL's all-to-all, "
        "one copy per routed expert",
    )


def framework_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Setup`` fields of these options."""
    return {
        "framework": getattr(args, "framework", "megatron"),
        "dropout": getattr(args, "dropout", None),
        "master_weights": getattr(args, "master_weights", "fp32"),
        "fp8_recipe": getattr(args, "fp8_recipe", "delayed"),
    }


def moe_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Setup`` fields of the MoE options (``add_moe_args``)."""
    return {
        "moe_imbalance": getattr(args, "moe_imbalance", MOE_IMBALANCE),
        "moe_capacity_factor": getattr(args, "moe_capacity_factor", None),
        "moe_a2a_overlap": getattr(args, "moe_a2a_overlap", False),
        "moe_node_limit": getattr(args, "moe_node_limit", None),
    }


def framework_given(args: argparse.Namespace) -> bool:
    """Whether any of these options differs from its default (a setup must be built)."""
    return custom_framework(**framework_kwargs(args), **moe_kwargs(args))
