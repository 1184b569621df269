"""The output folder of a search: pareto.csv, plans.parquet, best.json, pareto.png.

Every file is written atomically (temporary name, then rename): an interrupted run
leaves either the previous file or the new one, never half of one. best.json holds the
chosen plans and every input needed to run the search again.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt import __version__
from vtrain_opt.io import write_json_atomic, write_with
from vtrain_opt.search.engine import SearchResult
from vtrain_opt.search.study_store import redact
from vtrain_opt.search.targets import dtype_text, gpu_contexts


def evaluated_text(result: SearchResult) -> tuple[str, str]:
    """("strategy: N of M plans evaluated[, K trials (sampler, seed S)]", the rejected
    plans per reason), as the terminal summary and the HTML report both state them."""
    size = f" of {result.space_size:,}" if result.space_size else ""
    trials = (
        f", {result.trials:,} trials ({result.sampler}, seed {result.seed})"
        if result.trials
        else ""
    )
    reasons = ", ".join(f"{n:,} {k}" for k, n in result.infeasible_reasons.items())
    return f"{result.strategy}: {result.evaluated:,}{size} plans evaluated{trials}", reasons


RESULTS_FORMAT = "vtrain_opt.search/1"


def default_out_dir(result: SearchResult, root: str | Path = "results") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{result.space.name or result.space.model.name}"


def row_dict(row: pd.Series | None) -> dict[str, Any] | None:
    """A result row as plain JSON values (NaN as None, categoricals as strings)."""
    if row is None:
        return None
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        elif not isinstance(value, (bool, int, float, str, type(None))):
            value = str(value)
        out[str(key)] = value
    return out


def rows_list(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [row_dict(r) for _, r in df.iterrows()]  # type: ignore[misc]


def describe(
    result: SearchResult,
    command: list[str] | None = None,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """best.json's content: the answer and the inputs that reproduce it."""
    space = result.space
    return {
        "format": RESULTS_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "vtrain_opt_version": __version__,
        "command": [redact(a) for a in command] if command else command,  # no password
        "objective": result.objective,
        "strategy": result.strategy,
        "sampler": result.sampler,
        "seed": result.seed,
        "trials": result.trials,
        "study_name": result.study_name,
        "storage": result.storage,
        "backend": result.backend,
        "workers": result.workers,
        "tokens": result.tokens,
        "limits": result.limits.to_dict(),
        "space": space.to_dict(),
        "profiles": {
            g.name: gpu_contexts(space, i)[0].profile.id for i, g in enumerate(space.gpus)
        },
        "setup": {
            g.name: {
                "dtype": dtype_text(space, i),
                "attention": gpu_contexts(space, i)[0].setup.attention,
            }
            for i, g in enumerate(space.gpus)
        },
        "prices_per_gpu_hour_usd": {g.name: g.price_per_gpu_hour_usd for g in space.gpus},
        "space_size": result.space_size,
        "evaluated": result.evaluated,
        "feasible": result.feasible,
        "reason_counts": result.reason_counts,
        "plans_parquet": {
            "rows": len(result.plans),
            "complete": result.plans_complete,
            "holds": "every evaluated plan"
            if result.plans_complete
            else "the best plans by time and by cost, and both Pareto fronts (the space is too "
            "large to keep every plan)",
        },
        "elapsed_s": result.elapsed_s,
        "best_time": row_dict(result.best_time),
        "best_cost": row_dict(result.best_cost),
        "chosen": rows_list(result.chosen()),
        "pareto": rows_list(result.pareto),
        "infeasible": None if result.ok else {"binding": result.binding},
        "closest": rows_list(result.closest) if not result.ok else [],
        **({"baseline": baseline} if baseline else {}),
    }


def write_results(
    result: SearchResult,
    out_dir: str | Path,
    command: list[str] | None = None,
    baseline_row: pd.Series | None = None,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the four result files into ``out_dir``; return their paths."""
    from vtrain_opt.report import plot_pareto

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "pareto": out / "pareto.csv",
        "plans": out / "plans.parquet",
        "best": out / "best.json",
        "plot": out / "pareto.png",
    }
    write_with(paths["pareto"], lambda p: _plain(result.pareto).to_csv(p, index=False))
    write_with(paths["plans"], lambda p: _plain(result.plans).to_parquet(p, index=False))
    chosen = {"fastest": result.best_time, "cheapest": result.best_cost}
    if baseline_row is not None:
        chosen["baseline"] = baseline_row
    sample = result.sample
    if not result.ok and len(result.closest):
        sample = pd.concat([sample, result.closest[sample.columns]], ignore_index=True)
    title = (
        f"{result.space.model.name}, {result.tokens / 1e9:,.0f}B tokens: "
        f"{result.evaluated:,} plans ({result.strategy})"
    )
    write_with(
        paths["plot"],
        lambda p: plot_pareto(p, sample, result.pareto, chosen, title=title),
    )
    write_json_atomic(paths["best"], describe(result, command, baseline))
    return paths


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Categoricals as strings, so CSV/parquet readers need no pandas categories."""
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype(str)
    return out
