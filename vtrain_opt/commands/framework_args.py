"""Options for the implementation being predicted: framework, dropout, optimizer precision.

Shared by every command that simulates (simulate, search, chinchilla, validate, calibrate),
so they read and check the same way: a bad value is one line, exit status 2.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

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


def framework_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Setup`` fields of these options."""
    return {
        "framework": getattr(args, "framework", "megatron"),
        "dropout": getattr(args, "dropout", None),
        "master_weights": getattr(args, "master_weights", "fp32"),
        "fp8_recipe": getattr(args, "fp8_recipe", "delayed"),
    }


def framework_given(args: argparse.Namespace) -> bool:
    """Whether any of these options differs from its default (a setup must be built)."""
    return custom_framework(**framework_kwargs(args))
