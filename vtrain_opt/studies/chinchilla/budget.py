"""The budgets of a compute-optimal study and its configuration, checked once on creation.

Two budget forms: a fixed cluster for a time, or money / GPU-hours (optionally within a
time); a study answers several budgets of one form (a frontier).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from vtrain_opt.search import GpuChoice
from vtrain_opt.spec.setup import Setup
from vtrain_opt.studies.lossfit import DEFAULT_FIT, FITS, LossFit
from vtrain_opt.studies.shapes import ShapeRules
from vtrain_opt.units import DAY_S, HOUR_S, format_usd

# The largest GPU count a money budget may buy, unless --max-gpus says otherwise.
DEFAULT_MONEY_MAX_GPUS = 16384


@dataclass(frozen=True)
class StudyBudget:
    """A fixed cluster for a time (``num_gpus`` and ``time_s``), or money / GPU-hours
    (``usd`` or ``gpu_hours``) optionally within ``time_s``."""

    num_gpus: int | None = None
    time_s: float | None = None
    usd: float | None = None
    gpu_hours: float | None = None

    def __post_init__(self) -> None:
        money = (self.usd is not None) + (self.gpu_hours is not None)
        if money > 1:
            raise ValueError("budget: give money or GPU-hours, not both")
        if self.num_gpus is not None:
            if money or self.time_s is None:
                raise ValueError(
                    "budget: a fixed cluster needs --num-gpus and --days (and no money budget)"
                )
        elif not money:
            raise ValueError(
                "budget: give a fixed cluster (--num-gpus N --days D) or a budget (--budget $5M)"
            )
        for name in ("time_s", "usd", "gpu_hours"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"budget: {name} must be positive, got {v!r}")

    @property
    def fixed_cluster(self) -> bool:
        return self.num_gpus is not None

    @property
    def value(self) -> float:
        """The quantity that varies along a frontier: days, dollars or GPU-hours."""
        if self.fixed_cluster:
            assert self.time_s is not None
            return self.time_s / DAY_S
        return float(self.usd if self.usd is not None else self.gpu_hours)  # type: ignore[arg-type]

    @property
    def unit(self) -> str:
        return "days" if self.fixed_cluster else ("USD" if self.usd is not None else "GPU-hours")

    def label(self) -> str:
        if self.fixed_cluster:
            return f"{self.num_gpus} GPUs x {self.value:g} days"
        money = format_usd(self.usd) if self.usd is not None else f"{self.gpu_hours:,.0f} GPU-hours"
        if self.time_s is not None:
            money += f" within {self.time_s / DAY_S:g} days"
        return money

    def gpu_seconds(self, price_per_gpu_hour_usd: float) -> float:
        """GPU time the budget buys (the ideal answer's compute is this x peak x MFU)."""
        if self.fixed_cluster:
            return float(self.num_gpus) * float(self.time_s)  # type: ignore[arg-type]
        if self.usd is not None:
            return self.usd / price_per_gpu_hour_usd * HOUR_S
        return float(self.gpu_hours) * HOUR_S  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "cluster" if self.fixed_cluster else "money",
            "num_gpus": self.num_gpus,
            "days": None if self.time_s is None else self.time_s / DAY_S,
            "usd": self.usd,
            "gpu_hours": self.gpu_hours,
            "label": self.label(),
        }


@dataclass(frozen=True)
class StudyConfig:
    """Everything a compute-optimal study depends on."""

    gpu: GpuChoice
    budgets: tuple[StudyBudget, ...]
    rules: ShapeRules = field(default_factory=ShapeRules)
    fit: LossFit | None = None
    setup: Setup | None = None
    min_params: float = 0.5e9
    max_params: float = 1e12
    num_sizes: int = 24
    ideal_mfu: float = 1.0
    tokens_per_param_rule: float = 20.0
    min_tokens_per_param: float = 1.0
    min_gpus: int | None = None
    max_gpus: int | None = None  # money budgets: the largest GPU count tried
    # plan dimensions of every size's search: dtypes compared per plan (bf16, fp8) and the
    # pipeline split (even, auto, 'F,L'), as a search space takes them
    dtypes: tuple[str, ...] = ()
    stage_layers: str = "even"
    cp: tuple[int, ...] = (1,)  # context-parallel sizes tried (the sequence over cp GPUs)

    def __post_init__(self) -> None:
        if not self.budgets:
            raise ValueError("budget: give at least one")
        kinds = {(b.fixed_cluster, b.num_gpus, b.usd is None) for b in self.budgets}
        if len(kinds) > 1:
            raise ValueError("--budgets: every budget must be of the same kind (days or money)")
        if not (0 < self.ideal_mfu <= 1):
            raise ValueError(f"--ideal-mfu: must be in (0, 1], got {self.ideal_mfu}")
        if not self.min_tokens_per_param >= 0:
            raise ValueError("--min-tokens-per-param: must be >= 0")

    def space_dims(self) -> dict[str, Any]:
        """The keyword arguments of each size's ``SearchSpace.create`` beyond the GPU range."""
        dims = {"dtypes": self.dtypes or None, "stage_layers": self.stage_layers, "cp": self.cp}
        experts = self.rules.num_experts or 1
        if experts > 1:  # MoE shapes: expert parallelism over the divisors of the experts
            dims["ep"] = tuple(e for e in range(1, min(experts, 64) + 1) if experts % e == 0)
        return dims

    @property
    def law(self) -> LossFit:
        return self.fit or FITS[DEFAULT_FIT]

    def gpu_range(self) -> tuple[int | None, int]:
        first = self.budgets[0]
        if first.fixed_cluster:
            return self.min_gpus, int(first.num_gpus)  # type: ignore[arg-type]
        return self.min_gpus, int(self.max_gpus or DEFAULT_MONEY_MAX_GPUS)
