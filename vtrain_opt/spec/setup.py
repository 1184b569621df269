"""Setup: how the training framework runs, shared by every plan of a batch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vtrain_opt.spec._check import positive_int
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.moe import MOE_IMBALANCE, check_moe_setup

DTYPES = ("fp16", "bf16", "fp32", "fp8")
# FP8 training as Transformer Engine runs it: the scaling factor of each tensor from the amax
# history of earlier iterations (delayed) or from this tensor's own amax (current: an extra
# amax reduction pass before each cast).
FP8_RECIPES = ("delayed", "current")
ATTENTION_KERNELS = ("flash", "unfused")
# The implementation whose op list is predicted: Megatron-LM (fused kernels, tp/pp/sp,
# fp32 master weights) or a plain PyTorch model (nn.Linear, nn.LayerNorm, SDPA, one kernel
# per op, data parallelism only), as nanoGPT-style training scripts write it.
FRAMEWORKS = ("megatron", "torch")
# fp32: mixed precision with fp32 master weights and Adam states; none: parameters and Adam
# states in the compute dtype (plain bf16 training).
MASTER_WEIGHTS = ("fp32", "none")
# Megatron's GPT defaults (hidden and attention dropout); LLaMA-style models train without.
DEFAULT_DROPOUT = {"gpt": 0.1, "llama": 0.0}

# Bytes per parameter (weights, gradients as accumulated and reduced, optimizer states
# incl. fp32 master copy) for mixed-precision Adam, from Megatron-LM's distributed
# optimizer documentation ("fp16 param, fp16 grads: 20 B"; "bf16 param, fp32 grads: 18 B";
# "fp32 param, fp32 grads: 16 B").
_BYTES_PER_PARAM = {
    "fp16": (2, 2, 16),
    "bf16": (2, 4, 12),
    "fp32": (4, 4, 8),
    # FP8 (Transformer Engine): bf16 mixed precision for the weights and the optimizer; the
    # fp8 copies of the GEMM weights are counted apart (``fp8_weight_copy_bytes``).
    "fp8": (2, 4, 12),
}
# Transformer Engine keeps, beside the bf16 weights and the fp32 master copy, an fp8 copy of
# each GEMM weight and its transpose (for the backward's dgrad): 1 + 1 bytes per parameter.
FP8_WEIGHT_COPY_BYTES = 2


@dataclass(frozen=True)
class Setup:
    """Framework settings: compute dtype, attention kernel, framework, dropout, optimizer.

    ``attention='flash'`` is FlashAttention (no s x s matrix in memory); ``'unfused'``
    is Megatron's classic QK^T GEMM, fused softmax, dropout and AV GEMM.
    ``dropout`` None takes the model's default (``DEFAULT_DROPOUT``).
    """

    dtype: str = "bf16"
    attention: str = "flash"
    framework: str = "megatron"
    dropout: float | None = None
    master_weights: str = "fp32"
    fp8_recipe: str = "delayed"
    # Mixture-of-Experts (sim/moe.py): the busiest expert-parallel rank's tokens over the
    # mean, the capacity factor that drops tokens beyond it (None: no dropping), and whether
    # the all-to-all runs behind the compute of another micro-batch (DualPipe, Megatron's
    # overlapped expert-parallel communication)
    moe_imbalance: float = MOE_IMBALANCE
    moe_capacity_factor: float | None = None
    moe_a2a_overlap: bool = False
    # DeepEP-style node-limited dispatch: each token reaches at most this many nodes, once
    # each (DeepSeek-V3: 4); None: the model's group-limited routing where it has one
    # (sim/moe._node_limit), else NCCL's all-to-all, one copy per routed expert
    moe_node_limit: int | None = None

    def __post_init__(self) -> None:
        check_moe_setup(self.moe_imbalance, self.moe_capacity_factor, self.moe_a2a_overlap)
        if self.moe_node_limit is not None:
            positive_int("setup", "moe_node_limit", self.moe_node_limit)
        if self.dtype not in DTYPES:
            raise ValueError(f"setup.dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.fp8_recipe not in FP8_RECIPES:
            raise ValueError(
                f"fp8 recipe: {self.fp8_recipe!r} is not one of {', '.join(FP8_RECIPES)}"
            )
        if self.dtype == "fp8" and self.framework == "torch":
            raise ValueError(
                "dtype fp8 is Transformer Engine's recipe under --framework megatron; plain "
                "PyTorch (--framework torch) has no fp8 training path here"
            )
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(
                f"setup.attention: {self.attention!r} is not one of {', '.join(ATTENTION_KERNELS)}"
            )
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"framework: {self.framework!r} is not one of {', '.join(FRAMEWORKS)}")
        if self.master_weights not in MASTER_WEIGHTS:
            raise ValueError(
                f"master weights: {self.master_weights!r} is not one of {', '.join(MASTER_WEIGHTS)}"
            )
        if self.dropout is not None and (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not math.isfinite(self.dropout)
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ValueError(f"dropout: {self.dropout!r} must be a probability in [0, 1)")
        if self.framework == "torch" and self.attention == "unfused":
            raise ValueError(
                "framework torch: attention 'unfused' is Megatron's kernel; plain PyTorch "
                "models use scaled_dot_product_attention (attention 'flash')"
            )

    @property
    def torch(self) -> bool:
        """Plain PyTorch modules rather than Megatron's fused kernels."""
        return self.framework == "torch"

    def dropout_p(self, model: ModelSpec) -> float:
        """Hidden and attention dropout probability for ``model``."""
        if self.dropout is not None:
            return float(self.dropout)
        return DEFAULT_DROPOUT.get(model.family, 0.0)

    @property
    def fp8(self) -> bool:
        """FP8 GEMMs (Transformer Engine), everything else in bf16."""
        return self.dtype == "fp8"

    @property
    def compute_dtype(self) -> str:
        """The dtype of everything but the fp8 GEMMs (attention, memory-bound ops): bf16 under
        fp8, else the dtype itself. Also the peak MFU is reported against (as NVIDIA's tables
        report FP8 training)."""
        return "bf16" if self.fp8 else self.dtype

    @property
    def fp8_weight_copy_bytes(self) -> int:
        """Bytes per GEMM weight parameter of Transformer Engine's fp8 copy and its transpose
        (0 outside fp8)."""
        return FP8_WEIGHT_COPY_BYTES if self.fp8 else 0

    @property
    def act_bytes(self) -> int:
        """Bytes of one activation element (bf16 under fp8: TE casts only GEMM operands)."""
        return 4 if self.dtype == "fp32" else 2

    @property
    def weight_bytes(self) -> int:
        if self.master_weights == "none":
            return self.act_bytes
        if self.framework == "megatron":
            return _BYTES_PER_PARAM[self.dtype][0]
        return 4  # torch autocast keeps fp32 parameters and casts them for each GEMM

    @property
    def grad_bytes(self) -> int:
        """Bytes of one gradient as accumulated and all-reduced across data parallelism."""
        if self.master_weights == "none":
            return self.act_bytes
        return _BYTES_PER_PARAM[self.dtype][1] if self.framework == "megatron" else 4

    @property
    def optimizer_bytes(self) -> int:
        """Adam states (and the fp32 master weights of mixed precision) per parameter."""
        if self.master_weights == "none":
            return 2 * self.act_bytes  # the two Adam moments in the compute dtype
        return _BYTES_PER_PARAM[self.dtype][2] if self.framework == "megatron" else 8


def custom_framework(
    framework: str,
    dropout: float | None,
    master_weights: str,
    fp8_recipe: str = "delayed",
    **moe: Any,
) -> bool:
    """Whether these implementation options (and the MoE ones, ``Setup``'s moe_* fields)
    differ from their defaults (a setup must be built rather than the GPU's default taken)."""
    defaults = Setup()
    return (
        framework != "megatron"
        or dropout is not None
        or master_weights != "fp32"
        or fp8_recipe != "delayed"
        or any(value != getattr(defaults, key) for key, value in moe.items())
    )


def check_torch_plan(framework: str, **dims: Any) -> None:
    """A plain PyTorch model has no model parallelism: one line naming what was asked."""
    if framework != "torch":
        return
    bad = []
    for k, v in dims.items():
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        if any(x not in (None, 1, False, "off") for x in values):
            bad.append(f"--{k.replace('_', '-')} {','.join(str(x) for x in values)}")
    if bad:
        raise ValueError(
            f"--framework torch models a plain PyTorch model (data parallelism and ZeRO only); "
            f"it cannot have {', '.join(bad)}: use --framework megatron"
        )
