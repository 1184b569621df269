"""A compute-optimal study run into its folder: study.json (the document ``--json``
prints), the candidates of every budget (CSV, parquet) and the plots, each written
atomically; and the frontier frame the plot and the text report share.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vtrain_opt.io import jsonable, write_json_atomic, write_with
from vtrain_opt.studies import plots
from vtrain_opt.studies.chinchilla.budget import StudyConfig
from vtrain_opt.studies.chinchilla.study import StudyResult, run_study


@dataclass
class SavedStudy:
    """A study's result with the JSON document and the files written for it."""

    result: StudyResult
    doc: dict[str, Any]
    files: dict[str, Path]


def run_to_folder(
    config: StudyConfig,
    out: Path,
    *,
    workers: int = 0,
    ray_address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    plots_too: bool = True,
    report: bool = False,
    command: Sequence[str] | None = None,
) -> SavedStudy:
    """Run the study (``run_study``) and write its folder ``out``; the folder is checked
    before the (long) searches start. ``report``: also report.html (``command`` in it)."""
    check_out(out)
    result = run_study(config, workers=workers, ray_address=ray_address, progress=progress)
    doc = to_json(result)
    files = write_results(result, doc, out, plots_too=plots_too)
    if report:
        from vtrain_opt.studies.chinchilla.report_html import write_chinchilla_report

        files["report"] = write_chinchilla_report(result, doc, out, command)
    doc["files"] = {k: str(v) for k, v in files.items()}
    write_json_atomic(out / "study.json", jsonable(doc))
    return SavedStudy(result, doc, files)


def default_out(config: StudyConfig) -> Path:
    """results/chinchilla/<gpu>-<family>-<budgets>: one folder per study, named by it."""
    first = config.budgets[0]
    if first.fixed_cluster:
        label = f"{first.num_gpus}gpus-" + "-".join(f"{b.value:g}d" for b in config.budgets)
    else:
        label = "-".join(_slug(b.label()) for b in config.budgets)
    return (
        Path("results") / "chinchilla" / _slug(f"{config.gpu.name}-{config.rules.family}-{label}")
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def check_out(out: Path) -> None:
    """Create the results folder ``out``, or say in one line why it cannot be."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create the folder ({e.strerror})") from None


def write_results(
    result: StudyResult, doc: dict[str, Any], out: Path, plots_too: bool = True
) -> dict[str, Path]:
    """The candidates of every budget (CSV, parquet) and the plots; study.json is named
    first (the caller writes it last, with these files in it)."""
    files: dict[str, Path] = {"study": out / "study.json"}
    frames = []
    for a in result.answers:
        f = a.candidates.copy()
        f.insert(0, "budget", a.budget.label())
        frames.append(f)
    table = pd.concat(frames, ignore_index=True)
    for col in table.columns:
        if isinstance(table[col].dtype, pd.CategoricalDtype):
            table[col] = table[col].astype(str)
    files["candidates_csv"] = out / "candidates.csv"
    write_with(files["candidates_csv"], lambda p: table.to_csv(p, index=False))
    files["candidates_parquet"] = out / "candidates.parquet"
    write_with(files["candidates_parquet"], lambda p: table.to_parquet(p, index=False))
    if plots_too:
        files["loss_vs_size"] = plots.loss_vs_size(result, out / "loss_vs_size.png")
        if len(result.answers) > 1:
            files["frontier"] = plots.frontier(
                frontier_frame(result), out / "frontier.png", result.config.gpu.name
            )
    return files


def to_json(result: StudyResult) -> dict[str, Any]:
    """The study's document: the largest budget's answer at the top, every budget's under
    ``frontier`` when there are several."""
    cfg = result.config
    main = result.main

    def answer(a: Any) -> dict[str, Any]:
        return {
            "budget": a.budget.to_dict(),
            "optimal": a.optimal,
            "ideal": a.ideal,
            "law_at_real_mfu": a.at_real_mfu,
            "gap": a.gap,
            "notes": a.notes,
            "candidates": a.candidates.to_dict(orient="records"),
        }

    doc: dict[str, Any] = {
        "gpu": cfg.gpu.name,
        "price_per_gpu_hour_usd": cfg.gpu.price_per_gpu_hour_usd,
        "dtype": result.dtype,
        "peak_flop_per_s": result.peak_flop_per_s,
        "budget": main.budget.to_dict(),
        "loss_fit": cfg.law.to_dict(),
        "shape_rules": cfg.rules.to_dict(),
        "sizes": {"min": cfg.min_params, "max": cfg.max_params, "count": cfg.num_sizes},
        "min_tokens_per_param": cfg.min_tokens_per_param,
        "optimal": main.optimal,
        "ideal": main.ideal,
        "law_at_real_mfu": main.at_real_mfu,
        "gap": main.gap,
        "notes": main.notes,
        "candidates": main.candidates.to_dict(orient="records"),
        "elapsed_s": result.elapsed_s,
        "backend": result.backend,
        "workers": result.workers,
    }
    if len(result.answers) > 1:
        doc["frontier"] = [answer(a) for a in result.answers]
    return jsonable(doc)


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
