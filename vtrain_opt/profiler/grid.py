"""The sizes the profiler measures: grids shaped like transformer layers under tensor
parallelism, small (``--quick``) or full, for a CPU or a GPU.

GEMM (m, n, k): m is tokens (micro-batch x sequence) or a weight dimension (weight
gradients), n and k are hidden / tp, ffn / tp, vocab / tp or tokens: one axis covers
them all, so the grid is a cube of powers of two. Attention: micro-batch x local heads,
sequence, head size. Memory-bound ops: elements of the op's main tensor (the byte key
each table is read by follows from it, as ``sim/costs.py`` counts bytes). In-step GEMMs:
a real layer (hidden, heads, sequence, micro-batch) whose GEMMs lie inside the GEMM grid.

Which memory-bound tables are measured follows the frameworks asked for: each framework's
op list (``sim/costs.py``, ``sim/costs_torch.py``) names some ops the other never asks for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

FRAMEWORKS = ("megatron", "torch")
# Memory-bound tables only one framework's op list asks for (the others serve both).
FRAMEWORK_ONLY_OPS = {
    "megatron": frozenset(
        {"bias_dropout_add", "bias_dropout_add_bwd", "bias_gelu", "bias_gelu_bwd", "softmax",
         "softmax_bwd", "optimizer"}
    ),
    "torch": frozenset({"gelu", "gelu_bwd", "bias_grad", "adam"}),
}  # fmt: skip
# Tables with their own size axis (parameters, not elements).
PARAM_SIZED_OPS = frozenset({"optimizer", "adam"})


def memory_ops_for(frameworks: tuple[str, ...]) -> tuple[str, ...]:
    """The memory-bound tables (``profile_tables.py`` MEMORY_OPS) the frameworks need."""
    from vtrain_opt.profile_tables import MEMORY_OPS

    skip = set().union(*(FRAMEWORK_ONLY_OPS[f] for f in FRAMEWORKS if f not in frameworks))
    return tuple(op for op in MEMORY_OPS if op not in skip)


def _pow2(lo: int, hi: int, step: int = 1) -> tuple[int, ...]:
    return tuple(2**e for e in range(lo, hi + 1, step))


@dataclass(frozen=True)
class Grid:
    """What to measure and how often."""

    gemm: tuple[int, ...]  # values of each of m, n, k
    attention_batch_heads: tuple[int, ...]
    attention_seq: tuple[int, ...]
    attention_head_dim: tuple[int, ...]
    elements: tuple[int, ...]  # memory-bound ops: elements of the main tensor
    optimizer_params: tuple[int, ...]
    step_layers: tuple[tuple[int, int, int, int], ...]  # (hidden, heads, seq, micro-batch)
    collective_bytes: tuple[int, ...]
    bandwidth_bytes: int  # one large copy, beyond the caches: the device memory bandwidth
    warmup: int  # untimed calls before timing (clocks, caches, cuBLAS heuristics)
    repeats: int  # timed samples; the table keeps their median and spread
    min_sample_s: float  # a sample repeats the op until it lasts this long (timer resolution)

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

        return {k: plain(v) for k, v in asdict(self).items()}

    def count(self, frameworks: tuple[str, ...] = FRAMEWORKS) -> int:
        """Number of measurements (for the progress bar), collectives apart."""
        attention = (
            len(self.attention_batch_heads) * len(self.attention_seq) * len(self.attention_head_dim)
        )
        ops = memory_ops_for(frameworks)
        by_params = sum(op in PARAM_SIZED_OPS for op in ops)
        return (
            len(self.gemm) ** 3
            + 2 * attention
            + (len(ops) - by_params) * len(self.elements)
            + by_params * len(self.optimizer_params)
            + 1  # the bandwidth copy
            + (2 * 4 * len(self.step_layers) if "torch" in frameworks else 0)  # bias GEMMs
        )


GRIDS: dict[tuple[str, bool], Grid] = {
    # 2 CPU cores: well under a minute (tests run it)
    ("cpu", True): Grid(
        gemm=(64, 256, 1024),
        attention_batch_heads=(4, 16),
        attention_seq=(128, 512),
        attention_head_dim=(64,),
        elements=_pow2(14, 20, 2),
        optimizer_params=_pow2(16, 22, 2),
        step_layers=((128, 2, 256, 2), (256, 4, 128, 2)),
        collective_bytes=_pow2(12, 22, 5),
        bandwidth_bytes=2**27,
        warmup=1,
        repeats=3,
        min_sample_s=2e-3,
    ),
    ("cpu", False): Grid(
        gemm=_pow2(6, 12),
        attention_batch_heads=(1, 4, 16, 64),
        attention_seq=(128, 256, 512, 1024, 2048),
        attention_head_dim=(64, 128),
        elements=_pow2(12, 24, 2),
        optimizer_params=_pow2(14, 26, 2),
        step_layers=((512, 8, 512, 2), (1024, 16, 1024, 1)),
        collective_bytes=_pow2(10, 26, 2),
        bandwidth_bytes=2**28,
        warmup=1,
        repeats=5,
        min_sample_s=5e-3,
    ),
    ("cuda", True): Grid(
        gemm=_pow2(8, 14, 2),
        attention_batch_heads=(4, 16, 64),
        attention_seq=(512, 2048, 8192),
        attention_head_dim=(64, 128),
        elements=_pow2(16, 26, 2),
        optimizer_params=(2**20, 2**24, 2**28, 2**30),
        step_layers=((1024, 16, 2048, 2), (4096, 32, 2048, 2)),
        collective_bytes=_pow2(16, 28, 4),
        bandwidth_bytes=2**31,
        warmup=3,
        repeats=5,
        min_sample_s=1e-3,
    ),
    # sized so the largest cell fits in 80 GB: a GEMM corner of 3 x 8.6 GB, attention of
    # 8 x 4.3 GB; a cell that still runs out of memory is left unmeasured (null)
    ("cuda", False): Grid(
        gemm=_pow2(6, 16),
        attention_batch_heads=(1, 4, 16, 64, 256, 512),
        attention_seq=(256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
        attention_head_dim=(64, 128),
        elements=_pow2(12, 29),
        optimizer_params=_pow2(16, 30, 2),
        # the shared Hopper runs' layers (GPT 350M, 1.3B, 6.7B)
        step_layers=((1024, 16, 2048, 4), (2048, 16, 2048, 2), (4096, 32, 2048, 2)),
        collective_bytes=_pow2(10, 30, 2),
        bandwidth_bytes=2**31,
        warmup=5,
        repeats=10,
        min_sample_s=2e-3,
    ),
}


def grid_for(device_kind: str, quick: bool) -> Grid:
    """The grid for a device kind ('cpu' or 'cuda')."""
    return GRIDS[(device_kind, quick)]
