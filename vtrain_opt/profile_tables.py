"""Measured op tables of a profile (written by ``python -m vtrain_opt profile``): their
layout, their validation, and their interpolation.

A measured profile holds, per dtype, one table per op: the median measured time on a
grid of sizes. These are the profile's data; the simulator reads them through
``sim/measured.py`` (which answers the op model's queries and counts what the tables
covered), and this module never imports the simulator.

Interpolation is in log space: log time, multilinear in the log of each size axis
(GEMM over (m, n, k), attention over (batch_heads, seq, head_dim), memory-bound ops
over bytes, collectives over bytes for each measured group size). Power laws are
straight lines in log space, so a GEMM or a copy that scales with its size is
interpolated without bias, and grid points return the measured value exactly.

JSON layout (``profile["tables"]``)::

    {"bf16": {"gemm": {"axes": ["m", "n", "k"],
                       "grid": {"m": [...], "n": [...], "k": [...]},
                       "time_s": nested lists (axis order, null = not measured),
                       "spread": same shape, relative interquartile range (optional),
                       "repeats": 10, "shape": {...how it was measured...}},
              "layernorm": {"axes": ["nbytes"], "shape": {"elements": [...],
                            "bytes_per_element": 8.0, ...}, ...},
              "all_reduce": {"axes": ["group", "nbytes"], "scope": "intra_node", ...}}}
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

# fp8: only a GEMM table (``profile --fp8``: torch._scaled_mm); every other op of an fp8 run
# is read from the bf16 tables.
DTYPES = ("fp16", "bf16", "fp32", "fp8")

# Memory-bound ops, by the names ``sim/costs.py`` and ``sim/step.py`` pass to ``memory_s``;
# each table is keyed by the bytes the simulator counts for the op (``sim/convention.py``).
MEMORY_OPS = (
    "layernorm",
    "layernorm_bwd",
    "rmsnorm",
    "rmsnorm_bwd",
    "bias_dropout_add",
    "bias_dropout_add_bwd",
    "residual_add",
    "residual_add_bwd",
    "bias_gelu",
    "bias_gelu_bwd",
    "gelu",
    "gelu_bwd",
    "bias_grad",
    "swiglu",
    "swiglu_bwd",
    "rotary",
    "rotary_bwd",
    "softmax",
    "softmax_bwd",
    "dropout",
    "dropout_bwd",
    "embedding",
    "embedding_bwd",
    "cross_entropy",
    "cross_entropy_bwd",
    "optimizer",
    "adam",
    "memory",
)
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter")

# The axes of every op's table, in order.
TABLE_AXES: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"),
    "attention_fwd": ("batch_heads", "seq", "head_dim"),
    "attention_bwd": ("batch_heads", "seq", "head_dim"),
    **{op: ("nbytes",) for op in MEMORY_OPS},
    **{op: ("group", "nbytes") for op in COLLECTIVES},
    "send_recv": ("nbytes",),
}
# Categorical axes: a query must match a measured value exactly (no interpolation between
# group sizes: a ring of 3 is not the mean of rings of 2 and 4).
EXACT_AXES = frozenset({"group"})
_REL_TOL = 1e-9  # sizes computed in floating point may miss the grid edge by rounding


@dataclass(frozen=True)
class Table:
    """One op's measured times on a grid: ``time_s`` has one axis per entry of ``axes``."""

    op: str
    axes: tuple[str, ...]
    grid: tuple[np.ndarray, ...]
    time_s: np.ndarray  # NaN where not measured (e.g. out of device memory)
    scope: str = ""  # "intra_node" for collectives and send/recv

    @cached_property
    def _logs(self) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        with np.errstate(all="ignore"):
            return np.log(self.time_s), tuple(np.log(g) for g in self.grid)

    def lookup(self, *coords: Any) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated times at the query points and whether each lies inside the grid.

        ``coords`` are broadcastable arrays, one per axis. Returns (times, inside), both of
        the broadcast shape; times are NaN where ``inside`` is False.
        """
        if len(self.axes) == 1 and self.axes[0] not in EXACT_AXES:
            return self._lookup_1d(np.asarray(coords[0], dtype=np.float64))
        arrays = np.broadcast_arrays(*(np.asarray(c, dtype=np.float64) for c in coords))
        shape = arrays[0].shape
        flat = [a.ravel() for a in arrays]
        n = flat[0].size
        inside = np.ones(n, dtype=bool)
        on_grid = np.ones(n, dtype=bool)
        lo_idx, fracs, hit_idx = [], [], []
        log_time, log_grid = self._logs
        with np.errstate(all="ignore"):
            for name, g, lg, x in zip(self.axes, self.grid, log_grid, flat, strict=True):
                size = len(g)
                hit = np.clip(np.searchsorted(g, x), 0, size - 1)
                exact = g[hit] == x
                on_grid &= exact
                hit_idx.append(hit)
                if name in EXACT_AXES:
                    inside &= exact
                    lo_idx.append(hit)
                    fracs.append(np.zeros(n))
                    continue
                inside &= (x >= g[0] * (1 - _REL_TOL)) & (x <= g[-1] * (1 + _REL_TOL))
                if size == 1:
                    lo_idx.append(np.zeros(n, dtype=np.intp))
                    fracs.append(np.zeros(n))
                    continue
                lx = np.clip(np.log(np.where(x > 0, x, g[0])), lg[0], lg[-1])
                lo = np.clip(np.searchsorted(lg, lx, side="right") - 1, 0, size - 2)
                lo_idx.append(lo)
                fracs.append((lx - lg[lo]) / (lg[lo + 1] - lg[lo]))
            acc = np.zeros(n)
            for corner in itertools.product((0, 1), repeat=len(self.axes)):
                w = np.ones(n)
                idx = []
                for c, lo, f, g in zip(corner, lo_idx, fracs, self.grid, strict=True):
                    w = w * (f if c else 1.0 - f)
                    idx.append(np.minimum(lo + c, len(g) - 1))
                v = log_time[tuple(idx)]
                acc = acc + np.where(w > 0, w * v, 0.0)
            values = np.exp(acc)
            # exactly the measured value on grid points (no log/exp rounding)
            values = np.where(on_grid, self.time_s[tuple(hit_idx)], values)
        inside &= np.isfinite(values) & (values > 0)
        values = np.where(inside, values, np.nan)
        return values.reshape(shape), inside.reshape(shape)

    def _lookup_1d(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same interpolation over one axis, in one ``np.interp`` (the common case)."""
        g = self.grid[0]
        log_time, (lg,) = self._logs
        with np.errstate(all="ignore"):
            inside = (x >= g[0] * (1 - _REL_TOL)) & (x <= g[-1] * (1 + _REL_TOL))
            values = np.exp(np.interp(np.log(np.where(x > 0, x, g[0])), lg, log_time))
            hit = np.clip(np.searchsorted(g, x), 0, len(g) - 1)
            values = np.where(g[hit] == x, self.time_s[hit], values)  # exact on grid points
        inside &= np.isfinite(values) & (values > 0)
        return np.where(inside, values, np.nan), inside


