"""Model-shape rules: turn a parameter count into a GPT- or LLaMA-style transformer shape.

A compute-optimal study needs a model for every size it tries. The rules (all
overridable, see ``ShapeRules``):

* Head size 128, so the hidden size h is a multiple of 128 (h / 128 heads).
* h comes from a ladder (by default multiples of 512 up to 4,096, then of 1,024 up to
  32,768: every rung has a head count divisible by 4 or 8, so tensor parallelism can
  split it).
* Layers from an aspect ratio h / layers (default 128: GPT-3 175B has 12288/96 = 128,
  Llama-3 405B 16384/126 = 130; Kaplan et al. 2020 find the loss nearly flat in the
  aspect ratio over 20-200). For a target size, every rung gets the layer count that
  reaches the target (a multiple of ``layer_multiple``, so pipelines can split it), and
  the rung with the least |log(aspect / ratio)| + |log(size / target)| wins.
* LLaMA: SwiGLU with LLaMA's ffn rule (8h/3 rounded up to 256), grouped-query attention
  with gcd(heads, 8) kv heads (8, as Llama-2/3 70B and 405B), vocabulary 32,000. GPT: ffn 4h, vocabulary
  51,200 (GPT-2's, padded as in Megatron-LM). Sequence length 2,048.
* Global batch: a token batch that grows with the model, B = B_1B x (N / 1e9)^gamma
  (default 2^20 tokens at 1B and gamma = 0.25: 1.1M tokens at 1.3B, 2.0M at 13B, 3.8M at
  175B, close to GPT-3's Table 2.1: 1M, 2M, 3.2M), in sequences of the sequence length,
  rounded to the count with the most divisors within a factor ``batch_slack`` (default
  1.125, i.e. +-12.5%; so data
  parallelism can take many sizes, as practitioners pick batches to fit their cluster).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from vtrain_opt.spec.model import FAMILIES, ModelSpec

DEFAULT_LADDER = (
    *range(1024, 4096, 512),
    *range(4096, 32768 + 1, 1024),
)
DEFAULT_VOCAB = {"gpt": 51200, "llama": 32000}
LLAMA_KV_HEADS = 8


@dataclass(frozen=True)
class ShapeRules:
    """How a parameter count becomes a model shape and a global batch."""

    family: str = "gpt"
    hidden_ladder: tuple[int, ...] = DEFAULT_LADDER
    aspect_ratio: float = 128.0  # hidden size / layers
    head_size: int = 128
    layer_multiple: int = 8
    vocab_size: int | None = None  # None: the family's default
    seq_length: int = 2048
    kv_heads: int | None = None  # None: 8 for llama, one per head for gpt
    batch_tokens_at_1b: float = float(2**20)
    batch_exponent: float = 0.25
    batch_slack: float = 1.125
    global_batch: int | None = None  # fixed sequences per batch for every size (overrides)
    # MoE shapes: every MLP becomes num_experts experts of ffn / top-k, top-k per token, so
    # a size's active parameters are its dense shape's; sizes count active parameters
    num_experts: int | None = None
    moe_router_topk: int = 2
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family: {self.family!r} is not one of {', '.join(FAMILIES)}")
        if not self.hidden_ladder:
            raise ValueError("hidden ladder: give at least one hidden size")
        ladder = tuple(sorted({int(h) for h in self.hidden_ladder}))
        object.__setattr__(self, "hidden_ladder", ladder)
        for h in ladder:
            if h <= 0 or h % self.head_size:
                raise ValueError(
                    f"hidden ladder: {h} is not a positive multiple of the head size {self.head_size}"
                )
        for name in ("aspect_ratio", "batch_tokens_at_1b"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name.replace('_', ' ')}: must be positive, got {v!r}")
        if not (math.isfinite(self.batch_exponent) and 0 <= self.batch_exponent <= 1):
            raise ValueError(f"batch exponent: must be in [0, 1], got {self.batch_exponent!r}")
        if not (math.isfinite(self.batch_slack) and self.batch_slack >= 1):
            raise ValueError(f"batch slack: must be >= 1, got {self.batch_slack!r}")
        for name in ("head_size", "layer_multiple", "seq_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name.replace('_', ' ')}: must be a positive whole number")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab size: must be positive, got {self.vocab_size}")
        if self.global_batch is not None and self.global_batch < 1:
            raise ValueError(f"global batch: must be positive, got {self.global_batch}")
        if self.num_experts is not None and not 1 <= self.moe_router_topk <= self.num_experts:
            raise ValueError(
                f"moe top-k: {self.moe_router_topk} must be in [1, num experts {self.num_experts}]"
            )

    @property
    def vocab(self) -> int:
        return self.vocab_size or DEFAULT_VOCAB[self.family]

    def kv_heads_for(self, heads: int) -> int | None:
        """kv heads of a model with ``heads`` heads: gcd(heads, kv_heads) (grouped-query
        attention; LLaMA's default 8), or None (one per head) for gpt by default."""
        kv = (
            self.kv_heads
            if self.kv_heads is not None
            else (LLAMA_KV_HEADS if self.family == "llama" else None)
        )
        return None if kv is None else math.gcd(heads, kv)

    # ---- shapes ---------------------------------------------------------------------------
    def shape(self, hidden: int, layers: int) -> ModelSpec:
        """The model of this family with hidden size ``hidden`` and ``layers`` layers."""
        spec = self._bare(hidden, layers)
        n = spec.active_params()  # a MoE shape: its active parameters (dense: all)
        return replace(
            spec,
            name=f"{self.family}-{_label(n)}",
            global_batch=self.global_batch_for(n),
            description=f"{self.family} h={hidden} L={layers} (shape rules)",
        )

    def for_params(self, target: float) -> ModelSpec:
        """The shape closest to ``target`` parameters along the aspect-ratio rule."""
        if not (math.isfinite(target) and target > 0):
            raise ValueError(f"model size: must be a positive number of parameters, got {target!r}")
        best: tuple[float, float, int, int] | None = None
        for h in self.hidden_ladder:
            per_layer, fixed = self.shape_counts(h)
            layers = (target - fixed) / per_layer
            m = self.layer_multiple
            layers = max(m, round(layers / m) * m)
            aspect = h / layers
            score = abs(math.log(aspect / self.aspect_ratio))
            n = fixed + per_layer * layers
            miss = abs(math.log(n / target))
            key = (score + miss, miss, h, layers)
            if best is None or key < best:
                best = key
        assert best is not None
        return self.shape(best[2], best[3])

    def shape_counts(self, hidden: int) -> tuple[int, int]:
        """(parameters per layer, parameters outside the layers) at hidden size ``hidden``."""
        one = self._bare(hidden, 1)
        two = self._bare(hidden, 2)
        per_layer = two.active_params() - one.active_params()
        return per_layer, one.active_params() - per_layer

    def _bare(self, hidden: int, layers: int) -> ModelSpec:
        heads = hidden // self.head_size
        spec = ModelSpec(
            family=self.family,
            num_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_query_groups=self.kv_heads_for(heads),
            vocab_size=self.vocab,
            seq_length=self.seq_length,
        )
        if self.num_experts is None or self.num_experts < 2:
            return spec
        k = self.moe_router_topk  # experts of ffn / k (a multiple of 64): k of them per token
        expert_ffn = max(64, round(spec.ffn / k / 64) * 64)
        return replace(
            spec, num_experts=self.num_experts, moe_router_topk=k, moe_ffn_hidden_size=expert_ffn
        )

    def candidates(self, min_params: float, max_params: float, count: int) -> list[ModelSpec]:
        """``count`` log-spaced target sizes in [min, max] as shapes (duplicates dropped)."""
        if not (min_params > 0 and max_params >= min_params):
            raise ValueError(
                f"size range: need 0 < min ({min_params:g}) <= max ({max_params:g}) parameters"
            )
        if count < 1:
            raise ValueError(f"number of sizes: must be positive, got {count}")
        targets = np.geomspace(min_params, max_params, count) if count > 1 else [min_params]
        out: dict[tuple[int, int], ModelSpec] = {}
        for t in targets:
            m = self.for_params(float(t))
            out.setdefault((m.hidden_size, m.num_layers), m)
        return sorted(out.values(), key=lambda m: m.active_params())

    # ---- batch ----------------------------------------------------------------------------
    def batch_tokens(self, params: float) -> float:
        """The token batch the rule gives a model of ``params`` parameters."""
        return self.batch_tokens_at_1b * (params / 1e9) ** self.batch_exponent

    def global_batch_for(self, params: float) -> int:
        """Sequences per batch: the rule's token batch, rounded to a very divisible count."""
        if self.global_batch is not None:
            return int(self.global_batch)
        target = max(1.0, self.batch_tokens(params) / self.seq_length)
        return most_divisible(target, self.batch_slack)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        if self.num_experts is None:  # dense rules keep their identity
            d.pop("num_experts")
            d.pop("moe_router_topk")
        d["hidden_ladder"] = list(self.hidden_ladder)
        d["vocab_size"] = self.vocab
        return d


def most_divisible(target: float, slack: float) -> int:
    """The whole number in [target / slack, target * slack] with the most divisors
    (ties: the closest to ``target`` in log, then the smaller)."""
    lo = max(1, math.ceil(target / slack))
    hi = max(lo, math.floor(target * slack))
    values = np.arange(lo, hi + 1)
    divisors = np.array([_num_divisors(int(v)) for v in values])
    dist = np.abs(np.log(values / target))
    order = np.lexsort((values, dist, -divisors))
    return int(values[order[0]])


def _num_divisors(n: int) -> int:
    count, d = 0, 1
    while d * d <= n:
        if n % d == 0:
            count += 1 if d * d == n else 2
        d += 1
    return count


def parse_ladder(text: str | Sequence[int]) -> tuple[int, ...]:
    """``1024,2048,4096`` or a list; a range ``1024:32768:1024`` (start:stop:step) too."""
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                start, stop, step = (int(x) for x in part.split(":"))
                if step <= 0:
                    raise ValueError
                out.extend(range(start, stop + 1, step))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(
                f"--hidden-ladder: {part!r} is not a whole number or START:STOP:STEP"
            ) from None
    if not out:
        raise ValueError("--hidden-ladder: give at least one hidden size")
    return tuple(out)


def _label(n: float) -> str:
    return f"{n / 1e9:.3g}b" if n < 1e12 else f"{n / 1e12:.3g}t"
