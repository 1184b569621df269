"""Read measured iteration times: vTrain's CSV format, or the single-GPU step format.

vTrain's columns, with these exact header names (a UTF-8 byte-order mark is tolerated):
``# GPUs``, ``global batch``, ``micro batch``, ``hidden size``, ``attention heads``,
``# layers``, ``sequence length``, ``tensor parallelism``, ``data parallelism``,
``pipeline parallelism``, ``iteration time (ms)``, and optionally ``Parameters (billion)``.

The step format (the shared Hopper runs, one GPU): ``num_layers``, ``hidden_size``,
``num_attention_heads``, ``seq_length``, ``micro_batch``, ``global_batch``,
``iteration_s``; optionally ``vocab_size``, ``recompute`` (none/selective/full),
``peak_memory_bytes``, ``name``, and ``tp``/``pp``/``dp`` (1 when absent). Per-row
vocabulary and recomputation override the run setup's.

Malformed files raise ValueError naming the file, row and column. Rows that break a
plan rule (e.g. GPUs != tp x pp x dp) are not fatal: they are skipped and reported.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vtrain_opt.spec.plan import RECOMPUTE_MODES

COLUMNS = {
    "# GPUs": "num_gpus",
    "global batch": "global_batch",
    "micro batch": "micro_batch",
    "hidden size": "hidden_size",
    "attention heads": "num_attention_heads",
    "# layers": "num_layers",
    "sequence length": "seq_length",
    "tensor parallelism": "tp",
    "data parallelism": "dp",
    "pipeline parallelism": "pp",
    "iteration time (ms)": "iteration_time_ms",
}
OPTIONAL_COLUMNS = {"Parameters (billion)": "params_billion"}
# The single-GPU step format: its columns already carry the normalized names.
STEP_COLUMNS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "seq_length",
    "micro_batch",
    "global_batch",
    "iteration_s",
)
STEP_OPTIONAL = ("vocab_size", "peak_memory_bytes", "tp", "pp", "dp")


@dataclass
class SkippedRow:
    file: str
    row: int  # 1-based data row (the header is row 0)
    reason: str


@dataclass
class MeasurementSet:
    """Measured rows (normalized column names, plus ``file`` and ``row``) and skipped rows."""

    rows: pd.DataFrame
    skipped: list[SkippedRow] = field(default_factory=list)

    @property
    def measured_s(self) -> np.ndarray:
        return self.rows["iteration_time_ms"].to_numpy(dtype=np.float64) / 1e3

    def subset(self, mask: np.ndarray) -> MeasurementSet:
        return MeasurementSet(self.rows[mask].reset_index(drop=True), self.skipped)


def read_measurements(paths: list[str | Path]) -> MeasurementSet:
    """Read and check one or more measurement CSV files."""
    if not paths:
        raise ValueError("no measurement files given")
    frames, skipped = [], []
    for path in paths:
        df, bad = _read_one(Path(path))
        frames.append(df)
        skipped.extend(bad)
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        reasons = "; ".join(f"{s.file} row {s.row}: {s.reason}" for s in skipped[:3])
        raise ValueError(f"no usable measurement rows ({len(skipped)} skipped: {reasons})")
    return MeasurementSet(rows, skipped)


def _read_one(path: Path) -> tuple[pd.DataFrame, list[SkippedRow]]:
    name = str(path)
    if not path.is_file():
        raise ValueError(f"measurement file {name!r} does not exist")
    try:
        raw = pd.read_csv(path, encoding="utf-8-sig", dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{name}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{name}: not a readable CSV file ({str(e).splitlines()[0]})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    if all(c in raw.columns for c in STEP_COLUMNS):
        raw = _from_step_format(raw, name)
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        hints = []
        for c in missing:
            close = difflib.get_close_matches(c, raw.columns, n=1, cutoff=0.6)
            hints.append(f"{c!r}" + (f" (found {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"{name}: missing column(s) {', '.join(hints)}; the header must name: "
            + ", ".join(repr(c) for c in COLUMNS)
        )
    if raw.empty:
        raise ValueError(f"{name}: the file has a header but no rows")
    optional = {**OPTIONAL_COLUMNS, **{c: c for c in STEP_OPTIONAL if c not in ("tp", "pp", "dp")}}
    keep = {**COLUMNS, **{k: v for k, v in optional.items() if k in raw.columns}}
    out = pd.DataFrame(index=raw.index)
    for col, norm in keep.items():
        values = pd.to_numeric(raw[col].str.strip(), errors="coerce")
        bad = values.isna() | ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{name}: row {i + 1}, column {col!r}: {raw[col].iloc[i]!r} is not a number"
            )
        out[norm] = values
    for col in ("name", "recompute"):
        if col in raw.columns:
            out[col] = raw[col].astype(str).str.strip()
    if "recompute" in out:
        bad = ~out["recompute"].isin(RECOMPUTE_MODES)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{name}: row {i + 1}, column 'recompute': {out['recompute'].iloc[i]!r} is not "
                f"one of {', '.join(RECOMPUTE_MODES)}"
            )
    out["file"] = name
    out["row"] = np.arange(1, len(out) + 1)

    skipped: list[SkippedRow] = []
    reasons = _rule_violations(out)
    for i in np.flatnonzero(reasons != ""):
        skipped.append(SkippedRow(name, int(out["row"].iloc[i]), str(reasons[i])))
    good = out[reasons == ""].copy()
    for col in COLUMNS.values():
        if col != "iteration_time_ms":
            good[col] = good[col].astype(np.int64)
    return good.reset_index(drop=True), skipped


def _from_step_format(raw: pd.DataFrame, name: str) -> pd.DataFrame:
    """The step format's columns under vTrain's header names (one GPU unless tp/pp/dp say)."""
    out = raw.copy()
    for col in ("tp", "pp", "dp"):
        if col not in out.columns:
            out[col] = "1"
    seconds = pd.to_numeric(out["iteration_s"].str.strip(), errors="coerce")
    bad = seconds.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{name}: row {i + 1}, column 'iteration_s': {out['iteration_s'].iloc[i]!r} is not "
            "a number"
        )
    gpus = (
        pd.to_numeric(out["tp"], errors="coerce")
        * pd.to_numeric(out["pp"], errors="coerce")
        * pd.to_numeric(out["dp"], errors="coerce")
    )
    renamed = {v: k for k, v in COLUMNS.items() if v in out.columns}
    out = out.rename(columns=renamed)
    out["# GPUs"] = gpus.astype(str)
    out["iteration time (ms)"] = (seconds * 1e3).astype(str)
    return out


def _rule_violations(df: pd.DataFrame) -> np.ndarray:
    """A reason per row that cannot be simulated ('' when the row is fine)."""
    reasons = np.full(len(df), "", dtype=object)
    ints = [c for c in COLUMNS.values() if c != "iteration_time_ms"]

    def mark(mask: pd.Series | np.ndarray, text: str) -> None:
        m = np.asarray(mask) & (reasons == "")
        reasons[m] = text

    mark(~(df[ints] % 1 == 0).all(axis=1), "sizes must be whole numbers")
    mark(~(df[ints] > 0).all(axis=1), "sizes must be positive")
    mark(df["iteration_time_ms"] <= 0, "iteration time must be positive")
    mark(df["num_gpus"] != df["tp"] * df["pp"] * df["dp"], "# GPUs != tp x pp x dp")
    mark(df["hidden_size"] % df["num_attention_heads"] != 0, "heads do not divide hidden size")
    mark(df["num_attention_heads"] % df["tp"] != 0, "tp does not divide the attention heads")
    mark(df["num_layers"] % df["pp"] != 0, "pp does not divide the layers")
    mark(
        df["global_batch"] % (df["dp"] * df["micro_batch"]) != 0,
        "global batch is not a multiple of dp x micro batch",
    )
    return reasons
