"""Run a sweep: every scenario one search, as a Ray task (or here), resumable and lossless.

The driver submits at most ``2 x workers`` scenarios at a time and writes each record the
moment it comes back (``sweepstore``), so an interrupted sweep loses at most the
scenarios in flight, and a re-run skips what is done. A scenario that fails (bad
combination, a worker that died) is recorded with its error; the sweep goes on, and
``retry_failed`` runs those again. Searches run with ``workers=0`` inside the task: Ray is
never nested.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt import __version__
from vtrain_opt.search import Limits, SearchSpace, gpu_choice, search
from vtrain_opt.search.space import DIMENSIONS
from vtrain_opt.sim.step import make_context
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import PLAN_COLUMNS
from vtrain_opt.spec.setup import Setup
from vtrain_opt.studies.sweepfile import Scenario, Sweep
from vtrain_opt.studies.sweepstore import SweepStore
from vtrain_opt.units import DAY_S

RECORD_FORMAT = "vtrain_opt.sweep-scenario/1"
# Fields of a record that differ between two runs of the same scenario.
RUN_FIELDS = ("elapsed_s", "finished_at", "vtrain_opt")
PLAN_DIMENSIONS = ("global_batch", *DIMENSIONS, "ep", "etp")  # ep, etp: MoE models
RESULT_COLUMNS = (
    "gpu",
    "dtype",
    *PLAN_COLUMNS,
    "training_time_s",
    "cost_usd",
    "gpu_hours",
    "mfu",
    "tokens_per_s",
    "iteration_time_s",
    "memory_per_gpu_bytes",
)


# ---- one scenario ---------------------------------------------------------------------------
def build_search(
    inputs: dict[str, Any], model_spec: dict[str, Any]
) -> tuple[SearchSpace, float, Limits]:
    """The space, tokens and limits of a scenario's normalized inputs."""
    model = ModelSpec.from_dict(model_spec, name=str(inputs["model"]))
    if "seq_length" in inputs:
        model = model.with_seq_length(inputs["seq_length"])
    names = inputs["gpu"] if isinstance(inputs["gpu"], list) else [inputs["gpu"]]
    gpus = [
        gpu_choice(
            n,
            price_per_gpu_hour_usd=inputs.get("price_per_gpu_hour"),
            gpus_per_node=inputs.get("gpus_per_node"),
            nvlink_domain=inputs.get("nvlink_domain"),
            inter_node_gbps=inputs.get("inter_node_gbps"),
            profile=inputs.get("profile"),
        )
        for n in names
    ]
    setup = None
    dtypes = inputs.get("dtype")
    dtypes = [dtypes] if isinstance(dtypes, str) else dtypes  # several: compared per plan
    if "dtype" in inputs or "attention" in inputs or "fp8_recipe" in inputs:
        default = make_context(model, gpus[0].cluster, gpus[0].profile).setup
        setup = Setup(
            dtype=dtypes[0] if dtypes else default.dtype,
            attention=inputs.get("attention", default.attention),
            fp8_recipe=inputs.get("fp8_recipe", "delayed"),
        )
    lo, hi = inputs.get("min_gpus"), inputs.get("max_gpus")
    if "num_gpus" in inputs:
        lo = hi = inputs["num_gpus"]
    space = SearchSpace.create(
        model,
        gpus,
        min_gpus=lo,
        max_gpus=hi,
        gpu_step=inputs.get("gpu_step"),
        setup=setup,
        stage_layers=inputs.get("stage_layers"),
        dtypes=dtypes if dtypes and len(dtypes) > 1 else None,
        **{k: inputs[k] for k in PLAN_DIMENSIONS if k in inputs},
    )
    budget = inputs.get("budget") or {}
    max_days = inputs.get("max_days")
    limits = Limits(
        budget_usd=budget.get("usd"),
        budget_gpu_hours=budget.get("gpu_hours"),
        max_time_s=None if max_days is None else max_days * DAY_S,
    )
    return space, float(inputs["tokens"]), limits


