"""Closed forms of Megatron's pipeline schedules, vectorized over plans.

Inputs per plan, all per micro-batch: ``chunk_s`` = forward + backward of one model
chunk of L/(pp*vpp) layers (and its framework overhead), ``first_extra_s`` = the first
stage's extra work (embedding), ``last_extra_s`` = the last stage's extra (final norm,
logits, loss), ``p2p_s`` = one transfer between neighbouring stages.

1F1B (vpp = 1), stage totals S_0 = s + e, S_mid = s, S_L = s + d:

    T = sum_i S_i + 2 (p-1) c + (m-1) S_L + max(0, 2c - d) g(m, p) + max(0, e - d) max(0, m - p)

with g(m, p) = (m-2) - floor((m-2)/p) for m >= 2, else 0. The third term is the
last stage's steady state; the fourth is the round-trip limit of 1F1B (each stage
keeps only p - i micro-batches in flight, so a transfer delay c stretches the cycle of
stage 0 to S + 2c (p-1)/p unless the last stage is already slower by d >= 2c).
Exact against the task-graph replay (``sim/timeline.py``) when e = 0 (in particular
uniform stages); the last term is an approximation for e > 0, within 1% in the
contract test (the embedding is small next to a stage).

Interleaved 1F1B (vpp = v > 1, m a multiple of p), with e = e_f + e_b split into the
first chunk's forward and backward extras:

    T = (m v + p - 1) s + 2 (p v - 1) c + m d + e + max(0, (p-1) e_f - p c) + max(0, (p-1) e_b - p c)

exact whenever e <= d (the embedding is lighter than the head, as in every real model).

Outside the exact regimes (only reachable with synthetic stage times: a first stage
heavier than the last, or transfers longer than the head's extra work) the closed forms
overestimate the replay by up to about 10% (measured on 2,586 synthetic cases); see
``tests/test_contract.py``.

Uneven stages (first/last stage layers) have no exact closed form here: their plans are
evaluated by ``sim/uneven.py`` (the schedule's recurrence, exact) instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def closed_form_is_exact(
    *,
    first_extra_s: np.ndarray,
    last_extra_s: np.ndarray,
    p2p_s: np.ndarray,
    pp: np.ndarray,
    vpp: np.ndarray,
) -> np.ndarray:
    """Where the closed forms equal the task-graph replay exactly (to rounding).

    Exact: a single stage; 1F1B when the first stage carries no extra work or its extra e
    is small enough that e + 2c <= d; interleaved 1F1B when e <= d. Elsewhere the terms in
    e are approximations (the contract test bounds them at 1%).
    """
    e, d, c = first_extra_s, last_extra_s, p2p_s
    plain_exact = (e == 0) | (e + 2 * c <= d)
    return (np.asarray(pp) == 1) | np.where(np.asarray(vpp) > 1, e <= d, plain_exact)


@dataclass
class PipelineTimes:
    """Pipeline phase of one iteration, arrays (N,) in seconds."""

    pipeline_s: np.ndarray  # first forward to the last backward (stage 0's end)
    last_stage_end_s: np.ndarray  # when the last stage finishes its last backward
    p2p_exposed_s: np.ndarray  # transfer time on the critical path
    bubble_s: np.ndarray  # pipeline_s - m * S_L - p2p_exposed_s


def round_trip_steps(m: np.ndarray, p: np.ndarray) -> np.ndarray:
    """g(m, p): micro-batches of 1F1B whose cycle the round-trip limit stretches."""
    mm = np.asarray(m, dtype=np.float64) - 2.0
    return np.where(mm >= 0, mm - np.floor(mm / np.maximum(p, 1)), 0.0)


def pipeline_times(
    *,
    chunk_s: np.ndarray,
    chunk_bwd_s: np.ndarray,
    first_extra_fwd_s: np.ndarray,
    first_extra_bwd_s: np.ndarray,
    last_extra_s: np.ndarray,
    p2p_s: np.ndarray,
    pp: np.ndarray,
    vpp: np.ndarray,
    m: np.ndarray,
) -> PipelineTimes:
    """Closed-form pipeline makespan (see module docstring); ``*_bwd_s`` are backward parts."""
    p = np.asarray(pp, dtype=np.float64)
    v = np.asarray(vpp, dtype=np.float64)
    mf = np.asarray(m, dtype=np.float64)
    s, d, c = chunk_s, last_extra_s, p2p_s
    e_f, e_b = first_extra_fwd_s, first_extra_bwd_s
    e = e_f + e_b
    single = p == 1

    # 1F1B. With two stages there is no middle one: measure both extras against the lighter.
    two = p == 2
    e1 = np.where(two, np.maximum(e - d, 0.0), e)
    d1 = np.where(two, np.maximum(d - e, 0.0), d)
    s_mid = np.where(two, s + np.minimum(e, d), s)
    s_last = s_mid + d1
    total = (s_mid + e1) + (p - 2) * s_mid + s_last
    g = round_trip_steps(mf, p)
    plain = (
        total
        + 2 * (p - 1) * c
        + (mf - 1) * s_last
        + np.maximum(0.0, 2 * c - d1) * g
        + np.maximum(0.0, e1 - d1) * np.maximum(0.0, mf - p)
    )
    plain_p2p = 2 * (p - 1) * c + np.maximum(0.0, 2 * c - d1) * g

    interleaved = (
        (mf * v + p - 1) * s
        + 2 * (p * v - 1) * c
        + mf * d
        + e
        + np.maximum(0.0, (p - 1) * e_f - p * c)
        + np.maximum(0.0, (p - 1) * e_b - p * c)
    )
    inter_p2p = 2 * (p * v - 1) * c

    is_inter = v > 1
    pipeline = np.where(single, mf * (s + e + d), np.where(is_inter, interleaved, plain))
    p2p_exposed = np.where(single, 0.0, np.where(is_inter, inter_p2p, plain_p2p))
    busy_last = mf * (v * s + d)  # the last stage's own work (the single stage's when p = 1)
    busy_last = np.where(single, mf * (s + e + d), busy_last)
    bubble = pipeline - busy_last - p2p_exposed

    # The last stage's final backward (of model chunk 0) then travels up to stage 0.
    chain = (p - 1) * (chunk_bwd_s + c) + first_extra_bwd_s
    last_end = np.where(single, pipeline, pipeline - chain)
    return PipelineTimes(
        pipeline_s=pipeline,
        last_stage_end_s=last_end,
        p2p_exposed_s=p2p_exposed,
        bubble_s=bubble,
    )
