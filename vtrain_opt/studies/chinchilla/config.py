"""A study's configuration from the values a user gave (flags, as text where they are text).

Here rather than in the command, so every caller builds a study the same way: the budget
forms and what may go with what, the GPU's default setup, the loss law by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from vtrain_opt.search import GpuChoice, SearchSpace
from vtrain_opt.sim.step import make_context
from vtrain_opt.spec.hardware import ClusterSpec
from vtrain_opt.spec.setup import Setup
from vtrain_opt.spec.stages import parse_stage_layers
from vtrain_opt.studies.chinchilla.budget import StudyBudget, StudyConfig
from vtrain_opt.studies.lossfit import parse_loss_fit
from vtrain_opt.studies.shapes import ShapeRules
from vtrain_opt.units import format_count, parse_budget, parse_duration_s


def budgets_from(
    *,
    num_gpus: int | None = None,
    days: str | None = None,
    budget: str | None = None,
    max_days: str | None = None,
    max_gpus: int | None = None,
    budget_list: str | None = None,
) -> tuple[StudyBudget, ...]:
    """The budgets of ``--num-gpus``, ``--days``, ``--budget``, ``--max-days``,
    ``--max-gpus`` and ``--budgets`` (``budget_list``); a wrong mix is one ValueError."""
    if budget_list and (days or budget):
        raise ValueError("give --budgets alone, or one --days / --budget")
    if days and budget:
        raise ValueError(
            "give either a fixed cluster (--num-gpus N --days T) or a budget (--budget $5M), not both"
        )
    fixed = num_gpus is not None
    if fixed and budget:
        raise ValueError(
            "--budget with --num-gpus: a money budget chooses the GPU count itself; use "
            "--max-gpus to cap it, or --num-gpus with --days for a fixed cluster"
        )
    if fixed and max_days:
        raise ValueError("--max-days goes with --budget; with --num-gpus give --days")
    if fixed and max_gpus:
        raise ValueError(
            "--max-gpus goes with --budget; with a fixed cluster --num-gpus is the cap"
        )
    given = split_budgets(budget_list) if budget_list else [days or budget]
    texts = [t for t in given if t is not None]
    if not texts:
        raise ValueError(
            "give a budget: --num-gpus N --days T (fixed cluster), --budget $5M or 1.5e6gpu-h, "
            "or --budgets LIST"
        )
    if fixed:
        return tuple(
            StudyBudget(num_gpus=num_gpus, time_s=parse_duration_s(t, "--days")) for t in texts
        )
    if days:
        raise ValueError("--days needs --num-gpus (a fixed cluster); with money use --max-days")
    limit = parse_duration_s(max_days, "--max-days") if max_days else None
    out = []
    for t in texts:
        b = parse_budget(t)
        out.append(StudyBudget(usd=b.usd, gpu_hours=b.gpu_hours, time_s=limit))
    return tuple(out)


def split_budgets(text: str) -> list[str]:
    """A comma-separated list of budgets; money like $1,000,000 keeps its commas when
    followed by three digits."""
    parts = re.split(r",(?!\d{3}(?:\D|$))", text)
    out = [p.strip() for p in parts if p.strip()]
    if not out:
        raise ValueError("--budgets: give at least one value")
    return out


def study_config(
    budgets: tuple[StudyBudget, ...],
    cluster: ClusterSpec,
    rules: ShapeRules,
    *,
    profile: str | None,
    loss_fit: str,
    min_params: float,
    max_params: float,
    num_sizes: int,
    ideal_mfu: float,
    tokens_per_param_rule: float,
    min_tokens_per_param: float,
    min_gpus: int | None,
    max_gpus: int | None,
    dtype: str | Sequence[str] | None = None,
    attention: str | None = None,
    framework: Mapping[str, Any] | None = None,
    stage_layers: str | None = None,
    cp: Sequence[int] | None = None,
) -> StudyConfig:
    """The study on ``cluster``'s GPUs (with ``profile``); the setup is the GPU's default
    unless ``dtype``, ``attention`` or ``framework`` (the framework options, given only
    where one differs from its default) say otherwise. Several dtypes (bf16, fp8) are a
    dimension of every size's search, compared per plan; ``stage_layers`` its pipeline
    split (even, auto or 'F,L'); ``cp`` its context-parallel sizes (default 1)."""
    gpu = GpuChoice(name=cluster.gpu.name, cluster=cluster, profile=profile)
    dtypes = [dtype] if isinstance(dtype, str) else list(dtype or [])
    setup = None
    probe = rules.for_params(min_params)
    if dtype or attention or framework is not None:  # the rest: the GPU's default
        default = make_context(probe, cluster, gpu.profile).setup
        setup = Setup(
            dtype=dtypes[0] if dtypes else default.dtype,
            attention=attention or default.attention,
            **(framework or {}),
        )
    if min_params > max_params:
        raise ValueError(
            f"--min-params {format_count(min_params)} is above --max-params "
            f"{format_count(max_params)}"
        )
    dims: dict[str, Any] = {
        "dtypes": tuple(dtypes) if len(dtypes) > 1 else (),
        "stage_layers": "even",
        "cp": tuple(sorted(set(cp or [1]))),
    }
    if stage_layers is not None:
        dims["stage_layers"] = parse_stage_layers(stage_layers)
    # a dtype the GPU lacks (fp8 on an A100) or a bad split: one line now, not per size
    SearchSpace.create(
        probe,
        [gpu],
        max_gpus=max_gpus or 8,
        gpu_step=1,
        setup=setup,
        dtypes=dims["dtypes"] or None,
        stage_layers=dims["stage_layers"],
        cp=dims["cp"],
    )
    return StudyConfig(
        **dims,
        gpu=gpu,
        budgets=budgets,
        rules=rules,
        fit=parse_loss_fit(loss_fit),
        setup=setup,
        min_params=min_params,
        max_params=max_params,
        num_sizes=num_sizes,
        ideal_mfu=ideal_mfu,
        tokens_per_param_rule=tokens_per_param_rule,
        min_tokens_per_param=min_tokens_per_param,
        min_gpus=min_gpus,
        max_gpus=max_gpus,
    )