def run_scenario(scenario: Scenario) -> dict[str, Any]:
    """Search one scenario; always returns a record (a failure is recorded, not raised)."""
    t0 = time.perf_counter()
    inputs = scenario.inputs
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "id": scenario.id,
        "inputs": inputs,
        "objective": inputs.get("objective", "time"),
    }
    try:
        space, tokens, limits = build_search(inputs, scenario.model_spec)
        kwargs = {k: inputs[k] for k in ("strategy", "trials", "sampler", "seed") if k in inputs}
        result = search(space, tokens, limits=limits, objective=record["objective"], **kwargs)
        best_time = _row(result.best_time)
        best_cost = _row(result.best_cost)
        chosen = best_cost if record["objective"] == "cost" else best_time
        record.update(
            status="ok" if result.ok else "infeasible",
            chosen=chosen,
            best_time=best_time,
            best_cost=best_cost,
            pareto_size=len(result.pareto),
            evaluated=result.evaluated,
            feasible=result.feasible,
            space_size=result.space_size,
            strategy=result.strategy,
            reason_counts=result.reason_counts,
            explain=result.explain(),
        )
    except Exception as e:  # any failure is this scenario's result; the sweep goes on
        record.update(status="failed", error=_one_line(e), traceback=traceback.format_exc(limit=6))
    record.update(
        elapsed_s=time.perf_counter() - t0,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        vtrain_opt=__version__,
    )
    return record