def parse_tables(raw: Any, origin: str = "profile") -> dict[str, dict[str, Table]]:
    """Validate the ``tables`` block of a profile; a bad key raises ValueError naming it."""
    where = f"{origin}: key 'tables'"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be an object of dtype -> op tables")
    out: dict[str, dict[str, Table]] = {}
    for dtype, ops in raw.items():
        if dtype not in DTYPES:
            raise ValueError(f"{where}: unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
        if not isinstance(ops, Mapping):
            raise ValueError(f"{origin}: key 'tables.{dtype}' must be an object of op tables")
        out[dtype] = {
            op: _parse_table(op, t, f"{origin}: key 'tables.{dtype}.{op}") for op, t in ops.items()
        }
    return out


def _parse_table(op: str, raw: Any, where: str) -> Table:
    if op not in TABLE_AXES:
        raise ValueError(f"{where}': unknown op; known ops: {', '.join(TABLE_AXES)}")
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}' must be an object")
    for key in ("axes", "grid", "time_s"):
        if key not in raw:
            raise ValueError(f"{where}': missing key {key!r}")
    axes = tuple(raw["axes"]) if isinstance(raw["axes"], list) else None
    if axes != TABLE_AXES[op]:
        raise ValueError(f"{where}.axes' must be {list(TABLE_AXES[op])}, got {raw['axes']!r}")
    if not isinstance(raw["grid"], Mapping):
        raise ValueError(f"{where}.grid' must be an object of axis -> sizes")
    grid = []
    for name in axes:
        values = raw["grid"].get(name)
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}.grid.{name}': missing or not a non-empty list")
        if not all(is_number(v) and v > 0 for v in values):
            raise ValueError(f"{where}.grid.{name}': sizes must be positive numbers")
        g = np.asarray(values, dtype=np.float64)
        if np.any(np.diff(g) <= 0):
            raise ValueError(f"{where}.grid.{name}': sizes must be strictly increasing")
        grid.append(g)
    shape = tuple(len(g) for g in grid)
    time_s = _numeric_array(raw["time_s"], shape, f"{where}.time_s'")
    measured = time_s[np.isfinite(time_s)]
    if measured.size == 0:
        raise ValueError(f"{where}.time_s': no measured value")
    if np.any(measured <= 0):
        raise ValueError(f"{where}.time_s': times must be positive seconds (or null)")
    if "spread" in raw:
        _numeric_array(raw["spread"], shape, f"{where}.spread'")
    scope = str(raw.get("scope", ""))
    return Table(op=op, axes=axes, grid=tuple(grid), time_s=time_s, scope=scope)


def is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _numeric_array(raw: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Nested lists of numbers or null (NaN) of the given shape."""
    try:
        arr = np.array(raw, dtype=object)
    except ValueError:
        arr = None
    if arr is None or arr.shape != shape:
        got = "ragged lists" if arr is None else "x".join(map(str, arr.shape)) or "a scalar"
        raise ValueError(
            f"{where} must hold {'x'.join(map(str, shape))} values (the grid), got {got}"
        )
    out = np.full(shape, np.nan)
    for idx, v in np.ndenumerate(arr):
        if v is None:
            continue
        if not is_number(v):
            raise ValueError(f"{where}: value {v!r} at {list(idx)} is not a number or null")
        out[idx] = float(v)
    return out
