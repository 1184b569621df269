"""Limits a plan must meet besides fitting in memory: budget, wall-clock time, GPU count.

A plan is feasible when the simulator says it fits (reason 0) and it meets every limit.
Each broken limit gets its own reason code, appended after the simulator's reasons, so a
search can count why plans were rejected and explain an impossible budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vtrain_opt.spec.plan import REASONS
from vtrain_opt.units import DAY_S, Budget, format_count, format_usd

REASON_BUDGET = len(REASONS)
REASON_TIME = len(REASONS) + 1
REASON_GPUS = len(REASONS) + 2
# A plan of a GPU type under a dtype it lacks (fp8 on an A100: search/targets.py).
REASON_DTYPE = len(REASONS) + 3
# Every reason a search can report: the simulator's (rules, memory) and the limits'.
SEARCH_REASONS: tuple[str, ...] = (
    *REASONS,
    "over budget",
    "over max days",
    "outside GPU range",
    "dtype not on this GPU",
)


@dataclass(frozen=True)
class Limits:
    """Hard limits of a search. ``None`` means no limit."""

    budget_usd: float | None = None
    budget_gpu_hours: float | None = None
    max_time_s: float | None = None
    min_gpus: int | None = None
    max_gpus: int | None = None

    def __post_init__(self) -> None:
        for name in ("budget_usd", "budget_gpu_hours", "max_time_s"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(v) and v > 0):
                raise ValueError(f"limits.{name}: must be a positive number, got {v!r}")
        for name in ("min_gpus", "max_gpus"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"limits.{name}: must be a positive whole number, got {v!r}")
        if self.min_gpus and self.max_gpus and self.min_gpus > self.max_gpus:
            raise ValueError(
                f"limits: min GPUs ({self.min_gpus}) is above max GPUs ({self.max_gpus})"
            )

    @classmethod
    def from_budget(
        cls,
        budget: Budget | None = None,
        *,
        max_days: float | None = None,
        min_gpus: int | None = None,
        max_gpus: int | None = None,
    ) -> Limits:
        return cls(
            budget_usd=budget.usd if budget else None,
            budget_gpu_hours=budget.gpu_hours if budget else None,
            max_time_s=None if max_days is None else max_days * DAY_S,
            min_gpus=min_gpus,
            max_gpus=max_gpus,
        )

    @property
    def any(self) -> bool:
        return any(v is not None for v in self.to_dict().values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_usd": self.budget_usd,
            "budget_gpu_hours": self.budget_gpu_hours,
            "max_time_s": self.max_time_s,
            "min_gpus": self.min_gpus,
            "max_gpus": self.max_gpus,
        }

    def describe(self) -> str:
        parts = []
        if self.budget_usd is not None:
            parts.append(f"budget {format_usd(self.budget_usd)}")
        if self.budget_gpu_hours is not None:
            parts.append(f"budget {format_count(self.budget_gpu_hours)} GPU-hours")
        if self.max_time_s is not None:
            parts.append(f"at most {self.max_time_s / DAY_S:g} days")
        if self.min_gpus is not None:
            parts.append(f"at least {self.min_gpus} GPUs")
        if self.max_gpus is not None:
            parts.append(f"at most {self.max_gpus} GPUs")
        return ", ".join(parts) or "no limits"

    # ---- vectorized checks ----------------------------------------------------------------
    def apply(self, cols: dict[str, np.ndarray], num_gpus: np.ndarray) -> np.ndarray:
        """Reason code per plan (0 = feasible) after the limits; arrays (N,).

        ``cols`` are the simulator's columns with ``tokens`` given (``cost_usd``,
        ``gpu_hours``, ``training_time_s``); the first broken limit names the reason.
        """
        reason = cols["reason_code"].astype(np.int16, copy=True)
        with np.errstate(invalid="ignore"):
            checks = [
                (REASON_GPUS, self._gpus_broken(num_gpus)),
                (REASON_BUDGET, _over(cols.get("cost_usd"), self.budget_usd)),
                (REASON_BUDGET, _over(cols.get("gpu_hours"), self.budget_gpu_hours)),
                (REASON_TIME, _over(cols.get("training_time_s"), self.max_time_s)),
            ]
        for code, broken in checks:
            if broken is not None:
                reason[(reason == 0) & broken] = code
        return reason

    def _gpus_broken(self, num_gpus: np.ndarray) -> np.ndarray | None:
        if self.min_gpus is None and self.max_gpus is None:
            return None
        lo = self.min_gpus or 0
        hi = self.max_gpus or np.iinfo(np.int64).max
        return (num_gpus < lo) | (num_gpus > hi)

    def violations(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Relative excess over each active money/time limit (<= 0 means met); arrays (N,).

        Used as Optuna constraints and to rank the plans closest to an impossible budget.
        """
        out: dict[str, np.ndarray] = {}
        if self.budget_usd is not None:
            out["budget_usd"] = cols["cost_usd"] / self.budget_usd - 1.0
        if self.budget_gpu_hours is not None:
            out["budget_gpu_hours"] = cols["gpu_hours"] / self.budget_gpu_hours - 1.0
        if self.max_time_s is not None:
            out["days"] = cols["training_time_s"] / self.max_time_s - 1.0
        return out


def _over(values: np.ndarray | None, limit: float | None) -> np.ndarray | None:
    if limit is None:
        return None
    if values is None:
        raise ValueError("a budget or time limit needs the number of training tokens")
    return values > limit
