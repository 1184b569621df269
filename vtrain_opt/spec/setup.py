"""Setup: how the training framework runs, shared by every plan of a batch."""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("fp16", "bf16", "fp32")
ATTENTION_KERNELS = ("flash", "unfused")

# Bytes per parameter (weights, gradients as accumulated and reduced, optimizer states
# incl. fp32 master copy) for mixed-precision Adam, from Megatron-LM's distributed
# optimizer documentation ("fp16 param, fp16 grads: 20 B"; "bf16 param, fp32 grads: 18 B";
# "fp32 param, fp32 grads: 16 B").
_BYTES_PER_PARAM = {
    "fp16": (2, 2, 16),
    "bf16": (2, 4, 12),
    "fp32": (4, 4, 8),
}


@dataclass(frozen=True)
class Setup:
    """Framework settings: compute dtype and attention kernel.

    ``attention='flash'`` is FlashAttention (no s x s matrix in memory); ``'unfused'``
    is Megatron's classic QK^T GEMM, fused softmax, dropout and AV GEMM.
    """

    dtype: str = "bf16"
    attention: str = "flash"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"setup.dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(
                f"setup.attention: {self.attention!r} is not one of {', '.join(ATTENTION_KERNELS)}"
            )

    @property
    def act_bytes(self) -> int:
        """Bytes of one activation element."""
        return 4 if self.dtype == "fp32" else 2

    @property
    def weight_bytes(self) -> int:
        return _BYTES_PER_PARAM[self.dtype][0]

    @property
    def grad_bytes(self) -> int:
        """Bytes of one gradient as accumulated and all-reduced across data parallelism."""
        return _BYTES_PER_PARAM[self.dtype][1]

    @property
    def optimizer_bytes(self) -> int:
        """Adam states (and the fp32 master weights of mixed precision) per parameter."""
        return _BYTES_PER_PARAM[self.dtype][2]
