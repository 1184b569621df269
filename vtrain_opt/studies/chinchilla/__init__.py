"""Compute-optimal model size under a real budget, with the utilization real plans reach.

For every candidate size (``shapes.ShapeRules``) the search engine finds its plans on the
budget's GPUs; their real throughput gives the tokens D the budget can train, hence the
predicted loss L(N, D) (``lossfit.LossFit``, Epoch AI's fit by default). The
loss-minimizing size N* is the real answer; beside it the idealized one: the same budget at
a constant utilization (MFU 100% by default) with C = 6 N D, the law's closed-form optimum
and the ~20 tokens/parameter rule; and the law's optimum at the MFU N*'s plan reaches (the
budget's peak FLOPs x that MFU), which compares the law with the real plans like for like.

Two budget forms (docs/commands/chinchilla.md says why):

* a fixed cluster for a time (``num_gpus`` GPUs, ``T`` seconds): each size runs its
  highest-throughput plan on at most ``num_gpus`` GPUs, D = tokens/s x T;
* money or GPU-hours (optionally within ``T``): each size runs the plan and GPU count that
  train the most tokens within the budget and the time, D = max over plans of
  min(B / cost per token, T / time per token). That maximum lies on the time-cost Pareto
  front of the size's plans (D falls as either rises), which the search returns exactly,
  so one search per size serves every budget.

Candidates are searched in parallel (Ray tasks, or in-process with ``workers=0``).

The modules, one job each: ``budget`` (budgets and the study's configuration), ``sizes``
(one candidate size's plans and its row under a budget), ``ideal`` (the law's closed-form
answers), ``study`` (the runner), ``config`` (a configuration from the values a user gave),
``results`` (the study run into its folder: JSON, candidates, plots) and ``tables`` (the
text report).
"""

from vtrain_opt.studies.chinchilla.budget import DEFAULT_MONEY_MAX_GPUS, StudyBudget, StudyConfig
from vtrain_opt.studies.chinchilla.results import frontier_frame
from vtrain_opt.studies.chinchilla.sizes import (
    KEEP_COLUMNS,
    REF_TOKENS,
    SizeEval,
    candidate_row,
    evaluate_size,
    plan_dict,
    plan_for_budget,
)
from vtrain_opt.studies.chinchilla.study import BudgetAnswer, StudyResult, run_study

__all__ = [
    "DEFAULT_MONEY_MAX_GPUS",
    "KEEP_COLUMNS",
    "REF_TOKENS",
    "BudgetAnswer",
    "SizeEval",
    "StudyBudget",
    "StudyConfig",
    "StudyResult",
    "candidate_row",
    "evaluate_size",
    "frontier_frame",
    "plan_dict",
    "plan_for_budget",
    "run_study",
]
