"""Uneven pipeline stages: how a plan's layers split over its stages and model chunks.

Megatron-core's decoder_first/last_pipeline_num_layers: the first and/or the last stage
hold the given layers, the other stages split the rest evenly; or the embedding and the
loss count as a layer in an even split (account_for_embedding/loss_in_pipeline_split).
A plan's fields ``first``/``last`` (``first_stage_layers``/``last_stage_layers``) are 0
for an even share. The functions take a ``PlanBatch`` (or a ``ParallelPlan``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _if_uneven(b: Any, mask: Callable[[], Any], even: bool = False) -> Any:
    """``mask()`` where the batch has uneven stages, else ``even`` (skips the work)."""
    return mask() if b.any_uneven else np.broadcast_to(np.bool_(even), (len(b.pp),))


def stage_layer_counts(batch: Any, num_layers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, middle, last) stage layer counts per plan, as float arrays (N,).

    0 in ``first_stage_layers``/``last_stage_layers`` means an even share; the stages not
    set split the rest evenly (Megatron-core's decoder_first/last_pipeline_num_layers).
    The middle count may be fractional for a plan that breaks the rules.
    """
    p = batch.pp.astype(np.float64)
    if not batch.any_uneven:
        even = num_layers / np.maximum(p, 1)
        return even, even, even
    f, last = batch.first.astype(np.float64), batch.last.astype(np.float64)
    rest_stages = p - (f > 0) - (last > 0)
    rest = num_layers - f - last
    mid = np.where(rest_stages > 0, rest / np.maximum(rest_stages, 1), 0.0)
    even = num_layers / np.maximum(p, 1)
    mid = np.where(batch.uneven, mid, even)
    return np.where(f > 0, f, mid), mid, np.where(last > 0, last, mid)


def _stage_sum(plan: Any, num_layers: int) -> str:
    """Why a plan's first/last stage layers do not add up, with the sum."""
    f, last = plan.first_stage_layers, plan.last_stage_layers
    rest_stages = plan.pp - (f > 0) - (last > 0)
    given = " + ".join(x for x in (f"first {f}" if f else "", f"last {last}" if last else "") if x)
    rest = num_layers - f - last
    if rest_stages == 0:
        return f"{given} = {f + last} (pp={plan.pp}: no other stage)"
    return (
        f"{given} leaves {rest} layers for the other {rest_stages} stages "
        f"({rest / rest_stages:g} each, not a whole number of at least 1)"
    )


def _out_of_range(b: Any, num_layers: int) -> np.ndarray:
    return (b.first < 0) | (b.last < 0) | (b.first >= num_layers) | (b.last >= num_layers)


def _split_adds_up(b: Any, num_layers: int) -> np.ndarray:
    rest_stages = b.pp - (b.first > 0) - (b.last > 0)
    rest = num_layers - b.first - b.last
    zero_rest = np.where(rest_stages == 0, rest == 0, rest >= rest_stages)
    return zero_rest & ((rest_stages == 0) | (rest % np.maximum(rest_stages, 1) == 0))


