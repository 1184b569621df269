"""The plans of an Optuna study's trials, simulated once each.

A batch of trial keys is expanded into plans and simulated in one vectorized call per
GPU type (on a Ray worker when the backend is Ray); results are cached by key, so a
repeated configuration is never simulated twice. Each trial keeps the fastest feasible
of its plans (the least violation when none is feasible).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.search.evaluate import COST, TIME, evaluate, plan_of_row, rows
from vtrain_opt.search.limits import Limits
from vtrain_opt.search.ray_backend import Backend
from vtrain_opt.search.space import SearchSpace
from vtrain_opt.search.trial_space import Key, ParamSpace
from vtrain_opt.spec.plan import PlanBatch
from vtrain_opt.units import DAY_S

_KEY_COLS = (
    *("target", "gb", "tp", "pp", "dp", "mb", "recompute", "sp", "vpp", "zero", "dp_overlap"),
    *("first", "last", "cp", "ep", "etp"),
)


def evaluate_keys(
    space: SearchSpace, target: int, keys: np.ndarray, tokens: float, limits: Limits
) -> tuple[np.ndarray, pd.DataFrame, dict[str, np.ndarray]]:
    """Simulate the plans ``keys`` (K, 16) of one target (GPU type and dtype) in one call
    (here or on Ray).

    Returns which keys belong to the space, the result rows of those that do, and their
    constraint values (memory and each active limit; <= 0 means met).
    """
    c = {name: keys[:, i] for i, name in enumerate(_KEY_COLS)}
    batch = PlanBatch(
        tp=c["tp"],
        pp=c["pp"],
        dp=c["dp"],
        mb=c["mb"],
        gb=c["gb"],
        recompute=c["recompute"].astype(np.int8),
        sp=c["sp"].astype(bool),
        vpp=c["vpp"],
        zero=c["zero"],
        dp_overlap=c["dp_overlap"].astype(bool),
        first=c["first"],
        last=c["last"],
        cp=c["cp"],
        ep=c["ep"],
        etp=c["etp"],
    )
    member = space.member_mask(target, batch)
    inside = batch.take(np.flatnonzero(member))
    if inside.n == 0:
        return member, pd.DataFrame(), {}
    ev = evaluate(space, target, inside, tokens, limits)
    constraints = {
        "memory": ev.cols["memory_per_gpu_bytes"] / ev.cols["memory_capacity_bytes"] - 1.0,
        **limits.violations(ev.cols),
    }
    return member, rows(space, ev), constraints


class TrialCache:
    """Every distinct plan the study's trials stood for, its result row and constraints;
    and for each trial key seen, whether it is in the space and the row of its plan."""

    def __init__(self, params: ParamSpace, backend: Backend, tokens: float, limits: Limits) -> None:
        self.params = params
        self.backend = backend
        self.tokens = tokens
        self.limits = limits
        self.shared_space = backend.put(params.space)
        self.hits: dict[Key | None, tuple[bool, int]] = {None: (False, -1)}  # (in space, row)
        self.frames: list[pd.DataFrame] = []
        self.constraint_rows: list[dict[str, np.ndarray]] = []

    def lookup(self, keys: list[Key | None]) -> None:
        """Evaluate the trial keys not seen yet: one vectorized call per target (GPU type and
        dtype)."""
        new = sorted({k for k in keys if k not in self.hits}, key=str)
        if not new:
            return
        plans = {k: self.params.expand(k) for k in new}  # type: ignore[arg-type]
        flat = sorted({p for ps in plans.values() for p in ps})
        arr = np.array(flat, dtype=np.int64)
        groups = [(int(g), arr[arr[:, 0] == g]) for g in np.unique(arr[:, 0])]
        calls = [(self.shared_space, g, sub, self.tokens, self.limits) for g, sub in groups]
        row_of: dict[Key, int] = {}
        offset = self.count()
        for (_, sub), (member, df, cons) in zip(
            groups, self.backend.map(evaluate_keys, calls), strict=True
        ):
            inside = [_as_key(tuple(k)) for k, m in zip(sub.tolist(), member, strict=True) if m]
            row_of.update({k: offset + j for j, k in enumerate(inside)})
            if len(df):
                self.frames.append(df)
                self.constraint_rows.append(cons)
                offset += len(df)
        all_rows, cons_all = self.rows(), self.constraints()
        for key, candidates in plans.items():
            found = [row_of[p] for p in candidates if p in row_of]
            self.hits[key] = (True, _best(found, all_rows, cons_all)) if found else (False, -1)

    def count(self) -> int:
        """Distinct plans simulated so far."""
        return sum(len(f) for f in self.frames)

    def rows(self) -> pd.DataFrame:
        """The result rows of every plan simulated so far (one frame, kept as one)."""
        if not self.frames:
            return pd.DataFrame()
        if len(self.frames) > 1:
            self.frames[:] = [pd.concat(self.frames, ignore_index=True)]
        return self.frames[0]

    def constraints(self) -> dict[str, np.ndarray]:
        """The constraint values of those rows, by name (<= 0 means met)."""
        parts = self.constraint_rows
        if len(parts) > 1:
            parts[:] = [{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}]
        return parts[0] if parts else {}


def trial_attrs(all_rows: pd.DataFrame, i: int) -> dict[str, Any]:
    """A told trial's user attributes: its plan (GPUs, type and layout), days and dollars.
    Optuna's dashboard lists them beside each trial; ``optuna.load_study`` reads them back.
    (Three: each is one write, and one fsync, of a journal file.)"""
    row = all_rows.iloc[i]
    return {
        "plan": f"{int(row['num_gpus'])} x {row['gpu']}: {plan_of_row(row).describe()}",
        "days": round(float(row[TIME]) / DAY_S, 4),
        "dollars": round(float(row[COST]), 2),
    }


def _best(found: list[int], all_rows: pd.DataFrame, cons: dict[str, np.ndarray]) -> int:
    """A trial's plan among its evaluated rows: the fastest feasible one (for a fixed GPU
    type and count, also the cheapest); when none is feasible, the least violation."""
    idx = np.array(found)
    time = all_rows[TIME].to_numpy()[idx]
    feasible = all_rows["feasible"].to_numpy()[idx]
    if feasible.any():
        return int(idx[np.flatnonzero(feasible)[np.argmin(time[feasible])]])
    excess = sum(np.maximum(c[idx], 0.0) for c in cons.values()) if cons else np.zeros(len(idx))
    order = np.lexsort((time, excess))
    return int(idx[order[0]])


def _as_key(values: tuple[int, ...]) -> Key:
    g, gb, tp, pp, dp, mb, rc, sp, vpp, zero, ovl, first, last, cp, ep, etp = values
    return (g, gb, tp, pp, dp, mb, rc, bool(sp), vpp, zero, bool(ovl), first, last, cp, ep, etp)
