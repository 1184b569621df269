"""ParallelPlan (one plan, validated) and PlanBatch (N plans as arrays, invalid ones marked).

The rules are written once, vectorized, in ``_RULES``; a single plan is checked by
running them on a batch of one, so both paths always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.spec import moe as _moe
from vtrain_opt.spec import stages as _st
from vtrain_opt.spec._check import as_bool, as_int, positive_int, recompute_codes
from vtrain_opt.spec.model import ModelSpec

RECOMPUTE_MODES = ("none", "selective", "full")
# The columns that identify a plan in result tables (PlanBatch.to_frame adds num_microbatches).
PLAN_COLUMNS = (
    "num_gpus",
    "tp",
    "cp",
    "ep",
    "etp",
    "pp",
    "dp",
    "micro_batch",
    "global_batch",
    "recompute",
    "sequence_parallel",
    "vpp",
    "zero",
    "dp_overlap",
    "first_stage_layers",
    "last_stage_layers",
)
ZERO_STAGES = (0, 1, 2, 3)

# Reason codes for plans that are not feasible; 0 means feasible. Rule violations
# come first (see _RULES); simulation adds memory. Searches add their own limits.
_RULE_REASONS: list[str] = []


@dataclass(frozen=True)
class _Rule:
    reason: str  # short, used as the batch's reason code
    message: str  # long, formatted with the plan's fields, for ParallelPlan.validate
    broken: Callable[[PlanBatch, ModelSpec], np.ndarray]


def _rules() -> list[_Rule]:
    return [
        _Rule(
            "bad size",
            "tp, pp, dp, micro_batch, global_batch and vpp must be positive integers, "
            "got tp={tp} pp={pp} dp={dp} micro_batch={micro_batch} global_batch={global_batch} vpp={vpp}",
            lambda b, m: (
                (b.tp < 1) | (b.pp < 1) | (b.dp < 1) | (b.mb < 1) | (b.gb < 1) | (b.vpp < 1)
            ),
        ),
        _Rule(
            "bad cp",
            "context parallelism cp={cp} must be a positive integer",
            lambda b, m: b.cp < 1,
        ),
        _Rule(
            "2*cp does not divide seq length",
            "context parallelism cp={cp}: the sequence {seq_length} must be divisible by "
            "2*cp = {two_cp} (the causal load-balancing split)",
            lambda b, m: (b.cp > 1) & (m.seq_length % np.maximum(2 * b.cp, 1) != 0),
        ),
        _Rule(
            "tp does not divide heads",
            "tensor parallelism tp={tp} must divide the attention heads ({heads})",
            lambda b, m: m.num_attention_heads % np.maximum(b.tp, 1) != 0,
        ),
        _Rule(
            "tp does not divide kv heads",
            "tensor parallelism tp={tp} must divide the kv heads / query groups ({kv_heads})",
            lambda b, m: m.kv_heads % np.maximum(b.tp, 1) != 0,
        ),
        _Rule(
            "tp does not divide ffn",
            "tensor parallelism tp={tp} must divide ffn_hidden_size ({ffn})",
            lambda b, m: m.ffn % np.maximum(b.tp, 1) != 0,
        ),
        _Rule(
            "stage layers need pp > 1",
            "first/last stage layers ({first_stage_layers}/{last_stage_layers}) need "
            "pipeline parallelism pp > 1, got pp={pp}",
            lambda b, m: _st._if_uneven(b, lambda: b.uneven & (b.pp < 2)),
        ),
        _Rule(
            "stage layers out of range",
            "first and last stage layers must be in [1, {layers}) (0: an even share), got "
            "first={first_stage_layers} last={last_stage_layers}",
            lambda b, m: _st._if_uneven(b, lambda: _st._out_of_range(b, m.num_layers)),
        ),
        _Rule(
            "stage layers do not add up",
            "stage layers do not add up to the layers ({layers}): {stage_sum}",
            lambda b, m: _st._if_uneven(b, lambda: b.uneven & ~_st._split_adds_up(b, m.num_layers)),
        ),
        _Rule(
            "pp*vpp does not divide layers",
            "pipeline stages x virtual stages (pp={pp} x vpp={vpp}) must divide the layers ({layers})",
            lambda b, m: (
                (m.num_layers % np.maximum(b.pp * b.vpp, 1) != 0)
                & _st._if_uneven(b, lambda: ~b.uneven, True)
            ),
        ),
        _Rule(
            "vpp does not divide stage layers",
            "with vpp={vpp} the middle stages' layers ({middle_layers}) must be a multiple of "
            "vpp and the first/last stages ({first_stage_layers}/{last_stage_layers}) must "
            "fill their vpp chunks (at most one chunk short, holding at least one layer)",
            lambda b, m: _st._if_uneven(b, lambda: b.uneven & ~_st._chunks_fit(b, m.num_layers)),
        ),
        _Rule(
            "dp*mb does not divide global batch",
            "global_batch={global_batch} must be a multiple of dp x micro_batch = {dp} x {micro_batch}",
            lambda b, m: b.gb % np.maximum(b.dp * b.mb, 1) != 0,
        ),
        _Rule(
            "vpp needs pp > 1",
            "interleaved stages (vpp={vpp}) need pipeline parallelism pp > 1, got pp={pp}",
            lambda b, m: (b.vpp > 1) & (b.pp < 2),
        ),
        _Rule(
            "vpp needs micro-batches % pp == 0",
            "the interleaved schedule (vpp={vpp}) needs the number of micro-batches "
            "(global_batch / (dp x micro_batch) = {num_microbatches}) to be a multiple of pp={pp}",
            lambda b, m: (b.vpp > 1) & (b.num_microbatches % np.maximum(b.pp, 1) != 0),
        ),
        _Rule(
            "sequence parallel needs tp > 1",
            "sequence parallelism needs tensor parallelism tp > 1, got tp={tp}",
            lambda b, m: b.sp & (b.tp < 2),
        ),
        _Rule(
            "tp does not divide seq length",
            "sequence parallelism needs tp={tp} to divide the sequence length ({seq_length}) "
            "/ cp ({cp})",
            lambda b, m: b.sp & (m.seq_length % np.maximum(b.tp * b.cp, 1) != 0),
        ),
        _Rule(
            "ZeRO-2/3 with pp > 1",
            "ZeRO stage {zero} cannot be combined with pipeline parallelism (pp={pp}); "
            "use ZeRO 0 or 1 with pp > 1 (as DeepSpeed requires)",
            lambda b, m: (b.zero >= 2) & (b.pp > 1),
        ),
    ]


_RULE_LIST = _rules() + [_Rule(*rule) for rule in _moe.PLAN_RULES]
_RULE_REASONS.extend(r.reason for r in _RULE_LIST)
# A plain PyTorch model (framework 'torch') has data parallelism (and ZeRO) only.
TORCH_ONLY_DP = "framework torch: no tp/cp/pp/vpp/sp"
REASONS: tuple[str, ...] = ("", *_RULE_REASONS, TORCH_ONLY_DP, "out of memory")
REASON_TORCH_ONLY_DP = REASONS.index(TORCH_ONLY_DP)
REASON_OOM = REASONS.index("out of memory")


def torch_framework_violations(batch: PlanBatch) -> np.ndarray:
    """Plans a plain PyTorch model cannot run: any model parallelism (tp, cp, pp, vpp, sp)."""
    return (batch.tp > 1) | (batch.cp > 1) | (batch.pp > 1) | (batch.vpp > 1) | batch.sp


@dataclass(frozen=True)
class ParallelPlan:
    """One training plan: how the model is split over GPUs and scheduled."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    micro_batch: int = 1
    global_batch: int = 1
    recompute: str = "none"  # none | selective | full
    sequence_parallel: bool = False
    vpp: int = 1  # virtual pipeline stages per GPU (interleaved 1F1B when > 1)
    zero: int = 0  # ZeRO stage (0 = none; 1 = distributed optimizer)
    dp_overlap: bool = True  # overlap the gradient reduction with the backward pass
    # layers of the first / last pipeline stage; 0: an even share (the other stages split
    # the rest evenly), as Megatron-core's decoder_first/last_pipeline_num_layers
    first_stage_layers: int = 0
    last_stage_layers: int = 0
    # context parallelism: the sequence split over cp GPUs (Megatron-core's ring attention)
    cp: int = 1
    # expert parallelism and expert tensor parallelism of MoE layers (sim/moe.py)
    ep: int = 1
    etp: int = 1

    def __post_init__(self) -> None:
        for f in ("tp", "pp", "dp", "micro_batch", "global_batch", "vpp", "cp", "ep", "etp"):
            positive_int("plan", f, getattr(self, f))
        if self.recompute not in RECOMPUTE_MODES:
            raise ValueError(
                f"plan.recompute: {self.recompute!r} is not one of {', '.join(RECOMPUTE_MODES)}"
            )
        if self.zero not in ZERO_STAGES:
            raise ValueError(f"plan.zero: {self.zero!r} is not one of 0, 1, 2, 3")

    @property
    def num_gpus(self) -> int:
        return self.tp * self.cp * self.pp * self.dp

    @property
    def num_microbatches(self) -> int:
        return self.global_batch // (self.dp * self.micro_batch)

    def validate(self, model: ModelSpec) -> ParallelPlan:
        """Raise ValueError naming the first rule this plan breaks for ``model``."""
        batch = PlanBatch.from_plans([self])
        for rule in _RULE_LIST:
            if bool(rule.broken(batch, model)[0]):
                mid = _st.stage_layer_counts(batch, model.num_layers)[1]
                values = asdict(self) | {
                    "stage_sum": _st._stage_sum(self, model.num_layers),
                    "middle_layers": f"{mid[0]:g}",
                    "heads": model.num_attention_heads,
                    "kv_heads": model.kv_heads,
                    "ffn": model.ffn,
                    "layers": model.num_layers,
                    "seq_length": model.seq_length,
                    "two_cp": 2 * self.cp,
                    **_moe.rule_values(model),
                    "num_microbatches": f"{self.global_batch / (self.dp * self.micro_batch):g}",
                }
                raise ValueError(f"invalid plan: {rule.message.format(**values)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"num_gpus": self.num_gpus}

    def describe(self) -> str:
        extras = [f"cp={self.cp}"] if self.cp > 1 else []
        extras += [f"ep={self.ep}", f"etp={self.etp}"] if self.ep * self.etp > 1 else []
        if self.vpp > 1:
            extras.append(f"vpp={self.vpp}")
        if self.sequence_parallel:
            extras.append("sp")
        if self.zero:
            extras.append(f"zero={self.zero}")
        if self.first_stage_layers or self.last_stage_layers:
            extras.append(f"stage_layers={self.first_stage_layers},{self.last_stage_layers}")
        extras.append(f"recompute={self.recompute}")
        return (
            f"tp={self.tp} pp={self.pp} dp={self.dp} mb={self.micro_batch} gb={self.global_batch} "
            + " ".join(extras)
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ParallelPlan:
        """From a dict with the field names (or the short aliases mb, gb, sp)."""
        aliases = {
            "mb": "micro_batch",
            "gb": "global_batch",
            "sp": "sequence_parallel",
            "first": "first_stage_layers",
            "last": "last_stage_layers",
        }
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = aliases.get(key, key)
            if name in _INT_PLAN_FIELDS:
                kwargs[name] = as_int("plan", name, value)
            elif name in ("sequence_parallel", "dp_overlap"):
                kwargs[name] = as_bool(name, value)
            elif name == "recompute":
                kwargs[name] = str(value)
            elif name == "num_gpus":
                continue
            else:
                raise ValueError(
                    f"plan: unknown field {key!r}; allowed: tp, pp, dp, mb, gb, recompute, sp, vpp, zero, dp_overlap, "
                    "first_stage_layers, last_stage_layers, cp, ep, etp"
                )
        plan = cls(**kwargs)
        if "num_gpus" in data and as_int("plan", "num_gpus", data["num_gpus"]) != plan.num_gpus:
            raise ValueError(
                f"invalid plan: num_gpus={data['num_gpus']} must equal tp x cp x pp x dp = "
                f"{plan.num_gpus}"
            )
        return plan


_INT_FIELDS = ("tp", "pp", "dp", "mb", "gb", "vpp", "zero", "first", "last", "cp", "ep", "etp")
_INT_PLAN_FIELDS = ("tp", "pp", "dp", "micro_batch", "global_batch", "vpp", "zero")
_INT_PLAN_FIELDS += ("first_stage_layers", "last_stage_layers", "cp", "ep", "etp")
_BOOL_FIELDS = ("sp", "dp_overlap")
# PlanBatch column -> ParallelPlan field
_SAME_NAME = ("tp", "pp", "dp", "recompute", "vpp", "zero", "dp_overlap", "cp", "ep", "etp")
_COLUMN_FIELDS = {c: c for c in _SAME_NAME} | {"mb": "micro_batch", "gb": "global_batch"}
_COLUMN_FIELDS |= {"sp": "sequence_parallel", "first": "first_stage_layers"}
_COLUMN_FIELDS |= {"last": "last_stage_layers"}


class PlanBatch:
    """N plans as a struct of arrays (each shape (N,)). Invalid plans are marked, not raised.

    Columns: tp, pp, dp, mb (micro-batch), gb (global batch), vpp, zero, first and last
    (the first/last stage's layers, 0: an even share), cp (context parallelism) (int64);
    recompute (int8 code into RECOMPUTE_MODES); sp, dp_overlap (bool).
    """

    __slots__ = (
        "cp",
        "dp",
        "dp_overlap",
        "ep",
        "etp",
        "first",
        "gb",
        "last",
        "mb",
        "pp",
        "recompute",
        "sp",
        "tp",
        "vpp",
        "zero",
    )

    tp: np.ndarray
    pp: np.ndarray
    dp: np.ndarray
    mb: np.ndarray
    gb: np.ndarray
    vpp: np.ndarray
    zero: np.ndarray
    recompute: np.ndarray
    sp: np.ndarray
    dp_overlap: np.ndarray
    first: np.ndarray
    last: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    etp: np.ndarray

    def __init__(
        self,
        *,
        tp: Any,
        pp: Any,
        dp: Any,
        mb: Any,
        gb: Any,
        recompute: Any = "none",
        sp: Any = False,
        vpp: Any = 1,
        zero: Any = 0,
        dp_overlap: Any = True,
        first: Any = 0,
        last: Any = 0,
        cp: Any = 1,
        ep: Any = 1,
        etp: Any = 1,
    ) -> None:
        cols: dict[str, Any] = {
            "tp": tp,
            "pp": pp,
            "dp": dp,
            "mb": mb,
            "gb": gb,
            "vpp": vpp,
            "zero": zero,
            "recompute": recompute_codes(recompute, RECOMPUTE_MODES),
            "sp": sp,
            "dp_overlap": dp_overlap,
            "first": first,
            "last": last,
            "cp": cp,
            "ep": ep,
            "etp": etp,
        }
        n = max(np.size(v) for v in cols.values())
        for name, value in cols.items():
            arr = np.asarray(value)
            if arr.ndim > 1:
                raise ValueError(f"PlanBatch.{name}: expected a scalar or 1-D array")
            if arr.size not in (1, n):
                raise ValueError(f"PlanBatch.{name}: length {arr.size} does not match {n}")
            if name in _INT_FIELDS:
                if arr.dtype.kind not in "iu":
                    if arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
                        arr = arr.astype(np.int64)
                    else:
                        raise ValueError(f"PlanBatch.{name}: expected integers")
                arr = arr.astype(np.int64, copy=False)
            elif name in _BOOL_FIELDS:
                arr = arr.astype(bool, copy=False)
            out = np.broadcast_to(arr, (n,)) if arr.size == 1 and n != 1 else arr.reshape(n)
            object.__setattr__(self, name, np.ascontiguousarray(out))
        if np.any((self.zero < 0) | (self.zero > 3)):
            raise ValueError("PlanBatch.zero: ZeRO stage must be 0, 1, 2 or 3")

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_plans(cls, plans: list[ParallelPlan]) -> PlanBatch:
        if not plans:
            raise ValueError("PlanBatch.from_plans: no plans given")
        return cls(**{col: [getattr(p, f) for p in plans] for col, f in _COLUMN_FIELDS.items()})

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> PlanBatch:
        """From a DataFrame with the batch's column names (missing optional ones take defaults)."""
        kwargs = {c: df[c].to_numpy() for c in cls.__slots__ if c in df.columns}
        for name, col in (("first", "first_stage_layers"), ("last", "last_stage_layers")):
            if col in df.columns and name not in kwargs:
                kwargs[name] = df[col].to_numpy()
        if "recompute" in kwargs and kwargs["recompute"].dtype.kind in "OUS":
            kwargs["recompute"] = recompute_codes(kwargs["recompute"], RECOMPUTE_MODES)
        return cls(**kwargs)

    # ---- derived -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.tp.shape[0])

    @property
    def n(self) -> int:
        return len(self)

    @property
    def num_gpus(self) -> np.ndarray:
        return self.tp * self.cp * self.pp * self.dp

    @property
    def num_microbatches(self) -> np.ndarray:
        return self.gb // np.maximum(self.dp * self.mb, 1)

    @property
    def any_uneven(self) -> bool:
        return bool(self.first.any() or self.last.any())

    @property
    def any_cp(self) -> bool:
        """Whether a plan splits the sequence (context parallelism): cp costs are skipped
        otherwise."""
        return bool((self.cp > 1).any())

    @property
    def uneven(self) -> np.ndarray:
        """Plans that set the first or the last stage's layers."""
        return (self.first != 0) | (self.last != 0)

    def check(self, model: ModelSpec) -> np.ndarray:
        """Reason code per plan (0 = valid): the first rule each plan breaks."""
        reason = np.zeros(self.n, dtype=np.int16)
        for code, rule in enumerate(_RULE_LIST, start=1):
            broken = rule.broken(self, model)
            reason[(reason == 0) & broken] = code
        return reason

    def take(self, idx: Any) -> PlanBatch:
        return PlanBatch(**{name: getattr(self, name)[idx] for name in self.__slots__})

    def plan(self, i: int) -> ParallelPlan:
        values = {field: getattr(self, col)[i].item() for col, field in _COLUMN_FIELDS.items()}
        return ParallelPlan(**values | {"recompute": RECOMPUTE_MODES[values["recompute"]]})

    def to_frame(self) -> pd.DataFrame:
        """The plan columns, with human names, for result tables."""
        return pd.DataFrame(
            {
                "num_gpus": self.num_gpus,
                "tp": self.tp,
                "cp": self.cp,
                "ep": self.ep,
                "etp": self.etp,
                "pp": self.pp,
                "dp": self.dp,
                "micro_batch": self.mb,
                "global_batch": self.gb,
                "num_microbatches": self.num_microbatches,
                "recompute": pd.Categorical.from_codes(
                    self.recompute.astype(np.int8), categories=list(RECOMPUTE_MODES)
                ),
                "sequence_parallel": self.sp,
                "vpp": self.vpp,
                "zero": self.zero,
                "dp_overlap": self.dp_overlap,
                "first_stage_layers": self.first,
                "last_stage_layers": self.last,
            }
        )
