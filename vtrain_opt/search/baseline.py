"""The user's current plan (``--baseline``): read, simulated, and what the found plans save.

A baseline without ``recompute`` is simulated with each mode and the first one that fits
in memory stands for it, as a user would pick.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.search.engine import SearchResult
from vtrain_opt.search.space import SearchSpace
from vtrain_opt.search.targets import target_index


def parse_baseline(text: str, space: SearchSpace) -> tuple[int, list[Any]]:
    """The baseline's target (its GPU and dtype) and plans (one per recompute mode when not
    given: auto)."""
    from vtrain_opt.spec.plan import RECOMPUTE_MODES, ParallelPlan

    fields: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--baseline: {part.strip()!r} is not KEY=VALUE (e.g. tp=8)")
        fields[key.strip().lower()] = value.strip()
    gpu = fields.pop("gpu", space.gpus[0].name)
    try:
        target = target_index(space, gpu, fields.pop("dtype", None))
    except ValueError as e:
        raise ValueError(f"--baseline: {e}") from None
    fields.setdefault("gb", str(space.global_batch[0]))
    modes = [fields.pop("recompute")] if "recompute" in fields else list(RECOMPUTE_MODES)
    try:
        plans = [ParallelPlan.from_mapping({**fields, "recompute": m}) for m in modes]
        plans[0].validate(space.model)
    except ValueError as e:
        raise ValueError(f"--baseline: {e}") from None
    return target, plans


def evaluate_baseline(result: SearchResult, target: int, plans: list[Any]) -> pd.Series:
    """The baseline's result row: its first plan that fits in memory, else its last."""
    from vtrain_opt.search.evaluate import evaluate, rows
    from vtrain_opt.spec.plan import PlanBatch

    ev = evaluate(result.space, target, PlanBatch.from_plans(plans), result.tokens, result.limits)
    df = rows(result.space, ev)
    fits = np.flatnonzero(df["fits_memory"].to_numpy())
    return df.iloc[int(fits[0]) if fits.size else len(df) - 1]


def savings(result: SearchResult, base: pd.Series) -> dict[str, Any]:
    """Time and money the fastest and the cheapest plans save against the baseline."""
    out: dict[str, Any] = {}
    for name, row in (("best_time", result.best_time), ("best_cost", result.best_cost)):
        if row is None:
            continue
        bt, bc = float(base["training_time_s"]), float(base["cost_usd"])
        t, c = float(row["training_time_s"]), float(row["cost_usd"])
        out[name] = {
            "time_saved_s": bt - t,
            "time_saved_fraction": (bt - t) / bt,
            "cost_saved_usd": bc - c,
            "cost_saved_fraction": (bc - c) / bc,
        }
    return out
