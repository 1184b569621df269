"""Measured op tables (``profile_tables.py``) answering the op model's queries.

``MeasuredTables.override`` answers an op-time query from the profile's table where the
table covers the shape, and keeps the analytical time elsewhere, counting what fell
outside so the user can be told (``coverage``).

Memory-bound ops are measured on tensors of E elements and looked up by the bytes the
simulator counts for them. A table records the elements it measured and the bytes per
element it was written with; ``MeasuredTables`` re-keys it with the current simulator's
count (``sim/convention.py``), so an older profile keeps answering for the same shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vtrain_opt.profile_tables import COLLECTIVES, MEMORY_OPS, Table, is_number, parse_tables


def _rekey(table: Table, raw: Any, dtype: str) -> Table:
    """A memory-bound op's table keyed by the current simulator's bytes per element."""
    shape = raw.get("shape") if isinstance(raw, Mapping) else None
    if (
        not isinstance(shape, Mapping)
        or "elements" not in shape
        or "bytes_per_element" not in shape
    ):
        return table  # written without them: keep its keys
    from vtrain_opt.sim.convention import sim_bytes_per_element

    now = sim_bytes_per_element(dtype).get(table.op)
    then = shape["bytes_per_element"]
    if now is None or not is_number(then) or then <= 0 or abs(now / then - 1.0) < 1e-9:
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
