"""``sweep``: run the scenarios of a sweep file as searches on Ray, resumably."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from vtrain_opt.commands.common import add_json_arg, non_negative_int, print_json
from vtrain_opt.search.ray_backend import cluster_address
from vtrain_opt.search.reporting.page import REPORT_NEEDS_OUT
from vtrain_opt.studies.progress import Progress
from vtrain_opt.studies.sweep import (
    PLAN_DIMENSIONS,
    SweepRun,
    run_sweep,
    summary_table,
    write_summary,
)
from vtrain_opt.studies.sweep_report import write_sweep_report
from vtrain_opt.studies.sweepfile import Sweep, load_sweep
from vtrain_opt.studies.sweepstore import MANIFEST, SweepStore
from vtrain_opt.units import format_count, format_usd

SHOWN_ROWS = 40
WIDTH = 140  # a sweep's table is wide: one column per varying key, then the plan


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a sweep file's scenarios (a cross product of searches) on Ray, resumably",
        description="Run every scenario of a sweep file as one search (a Ray task), writing "
        "each result as it finishes; a re-run skips what is done. At the end, one combined "
        "table (parquet, CSV) and a plot in the sweep's folder.",
    )
    p.add_argument("file", metavar="FILE.yaml", help="the sweep file (see search_spaces/sweeps/)")
    p.add_argument(
        "--out", metavar="DIR", help="the sweep's folder (default: results/sweeps/<name>)"
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        metavar="N",
        help="local Ray workers (default: every core); 0 runs here, one scenario at a time",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="run on a Ray cluster (HOST:PORT or auto); see docs/commands/sweep.md for its token",
    )
    p.add_argument("--retry-failed", action="store_true", help="run the failed scenarios again")
    p.add_argument(
        "--summary",
        action="store_true",
        help="only rebuild the combined table and plot from what is done (runs nothing)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check the file and count the scenarios; run nothing"
    )
    p.add_argument("--no-plot", action="store_true", help="do not draw the summary plot")
    p.add_argument(
        "--report",
        action="store_true",
        help="also write report.html: one row per scenario linking to each scenario's page "
        "(reports/<id>.html: its plans, breakdown, memory and pipeline timeline)",
    )
    add_json_arg(p)
    p.set_defaults(func=run_command)


def folder_for(sweep: Sweep, out: str | None) -> Path:
    return Path(out) if out else Path("results") / "sweeps" / sweep.name


def run_command(args: argparse.Namespace) -> int:
    if args.report and args.json and not args.out:
        raise ValueError(REPORT_NEEDS_OUT)
    sweep = load_sweep(args.file)
    store = SweepStore(folder_for(sweep, args.out), sweep)
    if args.dry_run:
        store.check(create=False)
        done = len(store.records()) if (store.folder / MANIFEST).is_file() else 0
        doc = {
            "name": sweep.name,
            "folder": str(store.folder),
            "fingerprint": sweep.fingerprint,
            "total": len(sweep),
            "done": done,
            "todo": len(sweep) - done,
            "axes": list(sweep.axes),
        }
        if args.json:
            print_json(doc)
        else:
            print(
                f"sweep {sweep.name}: {len(sweep)} scenarios ({' x '.join(sweep.axes)}), "
                f"{done} done, {len(sweep) - done} to run; folder {store.folder}"
            )
        return 0
    run: SweepRun | None = None
    if args.summary:
        store.check(create=False)
        if not (store.folder / MANIFEST).is_file():
            raise ValueError(f"sweep folder {str(store.folder)!r}: nothing run yet (no {MANIFEST})")
    else:
        run = _run(args, sweep, store)
    files = write_summary(sweep, store, plot=not args.no_plot)
    if args.report:
        command = ["vtrain_opt", *sys.argv[1:]] if sys.argv else None
        files["report"] = write_sweep_report(sweep, store, command)
    table = summary_table(sweep, store)
    counts = table["status"].value_counts().to_dict()
    doc: dict[str, Any] = {
        "name": sweep.name,
        "folder": str(store.folder),
        "fingerprint": sweep.fingerprint,
        "total": len(sweep),
        "statuses": {k: int(v) for k, v in counts.items()},
        "files": {k: str(v) for k, v in files.items()},
    }
    if run is not None:
        doc.update(
            ran=run.ran,
            skipped=run.skipped,
            failed_this_run=run.failed,
            wall_s=run.wall_s,
            backend=run.backend,
            workers=run.workers,
        )
    failed = table[table["status"] == "failed"]
    doc["failures"] = failed[["id", "error"]].to_dict(orient="records")
    if args.json:
        print_json(doc)
    else:
        _show(sweep, table, doc)
    return 1 if len(failed) else 0


def _run(args: argparse.Namespace, sweep: Sweep, store: SweepStore) -> SweepRun:
    args.ray_address = cluster_address(args.ray_address)  # RAY_ADDRESS counts as the flag
    workers = args.workers
    if workers is None:  # every local core; on a cluster (--ray-address) every CPU of it
        workers = 0 if args.ray_address else (os.cpu_count() or 1)
    bar: list[Progress] = []

    def start(total: int, done: int) -> None:
        bar.append(Progress(f"sweep {sweep.name}", total, already=done))

    def record(rec: dict[str, Any]) -> None:
        bar[0].advance(failed=rec["status"] == "failed")

    # Ray prints some messages of its own (a worker that died, ...) on stdout: keep stdout
    # for --json, send them to stderr
    with store, contextlib.redirect_stdout(sys.stderr):
        try:
            return run_sweep(
                sweep,
                store,
                workers=workers,
                ray_address=args.ray_address,
                retry_failed=args.retry_failed,
                on_start=start,
                on_record=record,
            )
        except KeyboardInterrupt:
            done = bar[0].done if bar else 0
            print(
                f"sweep {sweep.name}: interrupted with {done}/{len(sweep)} scenarios done "
                f"(kept in {store.folder}); run the same command again to resume",
                file=sys.stderr,
            )
            raise
        finally:
            for b in bar:
                b.close()


def _show(sweep: Sweep, table: pd.DataFrame, doc: dict[str, Any]) -> None:
    con = Console(highlight=False, soft_wrap=False, width=WIDTH)
    t = Table(title=f"Sweep {sweep.name}", title_justify="left", box=box.SIMPLE_HEAD)
    inputs = [c for c in _axis_columns(sweep) if c in table]
    right = ("GPUs", "days", "cost", "MFU")
    for c in (*inputs, "status", "GPUs", "plan", "days", "cost", "MFU"):
        t.add_column(
            c,
            justify="right" if c in right else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=40 if c == "plan" else None,
        )
    multi = any(isinstance(s.inputs.get("gpu"), list) for s in sweep.scenarios)
    for _, r in table.head(SHOWN_ROWS).iterrows():
        cells = [_cell(c, r[c]) for c in inputs]
        if r["status"] == "ok":
            gpus = str(int(r["num_gpus_used"])) + (f" {r['gpu_used']}" if multi else "")
            plan = f"tp{int(r['tp'])} pp{int(r['pp'])} dp{int(r['dp'])} mb{int(r['micro_batch'])}"
            cells += [
                "ok",
                gpus,
                plan,
                f"{r['days']:.3g}",
                format_usd(r["cost_usd"]),
                f"{r['mfu']:.1%}",
            ]
        else:
            cells += [str(r["status"]), "", str(r.get("error", "") or "")[:50], "", "", ""]
        t.add_row(*cells)
    if len(table) > SHOWN_ROWS:
        t.caption = f"first {SHOWN_ROWS} of {len(table)} scenarios; all in {doc['files']['csv']}"
    con.print(t)
    counts = ", ".join(f"{v} {k}" for k, v in doc["statuses"].items())
    line = f"{doc['total']} scenarios: {counts}"
    if "ran" in doc:
        line += (
            f"; this run: {doc['ran']} ran, {doc['skipped']} already done, "
            f"{doc['wall_s']:.1f} s ({doc['backend']}, {doc['workers']} workers)"
        )
    con.print(line)
    if doc["failures"]:
        con.print(
            f"[yellow]{len(doc['failures'])} failed[/yellow]: see the 'error' column of the "
            "table; rerun with --retry-failed"
        )
    con.print("files: " + ", ".join(doc["files"].values()))


def _axis_columns(sweep: Sweep) -> list[str]:
    """The table columns of the sweep's varying keys (what tells scenarios apart)."""
    out = []
    for k in sweep.axes:
        if k == "budget":
            out += ["budget_usd", "budget_gpu_hours"]
        elif k in PLAN_DIMENSIONS:
            out.append(f"{k}_options")
        else:
            out.append(k)
    return out


def _cell(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "-"
    if col == "tokens":
        return format_count(float(v))
    if col == "budget_usd":
        return format_usd(float(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