def _edge_fits(n: np.ndarray, v: np.ndarray) -> np.ndarray:
    """n layers over v chunks of ceil(n/v) layers, the edge chunk holding the rest (>= 1)."""
    per = -(-n // v)
    return (n - (v - 1) * per) >= 1


def _chunks_fit(b: Any, num_layers: int) -> np.ndarray:
    first, mid, last = stage_layer_counts(b, num_layers)
    v = np.maximum(b.vpp, 1)
    mid_ok = (b.pp < 3) | (np.mod(mid, v) == 0)
    f_i, l_i = first.astype(np.int64), last.astype(np.int64)
    return mid_ok & _edge_fits(f_i, v) & _edge_fits(l_i, v)


def chunk_layers(batch: Any, num_layers: int) -> dict[str, np.ndarray]:
    """Layers per model chunk, float arrays (N,): ``first0`` (the first stage's chunk 0),
    ``first`` (its other chunks), ``middle``, ``last`` (the last stage's chunks but its
    last), ``last_end`` (the last stage's last chunk). The edge chunks hold the remainder
    when a stage's layers do not split evenly over its vpp chunks (Megatron-core's
    account_for_embedding/loss_in_pipeline_split leaves one layer out of them)."""
    first, mid, last = stage_layer_counts(batch, num_layers)
    v = np.maximum(batch.vpp, 1).astype(np.float64)
    f_per = np.ceil(first / v)
    l_per = np.ceil(last / v)
    uneven = batch.uneven
    f_per = np.where(uneven, f_per, first / v)
    l_per = np.where(uneven, l_per, last / v)
    return {
        "first0": first - (v - 1) * f_per,
        "first": f_per,
        "middle": mid / v,
        "last": l_per,
        "last_end": last - (v - 1) * l_per,
    }


def accounted_split(
    num_layers: int,
    pp: int,
    vpp: int,
    *,
    embedding: bool,
    loss: bool,
    first: int = 0,
    last: int = 0,
) -> tuple[int, int]:
    """(first, last) stage layers when the embedding and/or the loss count as a layer in
    the even split (Megatron-core's account_for_embedding/loss_in_pipeline_split): the
    layers plus those extras split evenly over pp x vpp chunks, the first (last) stage
    holding one layer fewer. Raises ValueError (one line) when they do not split."""
    if first or last:
        raise ValueError(
            "the embedding/loss accounting in the pipeline split excludes "
            "--first-stage-layers/--last-stage-layers (as in Megatron-core)"
        )
    total = num_layers + int(embedding) + int(loss)
    if pp < 2 or total % (pp * vpp):
        raise ValueError(
            f"layers ({num_layers}) + embedding ({int(embedding)}) + loss ({int(loss)}) = "
            f"{total} must split evenly over pp x vpp = {pp} x {vpp} stages (pp > 1)"
        )
    per = total // pp
    return (per - 1 if embedding else 0), (per - 1 if loss else 0)


STAGE_LAYER_MODES = ("even", "auto")


def parse_stage_layers(value: Any) -> str:
    """A space's ``stage_layers``: 'even', 'auto' or 'F,L' (a list [F, L] too), normalized;
    raises ValueError (one line)."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value).strip().replace(" ", "")
    if text in STAGE_LAYER_MODES:
        return text
    parts = text.strip("[]").split(",")
    if len(parts) == 2 and all(p.isdigit() for p in parts) and any(int(p) for p in parts):
        return f"{int(parts[0])},{int(parts[1])}"
    raise ValueError(
        f"stage_layers: {value!r} is not even, auto or [first, last] (layers of the first and "
        "last stage, 0 for an even share)"
    )


def split_variants(
    mode: str, num_layers: int, pp: np.ndarray, vpp: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (first, last) stage layers a search tries for each plan's (pp, vpp), arrays (N,).

    'even': (0, 0). 'F,L': that split. 'auto': the even split and four uneven ones around
    it, with x the edge stages' layers and the middle stages holding one or two more:
    first = last = x with middle x + 1 (x = (L - pp + 2) / pp) or x + 2 (x = (L - 2 pp + 4)
    / pp), and first or last alone = x with the others x + 1 (x = (L - pp + 1) / pp). A
    variant whose counts are not whole, or that breaks a rule, is marked -1 (out of the
    space): the plan rules drop it.
    """
    p = np.asarray(pp, dtype=np.int64)
    zero = np.zeros_like(p)
    if mode == "even":
        return [(zero, zero)]
    if mode != "auto":
        f, last = (int(x) for x in mode.split(","))
        return [(np.full_like(p, f), np.full_like(p, last))]
    L = num_layers
    out = [(zero, zero)]
    safe = np.maximum(p, 1)

    def whole(num: np.ndarray, ok: np.ndarray) -> np.ndarray:
        x = num // safe
        return np.where(ok & (num % safe == 0) & (x >= 1), x, -1)

    both1 = whole(L - p + 2, p > 2)
    both2 = whole(L - 2 * p + 4, p > 2)
    one = whole(L - p + 1, p > 1)
    out += [(both1, both1), (both2, both2), (one, zero), (zero, one)]
    return [
        (np.where((f < 0) | (last < 0), -1, f), np.where((f < 0) | (last < 0), -1, last))
        for f, last in out
    ]
