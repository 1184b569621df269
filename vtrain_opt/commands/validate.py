"""``validate``: predict measured runs and report MAPE overall, by group, and the worst rows."""

from __future__ import annotations

import argparse

import pandas as pd
from rich.table import Table

from vtrain_opt.commands.common import add_json_arg, positive_int, print_json
from vtrain_opt.commands.fidelity_args import add_measurement_args, run_setup
from vtrain_opt.consistency import describe
from vtrain_opt.console import console
from vtrain_opt.measurements import read_measurements
from vtrain_opt.predictor import Predictor
from vtrain_opt.profiles import load_profile
from vtrain_opt.validation import BY_KEYS, GROUPS, check_by_keys, scatter_plot, validate


def by_keys(text: str) -> list[str]:
    """Comma-separated columns of ``--by``, checked here so a typo is one line, exit 2."""
    try:
        return check_by_keys([k.strip() for k in str(text).split(",") if k.strip()])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="compare predictions with measured iteration times (MAPE, groups, worst rows)",
        description="Predict every row of measurement CSV files with the stated setup and a "
        "profile, and report the mean absolute percentage error overall, by group (GPU "
        "count, tp, pp, micro-batch, model) and the worst rows.",
    )
    add_measurement_args(p)
    p.add_argument(
        "--profile",
        metavar="NAME|FILE",
        help="device profile (default: the shipped profile of --gpu)",
    )
    p.add_argument("--plot", metavar="FILE.png", help="write a predicted-vs-measured scatter plot")
    p.add_argument(
        "--worst",
        type=positive_int,
        default=10,
        metavar="N",
        help="worst rows to list (default 10)",
    )
    p.add_argument(
        "--by",
        type=by_keys,
        metavar="COL[,COL...]",
        help="also break the error down by each combination of these columns, e.g. "
        "tp,hidden_size,micro_batch, with the spread of predicted/measured inside each "
        f"(columns: {', '.join(BY_KEYS)})",
    )
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup = run_setup(args)
    profile = load_profile(args.profile, gpu=setup.gpu)
    measurements = read_measurements(args.measurements)
    report = validate(measurements, Predictor(measurements, setup), profile)
    if args.plot:
        scatter_plot(report, args.plot)
    if args.json:
        out = report.to_json(by=args.by or ())
        out["profile"] = profile.id
        out["setup"] = vars(setup) if hasattr(setup, "__dict__") else {}
        if args.plot:
            out["plot"] = args.plot
        print_json(out)
        return 0

    con = console()
    con.print(
        f"profile {profile.id}; {len(report.rows)} rows predicted, {len(report.skipped)} skipped"
    )
    for s in report.skipped[:5]:
        con.print(f"  skipped {s.file} row {s.row}: {s.reason}")
    if len(report.skipped) > 5:
        con.print(f"  ... and {len(report.skipped) - 5} more skipped rows")
    files = Table(title="MAPE by file", title_justify="left")
    for col in ("file", "rows", "MAPE"):
        files.add_column(col, justify="left" if col == "file" else "right")
    for _, r in report.by_file().iterrows():
        files.add_row(str(r["file"]), str(int(r["rows"])), f"{r['mape_pct']:.2f}%")
    files.add_row("[b]all[/b]", str(len(report.rows)), f"[b]{report.mape_pct:.2f}%[/b]")
    con.print(files)
    groups = Table(title="By group (MAPE; mean predicted/measured)", title_justify="left")
    for col in ("group", "file", "values"):
        groups.add_column(col)
    for key, label in GROUPS.items():
        agg = report.by_group(key)
        for name, g in agg.groupby("file"):
            cells = [
                f"{v}: {m:.1f}% ({r:.2f}, n={n})"
                for v, m, r, n in zip(
                    g[key], g["mape_pct"], g["mean_ratio"], g["rows"], strict=True
                )
            ]
            groups.add_row(label, str(name).rsplit("/", 1)[-1], "; ".join(cells))
    con.print(groups)
    worst = Table(title=f"Worst {args.worst} rows", title_justify="left")
    for col in (
        "file:row",
        "GPUs",
        "tp",
        "pp",
        "dp",
        "mb",
        "gb",
        "model",
        "measured",
        "predicted",
        "error",
    ):
        worst.add_column(col, justify="right")
    for _, r in report.worst(args.worst).iterrows():
        worst.add_row(
            f"{str(r['file']).rsplit('/', 1)[-1]}:{r['row']}",
            str(r["num_gpus"]),
            str(r["tp"]),
            str(r["pp"]),
            str(r["dp"]),
            str(r["micro_batch"]),
            str(r["global_batch"]),
            r["model"],
            f"{r['measured_s']:.3f} s",
            f"{r['predicted_s']:.3f} s",
            f"{r['ape_pct']:.1f}%",
        )
    con.print(worst)
    over = report.over_memory()
    if len(over):
        top = over.iloc[0]
        con.print(
            f"memory: {len(over)} measured run(s) fit in reality but the memory model puts them "
            f"over capacity, most by {top['memory_excess'] - 1:.1%} "
            f"({str(top['file']).rsplit('/', 1)[-1]}:{top['row']}: "
            f"{top['memory_per_gpu_bytes'] / 2**30:.1f} GiB of "
            f"{top['memory_capacity_bytes'] / 2**30:.1f} GiB)"
        )
    else:
        con.print("memory: every measured run fits the memory model too")
    peak = report.peak_memory()
    if peak is not None:
        con.print(
            f"peak memory (allocated, {peak['n_rows']} rows with peak_memory_bytes): MAPE "
            f"{peak['mape_pct']:.1f}%, max {peak['max_ape_pct']:.1f}%, mean predicted/measured "
            f"{peak['mean_ratio']:.3f}"
        )
    if args.by:
        con.print(_cross_table(report.cross_groups(args.by), args.by))
    biased = report.biased_groups()
    if len(biased):
        items = [
            f"{r['group']}={r['value']} ({str(r['file']).rsplit('/', 1)[-1]}): "
            f"{r['mean_ratio']:.2f}x"
            for _, r in biased.iterrows()
        ]
        con.print("[yellow]groups off by more than 10% on average:[/yellow] " + "; ".join(items))
    contra = report.contradictions()
    if len(contra):
        con.print(
            "[yellow]measured runs their neighbours contradict[/yellow] (no model that takes "
            "at most c times as long for c times the work fits both within 10%): "
            + "; ".join(describe(r) for _, r in contra.iterrows())
        )
    if args.plot:
        con.print(f"plot written to {args.plot}")
    return 0


def _cross_table(agg: pd.DataFrame, keys: list[str]) -> Table:
    table = Table(
        title=f"By {', '.join(keys)} (largest share of the file's MAPE first)",
        title_justify="left",
    )
    for col in ("file", *keys, "rows", "MAPE", "mean pred/meas", "spread", "share of MAPE"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for _, r in agg.iterrows():
        table.add_row(
            str(r["file"]).rsplit("/", 1)[-1],
            *(str(r[k]) for k in keys),
            str(int(r["rows"])),
            f"{r['mape_pct']:.1f}%",
            f"{r['mean_ratio']:.3f}",
            f"{r['ratio_std']:.3f}",
            f"{r['share_pct']:.2f} pts",
        )
    return table
