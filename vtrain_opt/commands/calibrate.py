"""``calibrate``: fit a profile to measured iteration times; report cross-validated MAPE."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from vtrain_opt.calibrate import (
    STEP_PARAMS,
    RunSetup,
    calibrate,
    calibrate_collectives,
    derive,
)
from vtrain_opt.commands.common import add_json_arg, non_negative_int, print_json
from vtrain_opt.commands.fidelity_args import add_measurement_args, run_setup
from vtrain_opt.console import console
from vtrain_opt.io import write_json_atomic
from vtrain_opt.profiles import PARAM_DEFS, Profile, load_profile
from vtrain_opt.spec.hardware import get_gpu
from vtrain_opt.tablefit import COPIED_PARAMS, CURVE_PARAMS, curves_from_tables


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a device profile to measured iteration times (k-fold cross-validated)",
        description="Fit the bounded physical parameters of a device profile to measured "
        "iteration times (robust loss on relative error), report k-fold cross-validated "
        "MAPE, and write the profile with the data it was fitted on, the date and the errors. "
        "With --nccl and no --measurements, fit only the intra-node collective model.",
    )
    add_measurement_args(
        p,
        required=False,
        help="measurement CSV files (vTrain's column format; a BOM is tolerated); "
        "without them, --nccl fits only the collective model",
    )
    p.add_argument("--out", required=True, metavar="FILE.json", help="where to write the profile")
    p.add_argument(
        "--base",
        metavar="NAME|FILE",
        help="profile to start from (default: the shipped profile of --gpu)",
    )
    p.add_argument(
        "--tables",
        metavar="MEASURED.json",
        help="first fit the analytical GEMM, attention and memory curves of the profile to "
        "this measured profile's op tables (written by `vtrain_opt profile` on the same GPU); "
        "alone, write that profile",
    )
    p.add_argument(
        "--carry",
        metavar="PROFILE",
        help="take the in-step parameters (" + ", ".join(STEP_PARAMS) + ") from this profile, "
        "calibrated on real steps of another GPU with the same profiler and framework, "
        "where this GPU has no measured steps",
    )
    p.add_argument(
        "--nccl",
        metavar="DIR",
        help="folder of nccl-tests all-reduce sweeps ({gpu}_allreduce_{n}gpu.csv) "
        "to fit the intra-node collective model first",
    )
    p.add_argument(
        "--nccl-prefix",
        metavar="PREFIX",
        help="file prefix of the sweeps (default: the GPU name before the first '-')",
    )
    p.add_argument(
        "--folds",
        type=non_negative_int,
        default=5,
        metavar="K",
        help="k-fold cross-validation (default 5; 0 skips it)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="fold assignment seed")
    p.add_argument("--name", help="profile name (default: the GPU name)")
    p.add_argument(
        "--derive",
        metavar="GPU[,GPU...]",
        help="also write profiles of these GPUs derived by datasheet ratios, "
        "beside --out (e.g. h100-sxm,h200,b200)",
    )
    add_json_arg(p)
    p.set_defaults(func=run)


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--out {str(path)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {str(path)!r}: folder {str(parent)!r} is not writable")
    if path.is_dir():
        raise ValueError(f"--out {str(path)!r} is a folder; give a file name")


def run(args: argparse.Namespace) -> int:
    if not (args.measurements or args.nccl or args.tables or args.carry):
        raise ValueError(
            "calibrate needs --measurements FILE.csv (iteration times), --nccl DIR "
            "(all-reduce sweeps, for the collective model only), --tables MEASURED.json "
            "(curves from a measured profile), --carry PROFILE (in-step parameters), or a "
            "combination"
        )
    setup = run_setup(args)
    out = Path(args.out)
    _check_writable(out)
    derived = [g.strip() for g in (args.derive or "").split(",") if g.strip()]
    for g in derived:
        get_gpu(g)  # unknown names fail now, not after the fit
    base = load_profile(args.base, gpu=setup.gpu) if args.base else None
    if args.tables:
        base = curves_from_tables(
            base or load_profile(setup.gpu), load_profile(args.tables), setup.cluster(), setup.dtype
        )
    if args.carry:
        base = carry_step_params(base or load_profile(setup.gpu), load_profile(args.carry), setup)
    if (args.tables or args.carry) and not args.measurements and not args.nccl:
        return _write_curves(args, base, out, derived)
    if not args.measurements:
        return _run_collectives(args, setup, out, base, derived)
    result = calibrate(
        args.measurements,
        setup,
        base=base,
        nccl_dir=args.nccl,
        nccl_prefix=args.nccl_prefix,
        folds=args.folds,
        seed=args.seed,
        name=args.name,
    )
    write_json_atomic(out, result.profile.to_json_dict())
    written = [str(out)]
    for g in derived:
        path = out.parent / f"{g}.json"
        write_json_atomic(path, derive(result.profile, g).to_json_dict())
        written.append(str(path))
    record = result.record
    if args.json:
        print_json(
            {
                "profile": str(out),
                "written": written,
                "fitted": record["fitted"],
                "at_bounds": record["at_bounds"],
                "train_mape_pct": record["train_mape_pct"],
                "cv_mape_pct": record.get("cv", {}).get("mape_pct"),
                "cv_overall_mape_pct": record.get("cv", {}).get("overall_mape_pct"),
                "nccl": record.get("nccl"),
            }
        )
        return 0
    con = console()
    con.print(
        f"fitted {len(record['fitted'])} parameters on {len(result.predictor.measured_s)} rows:"
    )
    for k, v in record["fitted"].items():
        bound = " (at its bound)" if k in record["at_bounds"] else ""
        con.print(f"  {k:24s} {v:.4g} {PARAM_DEFS[k].unit}{bound}")
    for f, v in record["train_mape_pct"].items():
        cv = record.get("cv", {}).get("mape_pct", {}).get(f)
        cv_text = f", {args.folds}-fold cross-validated {cv:.2f}%" if cv is not None else ""
        con.print(f"  {Path(f).name}: training MAPE {v:.2f}%{cv_text}")
    if "nccl" in record:
        tab = record["nccl"]["mape_pct_by_group_and_size"]
        overall = sum(r["all"] for r in tab) / len(tab)
        con.print(f"  NCCL all-reduce sweeps: MAPE {overall:.2f}% (mean over group sizes)")
    con.print("wrote " + ", ".join(written))
    return 0


def carry_step_params(profile: Profile, source: Profile, setup: RunSetup) -> Profile:
    """``profile`` with the in-step parameters of ``source`` (calibrated on real steps, or
    measured by the profiler). Where ``source`` holds the profiler's in-step GEMM times of
    this very GPU, ``step_gemm_scale`` is recomputed against ``profile``'s own GEMM model
    (the same kernels timed, a different model of them); else its value is copied."""
    sources = dict(profile.sources)
    for k in STEP_PARAMS:
        why = source.sources.get(k, "")
        sources[k] = f"carried from {source.id} ({source.gpu}; same profiler and framework): {why}"
    values = {k: source.params[k] for k in STEP_PARAMS}
    instep = source.provenance.get("in_step_gemm") or {}
    if instep.get("shapes") and source.gpu == profile.gpu:
        from vtrain_opt.profiler.instep import gemm_scale

        scale, why, _ = gemm_scale(
            profile,
            setup.cluster(),
            setup.dtype,
            instep["framework"],
            instep["shapes"],
            on_device=source.provenance.get("kind") == "cuda",
        )
        values["step_gemm_scale"] = scale
        sources["step_gemm_scale"] = (
            f"in-step GEMM times of {source.id} ({source.gpu}), against this profile's "
            f"GEMM model: {why}"
        )
    return replace(profile.with_params(**values), sources=sources)


def _write_curves(args: argparse.Namespace, profile: Profile, out: Path, derived: list[str]) -> int:
    """``calibrate --tables`` (or ``--carry``) alone: the profile with its curves fitted to
    the tables (and the carried in-step parameters)."""
    profile = replace(profile, name=args.name or profile.name)
    write_json_atomic(out, profile.to_json_dict())
    written = [str(out)]
    for g in derived:
        path = out.parent / f"{g}.json"
        write_json_atomic(path, derive(profile, g).to_json_dict())
        written.append(str(path))
    record = profile.fit.get("tables", {})
    names = (*CURVE_PARAMS, *COPIED_PARAMS) if record else ()
    values = {k: profile.params[k] for k in (*names, *(STEP_PARAMS if args.carry else ()))}
    if args.json:
        print_json({"profile": str(out), "written": written, "curves": values, "tables": record})
        return 0
    con = console()
    if record:
        con.print(f"curves fitted to the op tables of {record['profile']} ({record['dtype']}):")
    for k, v in values.items():
        con.print(f"  {k:24s} {v:.4g} {PARAM_DEFS[k].unit}")
    for what in ("gemm", "attention"):
        if what in record:
            r = record[what]
            con.print(f"  {what}: {r['cells']} cells, rms log error {r['rms_log_error']:.3f}")
    con.print("wrote " + ", ".join(written))
    return 0


def _run_collectives(
    args: argparse.Namespace,
    setup: RunSetup,
    out: Path,
    base: Profile | None,
    derived: list[str],
) -> int:
    """``calibrate --nccl DIR`` alone: fit the collective model, keep everything else."""
    if derived:
        raise ValueError("--derive needs --measurements: it derives from a fitted efficiency model")
    profile = calibrate_collectives(
        setup, args.nccl, base=base, nccl_prefix=args.nccl_prefix, name=args.name
    )
    write_json_atomic(out, profile.to_json_dict())
    nccl = profile.fit["nccl"]
    if args.json:
        print_json({"profile": str(out), "written": [str(out)], "nccl": nccl})
        return 0
    con = console()
    con.print(f"fitted the collective model to {len(nccl['files'])} sweep files:")
    for k, v in nccl["fitted"].items():
        con.print(f"  {k:24s} {v:.4g} {PARAM_DEFS[k].unit}")
    for row in nccl["mape_pct_by_group_and_size"]:
        con.print(f"  {row['gpus']} GPUs: MAPE {row['all']:.2f}%")
    con.print(f"wrote {out}")
    return 0
