"""Compare predictions with measured iteration times: MAPE overall, by group, worst rows.

Groups follow the issue's acceptance rule: by GPU count, tensor, pipeline and data
parallelism, micro-batch and model shape, so a systematic bias (a whole group off by
more than 10%) shows even when the overall error is small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.consistency import contradictions
from vtrain_opt.measurements import MeasurementSet
from vtrain_opt.predictor import Predictor
from vtrain_opt.profiles import Profile

GROUPS = {
    "num_gpus": "GPU count",
    "tp": "tensor parallelism",
    "pp": "pipeline parallelism",
    "micro_batch": "micro-batch",
    "model": "model",
}
WORST = 10
# A measured row's plan and model shape, and the columns a cross-grouping may combine.
SHAPE_COLUMNS = (
    "num_gpus",
    "tp",
    "pp",
    "dp",
    "micro_batch",
    "global_batch",
    "hidden_size",
    "num_attention_heads",
    "num_layers",
    "seq_length",
)
BY_KEYS = (*SHAPE_COLUMNS, "model")


def check_by_keys(keys: Sequence[str]) -> list[str]:
    """The columns of a cross-grouping, without repeats; ValueError naming any unknown one."""
    unknown = [k for k in keys if k not in BY_KEYS]
    if unknown or not keys:
        what = f"{', '.join(unknown)} is not a column" if unknown else "no column given"
        raise ValueError(
            f"{what} to group by; use one or more of {', '.join(BY_KEYS)}, comma-separated"
        )
    return list(dict.fromkeys(keys))


@dataclass
class ValidationReport:
    rows: pd.DataFrame  # measured rows + predicted_s, measured_s, ape_pct, ratio
    skipped: list[Any]

    @property
    def mape_pct(self) -> float:
        return float(self.rows["ape_pct"].mean())

    @property
    def max_ape_pct(self) -> float:
        return float(self.rows["ape_pct"].max())

    def peak_memory(self) -> dict[str, Any] | None:
        """Predicted against measured peak memory, where the files carry
        ``peak_memory_bytes`` (``torch.cuda.max_memory_allocated``: what the model
        allocates, so the profile's runtime reserve is left out of the prediction)."""
        if "memory_ape_pct" not in self.rows:
            return None
        rows = self.rows.dropna(subset=["memory_ape_pct"])
        if rows.empty:
            return None
        return {
            "n_rows": len(rows),
            "mape_pct": float(rows["memory_ape_pct"].mean()),
            "max_ape_pct": float(rows["memory_ape_pct"].max()),
            "mean_ratio": float(rows["memory_ratio"].mean()),
        }

    def by_file(self) -> pd.DataFrame:
        return self._agg("file")

    def by_group(self, key: str) -> pd.DataFrame:
        """MAPE and mean predicted/measured ratio per value of ``key``, per file."""
        return self._agg(key)

    def _agg(self, key: str) -> pd.DataFrame:
        g = self.rows.groupby(["file", key] if key != "file" else ["file"], sort=True)
        return g.agg(
            rows=("ape_pct", "size"),
            mape_pct=("ape_pct", "mean"),
            mean_ratio=("ratio", "mean"),
        ).reset_index()

    def cross_groups(self, keys: Sequence[str]) -> pd.DataFrame:
        """Per file and combination of ``keys``: rows, MAPE, and the mean and spread (standard
        deviation) of predicted/measured, largest share of the file's MAPE first.

        A combination whose rows share one ratio (small spread) away from 1 points at a
        missing or wrong term for exactly that combination; a large spread at row noise.
        """
        keys = check_by_keys(keys)
        agg = (
            self.rows.groupby(["file", *keys], sort=True)
            .agg(
                rows=("ape_pct", "size"),
                mape_pct=("ape_pct", "mean"),
                mean_ratio=("ratio", "mean"),
                ratio_std=("ratio", "std"),
            )
            .reset_index()
        )
        agg["ratio_std"] = agg["ratio_std"].fillna(0.0)
        per_file = self.rows.groupby("file").size()
        agg["share_pct"] = agg["rows"] * agg["mape_pct"] / agg["file"].map(per_file)
        return agg.sort_values(["file", "share_pct"], ascending=[True, False], ignore_index=True)

    def over_memory(self) -> pd.DataFrame:
        """Measured rows (runs that happened, so they fit) that the memory model puts over the
        GPU's capacity, most over first: where it overestimates memory."""
        rows = self.rows[self.rows["memory_per_gpu_bytes"] > self.rows["memory_capacity_bytes"]]
        excess = rows["memory_per_gpu_bytes"] / rows["memory_capacity_bytes"]
        return rows.assign(memory_excess=excess).sort_values("memory_excess", ascending=False)

    def contradictions(self, tolerance: float = 0.10) -> pd.DataFrame:
        """Rows a neighbouring run contradicts (``consistency.contradictions``): no model
        that charges at most c times as long for c times the work fits both within 10%."""
        return contradictions(self.rows, tolerance)

    def worst(self, n: int = WORST) -> pd.DataFrame:
        return self.rows.sort_values("ape_pct", ascending=False).head(n)

    def biased_groups(self, threshold: float = 0.10) -> pd.DataFrame:
        """Groups whose mean predicted/measured ratio is off by more than ``threshold``."""
        frames = []
        for key in GROUPS:
            agg = self.by_group(key)
            agg = agg[(agg["mean_ratio"] - 1).abs() > threshold]
            frames.append(agg.assign(group=key, value=agg[key].astype(str)).drop(columns=[key]))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def to_json(self, by: Sequence[str] = ()) -> dict[str, Any]:
        """The report as one JSON object; with ``by``, also its cross-grouping."""
        files = {
            r["file"]: {"n_rows": int(r["rows"]), "mape_pct": float(r["mape_pct"])}
            for _, r in self.by_file().iterrows()
        }
        groups = {}
        for key in GROUPS:
            agg = self.by_group(key)
            groups[key] = [
                {
                    "file": r["file"],
                    "value": _plain(r[key]),
                    "n_rows": int(r["rows"]),
                    "mape_pct": float(r["mape_pct"]),
                    "mean_ratio": float(r["mean_ratio"]),
                }
                for _, r in agg.iterrows()
            ]
        cols = [
            "file",
            "row",
            *SHAPE_COLUMNS,
            "measured_s",
            "predicted_s",
            "ape_pct",
            "memory_per_gpu_bytes",
        ]
        over = self.over_memory()
        contra = self.contradictions()
        out = {
            "mape_pct": self.mape_pct,
            "n_rows": len(self.rows),
            "max_ape_pct": self.max_ape_pct,
            "files": files,
            "groups": groups,
            "skipped": [{"file": s.file, "row": s.row, "reason": s.reason} for s in self.skipped],
            "n_skipped": len(self.skipped),
            "n_over_memory": len(over),
            "over_memory": [
                {
                    "file": r["file"],
                    "row": _plain(r["row"]),
                    "memory_per_gpu_bytes": float(r["memory_per_gpu_bytes"]),
                    "memory_capacity_bytes": float(r["memory_capacity_bytes"]),
                }
                for _, r in over.iterrows()
            ],
            "peak_memory": self.peak_memory(),
            "n_contradictions": len(contra),
            "contradictions": [
                {k: _plain(v) for k, v in r.items()} for r in contra.to_dict("records")
            ],
            "rows": [
                {k: _plain(v) for k, v in r.items()} for r in self.rows[cols].to_dict("records")
            ],
        }
        if by:
            out["by"] = {
                "keys": check_by_keys(by),
                "groups": [
                    {k: _plain(v) for k, v in r.items()}
                    for r in self.cross_groups(by).to_dict("records")
                ],
            }
        return out


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def validate(
    measurements: MeasurementSet, predictor: Predictor, profile: Profile
) -> ValidationReport:
    cols = predictor.predict_columns(
        profile,
        (
            "iteration_time_s",
            "memory_per_gpu_bytes",
            "memory_capacity_bytes",
            "dp_comm_s",
            "optimizer_s",
        ),
    )
    predicted = cols["iteration_time_s"]
    measured = measurements.measured_s
    rows = measurements.rows.copy()
    rows["measured_s"] = measured
    rows["predicted_s"] = predicted
    # every measured run did fit: rows the memory model puts over capacity show its error
    rows["memory_per_gpu_bytes"] = cols["memory_per_gpu_bytes"]
    rows["memory_capacity_bytes"] = cols["memory_capacity_bytes"]
    # what follows the pipeline (gradient all-reduce, optimizer, bookkeeping): the one
    # predicted part of the consistency bound between measured rows
    rows["after_pipeline_s"] = (
        cols["dp_comm_s"] + cols["optimizer_s"] + profile.iteration_overhead_s
    )
    if "peak_memory_bytes" in rows:
        allocated = cols["memory_per_gpu_bytes"] - profile.runtime_reserved_bytes
        rows["predicted_allocated_bytes"] = allocated
        rows["memory_ratio"] = allocated / rows["peak_memory_bytes"]
        rows["memory_ape_pct"] = np.abs(rows["memory_ratio"] - 1.0) * 100
    rows["ape_pct"] = np.abs(predicted - measured) / measured * 100
    rows["ratio"] = predicted / measured
    rows["model"] = (
        "h"
        + rows["hidden_size"].astype(str)
        + "-l"
        + rows["num_layers"].astype(str)
        + "-s"
        + rows["seq_length"].astype(str)
    )
    return ValidationReport(rows, measurements.skipped)


def scatter_plot(report: ValidationReport, path: str, title: str = "") -> None:
    """Predicted vs measured iteration time, log axes, with the y = x line; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vtrain_opt.io import write_with
    from vtrain_opt.plotting import plain_log_ticks

    fig, ax = plt.subplots(figsize=(6, 6))
    for name, g in report.rows.groupby("file"):
        label = f"{str(name).rsplit('/', 1)[-1]} (MAPE {g['ape_pct'].mean():.1f}%)"
        ax.scatter(g["measured_s"], g["predicted_s"], s=10, alpha=0.6, label=label)
    lo = float(min(report.rows["measured_s"].min(), report.rows["predicted_s"].min())) * 0.8
    hi = float(max(report.rows["measured_s"].max(), report.rows["predicted_s"].max())) * 1.25
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="y = x")
    ax.plot([lo, hi], [lo * 1.1, hi * 1.1], color="grey", lw=0.6, ls="--", label="±10%")
    ax.plot([lo, hi], [lo / 1.1, hi / 1.1], color="grey", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    plain_log_ticks(ax)
    ax.set_xlabel("measured iteration time (s)")
    ax.set_ylabel("predicted iteration time (s)")
    ax.set_title(title or f"vtrain_opt: MAPE {report.mape_pct:.2f}% on {len(report.rows)} rows")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
