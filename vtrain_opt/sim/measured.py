"""Measured op tables (written by ``python -m vtrain_opt profile``), read by interpolation.

A measured profile holds, per dtype, one table per op: the median measured time on a
grid of sizes. ``MeasuredTables.override`` answers an op-time query from the table
where the table covers the shape, and keeps the analytical time elsewhere, counting
what fell outside so the user can be told.

Interpolation is in log space: log time, multilinear in the log of each size axis
(GEMM over (m, n, k), attention over (batch_heads, seq, head_dim), memory-bound ops
over bytes, collectives over bytes for each measured group size). Power laws are
straight lines in log space, so a GEMM or a copy that scales with its size is
interpolated without bias, and grid points return the measured value exactly.

Memory-bound ops are measured on tensors of E elements and looked up by the bytes the
simulator counts for them. That count (bytes per element of the op's main tensor) is
the simulator's convention, which may change: a table records the elements it measured
and the bytes per element it was written with, and ``MeasuredTables`` re-keys it with
the current simulator's count (``sim_bytes_per_element``, read off ``sim/costs.py`` and
``sim/step.py`` themselves), so an older profile keeps answering for the same shapes.

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

DTYPES = ("fp16", "bf16", "fp32")

# Memory-bound ops, by the names ``sim/costs.py`` and ``sim/step.py`` pass to ``memory_s``;
# each table is keyed by the bytes the simulator counts for the op (see those modules).
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
        if not all(_is_number(v) and v > 0 for v in values):
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


def _is_number(v: Any) -> bool:
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
        if not _is_number(v):
            raise ValueError(f"{where}: value {v!r} at {list(idx)} is not a number or null")
        out[idx] = float(v)
    return out


# ---- the simulator's byte convention, read off its own code --------------------------------
_FACTORS: dict[str, dict[str, float]] = {}


def sim_bytes_per_element(dtype: str) -> dict[str, float]:
    """Bytes ``sim/costs.py`` and ``sim/step.py`` count per element of each memory-bound op's
    main tensor (per parameter for the optimizer), at this dtype.

    Found by running the cost functions on two small reference models (GPT and LLaMA,
    unfused attention, one GPU) with an op model that records what it is asked. The
    embedding follows the LLaMA model (a plain row lookup, as the profiler measures it).
    """
    if dtype in _FACTORS:
        return _FACTORS[dtype]
    from dataclasses import dataclass, field

    from vtrain_opt.profiles import load_profile
    from vtrain_opt.sim.costs import edge_costs, layer_costs
    from vtrain_opt.sim.memory import stage_params
    from vtrain_opt.sim.ops import OpModel
    from vtrain_opt.sim.step import SimContext, simulate_arrays
    from vtrain_opt.spec.hardware import get_cluster
    from vtrain_opt.spec.model import ModelSpec
    from vtrain_opt.spec.plan import ParallelPlan, PlanBatch
    from vtrain_opt.spec.setup import Setup

    @dataclass(frozen=True)
    class Recorder(OpModel):
        calls: list[tuple[str, float]] = field(default_factory=list)

        def memory_s(self, nbytes: Any, kernels: Any = 1, op: str = "memory") -> np.ndarray:
            self.calls.append((op, float(np.ravel(nbytes)[0])))
            return np.zeros(np.shape(nbytes))

    cluster = get_cluster("a100-80gb")
    setup = Setup(dtype=dtype, attention="unfused")
    s, h, heads, vocab = 128, 256, 4, 1024
    shape = dict(num_layers=1, hidden_size=h, num_attention_heads=heads, vocab_size=vocab)
    gpt = ModelSpec(family="gpt", seq_length=s, **shape)
    llama = ModelSpec(family="llama", seq_length=s, **shape)
    one, no = np.array([1]), np.array([False])
    seen: dict[str, list[float]] = {}
    for spec in (gpt, llama):
        rec = Recorder(load_profile("a100-80gb"), cluster, setup)
        layer_costs(spec, rec, one, one, no, np.array([0]))
        edge_costs(spec, rec, one, one, no)
        ctx = SimContext(spec, cluster, rec.profile, setup)
        ctx.__dict__["ops"] = rec  # the cached op model, replaced by the recorder
        plan = ParallelPlan(tp=1, pp=1, dp=1, micro_batch=1, global_batch=1)
        simulate_arrays(ctx, PlanBatch.from_plans([plan]))
        t, f = float(s), float(spec.ffn)
        # elements of each op's main tensor in this model (what the profiler's E counts)
        per_op = {
            "layernorm": t * h, "rmsnorm": t * h, "bias_dropout_add": t * h,
            "residual_add": t * h, "bias_gelu": t * f, "swiglu": t * f,
            "rotary": t * (h + spec.kv_hidden_size), "softmax": heads * t * t,
            "dropout": heads * t * t, "cross_entropy": t * spec.padded_vocab(1),
        }  # fmt: skip
        if spec is llama:  # GPT's embedding adds positions and dropout to the lookup
            per_op["embedding"] = t * h
        elements = {**per_op, **{f"{op}_bwd": n for op, n in per_op.items()}}
        elements["optimizer"] = float(stage_params(spec, one, one).first[0])
        for op, nbytes in rec.calls:
            if op in elements:
                seen.setdefault(op, []).append(nbytes / elements[op])
    factors = {op: float(np.median(v)) for op, v in seen.items()}
    factors["memory"] = 2.0 * setup.act_bytes  # a copy: read and write
    factors.update(_torch_bytes_per_element(dtype, Recorder, cluster, gpt))
    _FACTORS[dtype] = factors
    return factors


def _torch_bytes_per_element(dtype: str, recorder: Any, cluster: Any, gpt: Any) -> dict[str, float]:
    """The factors of the ops only the plain-PyTorch op list (``sim/costs_torch.py`` and its
    optimizer in ``sim/step.py``) asks for: GELU without a bias, an nn.Linear's bias
    gradient, AdamW over parameters in their own dtype. Read off that code as above, on the
    GPT reference model (dropout on, so every op is seen; no master weights, as the profiler
    times AdamW)."""
    from vtrain_opt.profiles import load_profile
    from vtrain_opt.sim.costs_torch import torch_layer_costs
    from vtrain_opt.sim.memory import stage_params
    from vtrain_opt.sim.step import SimContext, simulate_arrays
    from vtrain_opt.spec.plan import ParallelPlan, PlanBatch
    from vtrain_opt.spec.setup import Setup

    setup = Setup(
        dtype=dtype, attention="flash", framework="torch", dropout=0.1, master_weights="none"
    )
    rec = recorder(load_profile("a100-80gb"), cluster, setup)
    one = np.array([1])
    torch_layer_costs(gpt, rec, one, np.array([0]))
    layer_calls = list(rec.calls)
    ctx = SimContext(gpt, cluster, rec.profile, setup)
    ctx.__dict__["ops"] = rec
    plan = ParallelPlan(tp=1, pp=1, dp=1, micro_batch=1, global_batch=1)
    simulate_arrays(ctx, PlanBatch.from_plans([plan]))
    t, h, f = float(gpt.seq_length), float(gpt.hidden_size), float(gpt.ffn)
    # main tensor: GELU's (tokens x ffn) input; a Linear's (tokens x width) output gradient,
    # one width per Linear (QKV, attention output, MLP up, MLP down); the parameters
    candidates = {
        "gelu": [t * f],
        "gelu_bwd": [t * f],
        "bias_grad": [t * (h + 2 * gpt.kv_hidden_size), t * h, t * f],
    }
    out: dict[str, float] = {}
    for op, elements in candidates.items():
        nbytes = [b for name, b in layer_calls if name == op]
        if not nbytes:
            continue
        # the one factor by which every call's bytes are some Linear's elements
        common = set.intersection(*({round(b / e, 9) for e in elements} for b in nbytes))
        out[op] = float(min(common)) if common else float(np.median(nbytes) / elements[0])
    params = float(stage_params(gpt, one, one).first[0])
    adam = [b / params for name, b in rec.calls if name == "adam"]
    out["adam"] = float(np.median(adam))
    return out


def _rekey(table: Table, raw: Any, dtype: str) -> Table:
    """A memory-bound op's table keyed by the current simulator's bytes per element."""
    shape = raw.get("shape") if isinstance(raw, Mapping) else None
    if (
        not isinstance(shape, Mapping)
        or "elements" not in shape
        or "bytes_per_element" not in shape
    ):
        return table  # written without them: keep its keys
    now = sim_bytes_per_element(dtype).get(table.op)
    then = shape["bytes_per_element"]
    if now is None or not _is_number(then) or then <= 0 or abs(now / then - 1.0) < 1e-9:
        return table
    return Table(table.op, table.axes, (table.grid[0] * (now / then),), table.time_s, table.scope)


class MeasuredTables:
    """The op tables of a measured profile, answering ``OpModel`` queries.

    Counts, per op, how many query points came from the tables and how many fell back to
    the analytical model (and why), so a command can report it (``coverage``).
    """

    def __init__(self, tables: Mapping[str, Any], name: str = "profile") -> None:
        self.name = name
        self.tables = parse_tables(tables, origin=f"profile {name!r}")
        for dtype, ops in self.tables.items():
            for op, table in ops.items():
                if op in MEMORY_OPS:
                    ops[op] = _rekey(table, tables[dtype][op], dtype)
        self._counts: dict[str, dict[str, int]] = {}

    def dtypes(self) -> list[str]:
        return list(self.tables)

    def override(self, op: str, analytical: Any, *, dtype: str, **shape: Any) -> np.ndarray:
        """Measured times where a table of this dtype covers the shape, else ``analytical``."""
        analytical = np.asarray(analytical, dtype=np.float64)
        with np.errstate(all="ignore"):
            coords, needed, in_scope = _query(op, shape)
        target = np.broadcast_shapes(analytical.shape, *(np.shape(c) for c in coords))
        needed = np.broadcast_to(needed, target)
        table = self.tables.get(dtype, {}).get(op)
        if table is None:
            why = f"no {dtype} table" if dtype not in self.tables else "not measured"
            self._count(op, 0, int(needed.sum()), why)
            return np.broadcast_to(analytical, target).copy()
        values, inside = table.lookup(*coords)
        use = np.broadcast_to(inside & in_scope, target)
        out = np.where(use, np.broadcast_to(values, target), analytical)
        n_measured = int((use & needed).sum())
        n_out_scope = int((needed & ~np.broadcast_to(in_scope, target)).sum())
        n_outside = int((needed & ~use).sum()) - n_out_scope
        self._count(op, n_measured, n_outside, "outside the measured grid")
        self._count(op, 0, n_out_scope, "across nodes (tables are measured inside one node)")
        return out

    def _count(self, op: str, measured: int, analytical: int, why: str) -> None:
        c = self._counts.setdefault(op, {"measured": 0})
        c["measured"] += measured
        if analytical:
            c[why] = c.get(why, 0) + analytical

    def coverage(self) -> dict[str, dict[str, int]]:
        """Per op: query points answered from the tables (``measured``) and, per reason,
        those answered by the analytical model, since this object was created."""
        return {op: dict(c) for op, c in sorted(self._counts.items())}

    def reset(self) -> None:
        self._counts.clear()


def _query(op: str, shape: Mapping[str, Any]) -> tuple[list[Any], Any, Any]:
    """Table coordinates of a query, which points need an answer, and which are in scope."""
    if op == "gemm":
        m, n, k = (np.asarray(shape[a], dtype=np.float64) for a in ("m", "n", "k"))
        batch = np.asarray(shape.get("batch", 1), dtype=np.float64)
        # A batched GEMM runs batch x the tiles of one (m, n, k) GEMM, as one GEMM of
        # (batch*m, n, k) does: same FLOPs, same tile count, same K loop.
        return [m * batch, n, k], True, True
    if op in ("attention_fwd", "attention_bwd"):
        return [shape["batch_heads"], shape["seq"], shape["head_dim"]], True, True
    if op in COLLECTIVES:
        group = np.asarray(shape["group"], dtype=np.float64)
        per_node = np.asarray(shape.get("per_node", group), dtype=np.float64)
        # a group of one costs nothing (the caller zeroes it): not a question for the table
        return [group, shape["nbytes"]], group > 1, per_node >= group
    if op == "send_recv":
        inter = np.asarray(shape.get("inter_node", False), dtype=bool)
        return [shape["nbytes"]], True, ~inter
    return [shape["nbytes"]], True, True


def coverage_summary(coverage: Mapping[str, Mapping[str, int]]) -> str:
    """One line for the terminal: how much came from the tables, what fell back and why."""
    measured = sum(c.get("measured", 0) for c in coverage.values())
    by_reason: dict[str, dict[str, int]] = {}
    for op, c in coverage.items():
        for why, n in c.items():
            if why != "measured" and n:
                by_reason.setdefault(why, {})[op] = n
    total = measured + sum(sum(ops.values()) for ops in by_reason.values())
    if total == 0:
        return "measured profile: no op was evaluated"
    line = f"measured profile: {measured} of {total} op evaluations from the measured tables"
    if by_reason:
        parts = [
            f"{why}: {', '.join(f'{op} ({n})' for op, n in sorted(ops.items()))}"
            for why, ops in sorted(by_reason.items())
        ]
        line += "; analytical model for " + "; ".join(parts)
    return line


def measured_coverage(ops: Any) -> dict[str, Any] | None:
    """The coverage report of an ``OpModel`` with a measured profile, or None."""
    tables = getattr(ops, "measured", None)
    if tables is None:
        return None
    cov = tables.coverage()
    return {"ops": cov, "summary": coverage_summary(cov), "dtypes": tables.dtypes()}