def failed_record(scenario: Scenario, error: str) -> dict[str, Any]:
    """The record of a scenario whose task died (e.g. its Ray worker was killed)."""
    return {
        "format": RECORD_FORMAT,
        "id": scenario.id,
        "inputs": scenario.inputs,
        "objective": scenario.inputs.get("objective", "time"),
        "status": "failed",
        "error": error,
        "elapsed_s": float("nan"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "vtrain_opt": __version__,
    }


def _row(row: pd.Series | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = {}
    for k, v in row.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[str(k)] = v if isinstance(v, (int, float, bool, str)) or v is None else str(v)
    return out


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return f"{type(e).__name__}: {' '.join(text.split())}"


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record without the fields that change from run to run (timing, version)."""
    return {k: v for k, v in record.items() if k not in RUN_FIELDS}


# ---- the sweep ------------------------------------------------------------------------------
@dataclass
class SweepRun:
    total: int
    skipped: int  # already done before this run
    ran: int = 0
    failed: int = 0
    wall_s: float = 0.0
    backend: str = "in-process"
    workers: int = 0
    interrupted: bool = False
    statuses: dict[str, int] = field(default_factory=dict)


OnRecord = Callable[[dict[str, Any]], None]


def todo(sweep: Sweep, store: SweepStore, retry_failed: bool = False) -> list[Scenario]:
    """The scenarios without a record (and, with ``retry_failed``, the failed ones)."""
    out = []
    for s in sweep.scenarios:
        rec = store.read(s.id)
        if rec is None or (retry_failed and rec.get("status") == "failed"):
            out.append(s)
    return out


def run_sweep(
    sweep: Sweep,
    store: SweepStore,
    *,
    workers: int = 0,
    ray_address: str | None = None,
    retry_failed: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_record: OnRecord | None = None,
) -> SweepRun:
    """Run the scenarios without a record; write each record as soon as it is back.

    ``workers=0`` (and no address) runs here, one after the other; otherwise Ray tasks on a
    local runtime (``workers`` CPUs, default all) or the cluster at ``ray_address``.
    """
    t0 = time.perf_counter()
    pending = todo(sweep, store, retry_failed)
    run = SweepRun(total=len(sweep), skipped=len(sweep) - len(pending))

    def keep(rec: dict[str, Any]) -> None:
        store.write(rec)
        run.ran += 1
        run.failed += rec["status"] == "failed"
        if on_record:
            on_record(rec)

    if on_start:
        on_start(run.total, run.skipped)
    if pending:
        if workers == 0 and not ray_address:
            for s in pending:
                keep(run_scenario(s))
        else:
            run.backend, run.workers = _run_on_ray(pending, workers, ray_address, keep)
    run.wall_s = time.perf_counter() - t0
    return run


def _run_on_ray(
    scenarios: Iterable[Scenario], workers: int, address: str | None, keep: OnRecord
) -> tuple[str, int]:
    from vtrain_opt.search.ray_backend import RayBackend

    with RayBackend(workers or None, address) as backend:
        import ray

        remote = ray.remote(num_cpus=1, max_retries=1)(run_scenario)
        limit = 2 * backend.workers
        it = iter(scenarios)
        inflight: dict[Any, Scenario] = {}

        def fill() -> None:
            while len(inflight) < limit:
                s = next(it, None)
                if s is None:
                    return
                inflight[remote.remote(s)] = s

        try:
            fill()
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    s = inflight.pop(ref)
                    try:
                        rec = ray.get(ref)
                    except Exception as e:  # the task's worker died (after Ray's retry)
                        rec = failed_record(s, f"Ray task lost: {_one_line(e)}")
                    keep(rec)
                fill()
        except BaseException:
            for ref in inflight:
                ray.cancel(ref, force=True)
            raise
        return "ray", backend.workers


# ---- the combined table -----------------------------------------------------------------------
def summary_table(sweep: Sweep, store: SweepStore) -> pd.DataFrame:
    """One row per scenario of the sweep (missing ones have status 'missing')."""
    rows = []
    records = store.records()
    for s in sweep.scenarios:
        rec = records.get(s.id)
        row: dict[str, Any] = {"id": s.id, "status": rec["status"] if rec else "missing"}
        row.update(_input_columns(s.inputs))
        if rec:
            chosen = rec.get("chosen") or {}
            for c in RESULT_COLUMNS:
                name = {"gpu": "gpu_used", "num_gpus": "num_gpus_used", "dtype": "dtype_used"}.get(
                    c, c
                )
                row[name] = chosen.get(c)
            t = chosen.get("training_time_s")
            row["days"] = None if t is None else t / DAY_S
            for c in ("pareto_size", "evaluated", "feasible", "elapsed_s"):
                row[c] = rec.get(c)
            row["error"] = rec.get("error") or rec.get("explain") or ""
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(v) for v in df[c].dropna()}
            if len(kinds) > 1:  # mixed types (parquet needs one): as text
                df[c] = df[c].map(lambda v: v if v is None else str(v))
    return df


def _input_columns(inputs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in inputs.items():
        if k == "budget":
            out["budget_usd"] = v.get("usd")
            out["budget_gpu_hours"] = v.get("gpu_hours")
        elif k in PLAN_DIMENSIONS:
            out[f"{k}_options"] = ",".join(str(x) for x in v) if isinstance(v, list) else str(v)
        elif k in ("gpu", "dtype") and isinstance(v, list):
            out[k] = "+".join(v)
        else:
            out[k] = v
    return out


def write_summary(sweep: Sweep, store: SweepStore, plot: bool = True) -> dict[str, Path]:
    """summary.parquet, summary.csv and summary.png in the sweep's folder (atomically)."""
    from vtrain_opt.io import write_with
    from vtrain_opt.studies import plots

    table = summary_table(sweep, store)
    files = {
        "parquet": store.folder / "summary.parquet",
        "csv": store.folder / "summary.csv",
    }
    write_with(files["parquet"], lambda p: table.to_parquet(p, index=False))
    write_with(files["csv"], lambda p: table.to_csv(p, index=False))
    if plot:
        png = plots.sweep_summary(table, store.folder / "summary.png", f"sweep {sweep.name}")
        if png is not None:
            files["plot"] = png
    return files
