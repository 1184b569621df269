"""Measured runs that their own neighbours contradict.

Two runs of one model on the same GPUs, with the same pipeline depth p and global batch:
run A uses no more tensor parallelism than run B and no smaller micro-batches, so each of
A's micro-batches does c = (mb_A / tp_A) / (mb_B / tp_B) >= 1 times the work per GPU of
B's, in kernels no smaller, with no more communication per FLOP and the same ops to
dispatch (unless A takes PyTorch's unfused softmax path where B does not). Then a stage
spends at most c times as long on A's micro-batch as on B's, and in a 1F1B pipeline of
m micro-batches (m_A = m_B / c)

    T_A <= c (m_A + p - 1) / (m_B + p - 1) T_B + (A's time after the pipeline)

for any stage times (equal stages are the worst case). The time after the pipeline, the
data-parallel all-reduce and the optimizer step, comes from the simulator: it is small.
When a measured T_A exceeds this bound by more than (1 + tol) / (1 - tol), no model that
charges at most c times as long for c times the work can put both runs within ``tol``:
at least one of them is off for a reason outside such a model (a slower machine or
software on the day, a measurement fault), and its error is not a missing term.
"""

from __future__ import annotations

import pandas as pd

from vtrain_opt.sim.costs import fused_softmax

# a pair compares runs of one model on one machine size, pipeline depth and global batch
PAIR_KEYS = [
    "file",
    "hidden_size",
    "num_attention_heads",
    "num_layers",
    "seq_length",
    "num_gpus",
    "pp",
    "global_batch",
]
RESULT_COLUMNS = [
    "file",
    "row",
    "row_other",
    "tp",
    "micro_batch",
    "tp_other",
    "micro_batch_other",
    "measured_s",
    "measured_other_s",
    "bound_s",
    "excess",
]


def contradictions(rows: pd.DataFrame, tolerance: float = 0.10) -> pd.DataFrame:
    """Rows whose measured time exceeds the bound a neighbour sets by more than
    (1 + tolerance) / (1 - tolerance), most contradicted first (one line per pair).

    ``rows``: measured rows with the plan and model columns of ``PAIR_KEYS``, ``tp``,
    ``dp``, ``micro_batch``, ``row``, ``measured_s`` and ``after_pipeline_s``.
    """
    cols = [*PAIR_KEYS, "row", "tp", "dp", "micro_batch", "measured_s", "after_pipeline_s"]
    r = rows[cols].copy()
    r["m"] = r["global_batch"] / (r["dp"] * r["micro_batch"])
    heads = r["micro_batch"] * r["num_attention_heads"] / r["tp"]
    r["fused"] = fused_softmax(heads.to_numpy(), r["seq_length"].to_numpy())
    pairs = r.merge(r, on=PAIR_KEYS, suffixes=("", "_other")).rename(
        columns={"measured_s_other": "measured_other_s"}
    )
    a_tp, b_tp = pairs["tp"], pairs["tp_other"]
    a_mb, b_mb = pairs["micro_batch"], pairs["micro_batch_other"]
    comparable = (
        (a_tp <= b_tp)
        & (a_mb >= b_mb)
        & ((a_tp != b_tp) | (a_mb != b_mb))
        & (pairs["fused"] | ~pairs["fused_other"])
    )
    pairs = pairs[comparable].copy()
    c = (pairs["micro_batch"] / pairs["tp"]) / (pairs["micro_batch_other"] / pairs["tp_other"])
    fill = pairs["pp"] - 1
    scale = c * (pairs["m"] + fill) / (pairs["m_other"] + fill)
    pairs["bound_s"] = scale * pairs["measured_other_s"] + pairs["after_pipeline_s"]
    pairs["excess"] = pairs["measured_s"] / pairs["bound_s"]
    limit = (1 + tolerance) / (1 - tolerance)
    out = pairs[pairs["excess"] > limit]
    return out[RESULT_COLUMNS].sort_values("excess", ascending=False, ignore_index=True)


def describe(pair: pd.Series) -> str:
    """One line for a contradicted row: the two runs, their times and the bound."""
    name = str(pair["file"]).rsplit("/", 1)[-1]
    return (
        f"{name} row {pair['row']} (tp {pair['tp']}, mb {pair['micro_batch']}: "
        f"{pair['measured_s']:.2f} s) against row {pair['row_other']} (tp {pair['tp_other']}, "
        f"mb {pair['micro_batch_other']}: {pair['measured_other_s']:.2f} s): "
        f"{pair['excess']:.2f}x its bound of {pair['bound_s']:.2f} s"
    )
