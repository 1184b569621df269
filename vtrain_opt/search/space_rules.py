"""The checks of a search space's candidate values, and which pipeline splits they allow."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import RECOMPUTE_MODES, PlanBatch
from vtrain_opt.spec.stages import _stage_sum as stage_sum_text
from vtrain_opt.spec.stages import split_variants


def tp_ok(model: ModelSpec, tp: int) -> bool:
    return model.num_attention_heads % tp == 0 and model.kv_heads % tp == 0 and model.ffn % tp == 0


def split_ok(model: ModelSpec, split: str, pp: int, vpp: int) -> bool:
    """Whether some variant of the space's pipeline split (``stage_layers``) gives a valid
    pipeline of pp stages with vpp chunks each."""
    if split == "even" or pp == 1:
        return model.num_layers % (pp * vpp) == 0 and split in ("even", "auto")
    p, v = np.array([pp]), np.array([vpp])
    for f, last in split_variants(split, model.num_layers, p, v):
        # the other dimensions set to pass the rules
        batch = PlanBatch(tp=1, pp=p, dp=1, mb=1, gb=pp, vpp=v, first=f, last=last)
        if batch.check(model)[0] == 0:
            return True
    return False


def _split_sum(space: Any, pp: int) -> str:
    """For a fixed split, why pp stages cannot take it: ': first F + last L leaves R layers
    for the other S stages (x each, ...)' (as simulate says)."""
    if space.stage_layers in ("even", "auto") or pp < 2:
        return ""
    first, last = (int(x) for x in space.stage_layers.split(","))
    plan = SimpleNamespace(pp=pp, first_stage_layers=first, last_stage_layers=last)
    return f": {stage_sum_text(plan, space.model.num_layers)}"


def check_values(space: Any) -> None:
    """Candidate values that can never form a valid plan are errors, not silent no-ops."""
    m = space.model
    for gb in space.global_batch:
        if gb < 1:
            raise ValueError(f"space.global_batch: must be positive, got {gb}")
    for t in space.tp:
        if t < 1 or not tp_ok(m, t):
            raise ValueError(
                f"space.tp: {t} must divide the heads ({m.num_attention_heads}), "
                f"kv heads ({m.kv_heads}) and ffn ({m.ffn}) of {m.name}"
            )
    for p in space.pp:
        if space.stage_layers == "even" and (p < 1 or m.num_layers % p):
            raise ValueError(f"space.pp: {p} must divide the layers ({m.num_layers}) of {m.name}")
        if space.stage_layers != "even" and (p < 1 or not split_ok(m, space.stage_layers, p, 1)):
            raise ValueError(
                f"space.pp: {p} allows no pipeline split of the {m.num_layers} layers of "
                f"{m.name} with stage_layers {space.stage_layers}{_split_sum(space, p)}"
            )
    for c in space.cp:  # context parallelism: the causal load-balancing split
        if c < 1 or (c > 1 and m.seq_length % (2 * c)):
            raise ValueError(
                f"space.cp: {c} must be 1 or split the sequence ({m.seq_length}) into "
                f"2*cp = {2 * c} equal chunks"
            )
    for key in ("micro_batch", "vpp"):
        for v in getattr(space, key):
            if v < 1:
                raise ValueError(f"space.{key}: must be positive, got {v}")
    check_moe_values(space)
    for r in space.recompute:
        if r not in RECOMPUTE_MODES:
            raise ValueError(f"space.recompute: {r!r} is not one of {', '.join(RECOMPUTE_MODES)}")
    for z in space.zero:
        if z not in (0, 1, 2, 3):
            raise ValueError(f"space.zero: {z!r} is not one of 0, 1, 2, 3")


def as_tuple(value: Any, kind: type) -> tuple[Any, ...]:
    """A candidate list as a sorted tuple of ``kind`` (one value: a list of one)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray, set)):
        value = [value]
    out: list[Any] = []
    for v in value:
        if kind is bool:
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"expected true or false, got {v!r}")
            out.append(bool(v))
        elif kind is int:
            if isinstance(v, (bool, np.bool_)) or not float(v).is_integer():
                raise ValueError(f"expected a whole number, got {v!r}")
            out.append(int(v))
        else:
            out.append(kind(v))
    return tuple(sorted(set(out), key=lambda x: (str(type(x)), x)))


def powers_of_two(limit: int) -> list[int]:
    return [1 << i for i in range(int(limit).bit_length()) if (1 << i) <= limit]


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def shape_extras(space: Any) -> dict[str, np.ndarray]:
    """The (sp, vpp, zero, ep, etp) combinations of a space, columns (E,): the dimensions
    beside the core rows that the plan rules involve."""
    dims = (space.sequence_parallel, space.vpp, space.zero, space.ep, space.etp)
    grid = np.array(list(itertools.product(*dims)), dtype=np.int64).T
    out = {"sp": grid[0].astype(bool), "vpp": grid[1], "zero": grid[2]}
    if space.ep != (1,) or space.etp != (1,):  # MoE spaces only: dense batches stay as they were
        out |= {"ep": grid[3], "etp": grid[4]}
    return out


def check_moe_values(space: Any) -> None:
    """Expert parallel sizes that can never form a valid plan (sim/moe.py's rules)."""
    m = space.model
    for e in space.ep:
        if e < 1 or (e > 1 and not m.is_moe) or (m.num_experts or 1) % e:
            raise ValueError(
                f"space.ep: {e} must divide the experts of {m.name} ({m.num_experts or 1})"
            )
    for e in space.etp:
        if e < 1 or (e > 1 and not m.is_moe) or m.moe_ffn % e:
            raise ValueError(
                f"space.etp: {e} must divide moe_ffn_hidden_size ({m.moe_ffn}) of a MoE model"
            )
