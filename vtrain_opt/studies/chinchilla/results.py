"""The results of a compute-optimal study as data: the frontier frame (more to come)."""

from __future__ import annotations

import pandas as pd

from vtrain_opt.studies.chinchilla.study import StudyResult


def frontier_frame(result: StudyResult) -> pd.DataFrame:
    """One row per budget: N*, D*, loss and the ideal answers (for the frontier plot)."""
    rows = []
    for a in result.answers:
        rows.append(
            {
                "budget": a.budget.value,
                "unit": a.budget.unit,
                "label": a.budget.label(),
                "params": a.optimal["params"],
                "tokens": a.optimal["tokens"],
                "tokens_per_param": a.optimal["tokens_per_param"],
                "loss": a.optimal["loss"],
                "mfu": a.optimal["mfu"],
                "ideal_params": a.ideal["params"],
                "ideal_tokens": a.ideal["tokens"],
                "ideal_tokens_per_param": a.ideal["tokens_per_param"],
                "ideal_loss": a.ideal["loss"],
                "real_mfu_law_params": a.at_real_mfu["params"],
                "real_mfu_law_tokens": a.at_real_mfu["tokens"],
                "real_mfu_law_tokens_per_param": a.at_real_mfu["tokens_per_param"],
                "rule_params": a.ideal["rule"]["params"],
                "rule_tokens": a.ideal["rule"]["tokens"],
            }
        )
    return pd.DataFrame(rows)
