"""The loss law's closed-form answers for a budget: the idealized side of the study.

The same budget at a constant utilization gives C = 6 N D FLOPs; the law's optimum and the
~20 tokens/parameter rule at C are what the real plans' answer is set beside.
"""

from __future__ import annotations

from typing import Any

from vtrain_opt.studies.chinchilla.budget import StudyBudget, StudyConfig
from vtrain_opt.studies.lossfit import LossFit, rule_of_thumb
from vtrain_opt.units import HOUR_S


def ideal_answer(
    budget: StudyBudget, peak: float, price: float, config: StudyConfig, fit: LossFit
) -> dict[str, Any]:
    """The law's optimum and the rule of thumb for ``budget`` at the constant utilization
    ``config.ideal_mfu`` of the GPUs' ``peak`` (C = 6 N D, no real plan involved)."""
    gpu_s = budget.gpu_seconds(price)
    compute = gpu_s * peak * config.ideal_mfu
    n, d = fit.optimum(compute)
    nr, dr = rule_of_thumb(compute, config.tokens_per_param_rule)
    return {
        "mfu": config.ideal_mfu,
        "gpu_hours": gpu_s / HOUR_S,
        "compute_flop": compute,
        "params": n,
        "tokens": d,
        "tokens_per_param": d / n,
        "loss": fit.loss(n, d),
        "law": {"params": n, "tokens": d, "tokens_per_param": d / n, "loss": fit.loss(n, d)},
        "rule": {
            "tokens_per_param": config.tokens_per_param_rule,
            "params": nr,
            "tokens": dr,
            "loss": fit.loss(nr, dr),
        },
    }


def law_optimum(fit: LossFit, peak_flop: float, mfu: float) -> dict[str, Any]:
    """The law's closed-form optimum at ``peak_flop`` x ``mfu`` FLOPs."""
    compute = peak_flop * mfu
    n, d = fit.optimum(compute)
    return {
        "mfu": mfu,
        "compute_flop": compute,
        "params": n,
        "tokens": d,
        "tokens_per_param": d / n,
        "loss": fit.loss(n, d),
    }
