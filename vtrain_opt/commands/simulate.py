"""``simulate``: predict one plan's iteration time, breakdown, memory and cost."""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd

from vtrain_opt.commands.common import (
    add_cluster_args,
    add_json_arg,
    add_model_args,
    add_setup_args,
    count,
    non_negative_int,
    positive_int,
    print_json,
    resolve_cluster,
    resolve_context,
    resolve_model,
)
from vtrain_opt.commands.framework_args import check_torch_plan
from vtrain_opt.console import breakdown_table, console, describe_plan, summary_table
from vtrain_opt.io import write_json_atomic
from vtrain_opt.sim.measured import measured_coverage
from vtrain_opt.sim.step import results_frame, simulate_arrays
from vtrain_opt.sim.timeline import reference
from vtrain_opt.spec.plan import RECOMPUTE_MODES, ParallelPlan, PlanBatch
from vtrain_opt.spec.stages import accounted_split
from vtrain_opt.units import format_duration


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="predict one plan: iteration time, breakdown, memory, MFU, cost",
        description="Predict the time of one training iteration of a plan, where it goes, "
        "whether it fits in memory, and (with --tokens) the days and dollars of the run.",
    )
    add_model_args(p)
    add_cluster_args(p)
    g = p.add_argument_group("plan")
    g.add_argument(
        "--num-gpus", type=positive_int, metavar="N", help="GPUs in all (default: tp*cp*pp*dp)"
    )
    g.add_argument("--tp", type=positive_int, default=1, help="tensor parallelism (default 1)")
    g.add_argument(
        "--cp",
        type=positive_int,
        default=1,
        help="context parallelism: the sequence split over cp GPUs, ring attention; the "
        "sequence must be divisible by 2*cp (default 1)",
    )
    g.add_argument("--pp", type=positive_int, default=1, help="pipeline parallelism (default 1)")
    g.add_argument(
        "--ep",
        type=positive_int,
        default=1,
        help="expert parallelism of a MoE model: the experts over ep GPUs (default 1)",
    )
    g.add_argument(
        "--etp", type=positive_int, default=1, help="expert tensor parallelism (default 1)"
    )
    g.add_argument(
        "--dp", type=positive_int, help="data parallelism (default: num-gpus / (tp*cp*pp), else 1)"
    )
    g.add_argument(
        "--micro-batch",
        type=positive_int,
        default=1,
        metavar="N",
        help="micro-batch size (default 1)",
    )
    g.add_argument(
        "--global-batch",
        type=positive_int,
        metavar="N",
        help="sequences per iteration (default: the model's catalog value)",
    )
    g.add_argument(
        "--recompute",
        choices=(*RECOMPUTE_MODES, "auto"),
        default="auto",
        help="activation recomputation; auto (default) picks the least that fits in memory",
    )
    g.add_argument("--sequence-parallel", action="store_true", help="Megatron sequence parallelism")
    g.add_argument(
        "--vpp",
        type=positive_int,
        default=1,
        metavar="V",
        help="virtual pipeline stages per GPU: interleaved 1F1B when > 1 (default 1)",
    )
    g.add_argument(
        "--first-stage-layers",
        type=positive_int,
        metavar="N",
        help="layers of the first pipeline stage; the other stages split the rest evenly "
        "(Megatron-core's decoder_first_pipeline_num_layers; default: an even share)",
    )
    g.add_argument(
        "--last-stage-layers",
        type=positive_int,
        metavar="N",
        help="layers of the last pipeline stage (decoder_last_pipeline_num_layers)",
    )
    g.add_argument(
        "--account-for-embedding-in-pipeline-split",
        action="store_true",
        help="count the embedding as a layer in the even split: the first stage holds one "
        "layer fewer (Megatron-core's flag of that name)",
    )
    g.add_argument(
        "--account-for-loss-in-pipeline-split",
        action="store_true",
        help="count the output head and loss as a layer: the last stage holds one layer fewer",
    )
    g.add_argument(
        "--zero",
        type=non_negative_int,
        default=0,
        choices=(0, 1, 2, 3),
        help="ZeRO stage (default 0)",
    )
    g.add_argument(
        "--no-dp-overlap",
        action="store_true",
        help="do not overlap the gradient reduction with the backward pass",
    )
    p.add_argument(
        "--tokens",
        type=count,
        metavar="N",
        help="training tokens, e.g. 300B or 3e11: adds days and cost",
    )
    add_setup_args(p)
    p.add_argument(
        "--trace", metavar="FILE", help="write the reference timeline as Chrome/Perfetto trace JSON"
    )
    add_json_arg(p)
    p.set_defaults(func=run)


def _plan(args: argparse.Namespace, global_batch: int, recompute: str, layers: int) -> ParallelPlan:
    tp, pp = args.tp, args.pp
    first, last = args.first_stage_layers or 0, args.last_stage_layers or 0
    if args.account_for_embedding_in_pipeline_split or args.account_for_loss_in_pipeline_split:
        first, last = accounted_split(
            layers,
            pp,
            args.vpp,
            embedding=args.account_for_embedding_in_pipeline_split,
            loss=args.account_for_loss_in_pipeline_split,
            first=first,
            last=last,
        )
    cp = args.cp
    if args.dp is not None:
        dp = args.dp
        if args.num_gpus is not None and args.num_gpus != tp * cp * pp * dp:
            dims, sizes = (
                ("tp x cp x pp", f"{tp} x {cp} x {pp}") if cp > 1 else ("tp x pp", f"{tp} x {pp}")
            )
            raise ValueError(
                f"--num-gpus {args.num_gpus} must equal {dims} x dp = {sizes} x {dp} = "
                f"{tp * cp * pp * dp}"
            )
    elif args.num_gpus is not None:
        if args.num_gpus % (tp * cp * pp):
            if cp > 1:
                raise ValueError(
                    f"--num-gpus {args.num_gpus} is not a multiple of tp x cp x pp = "
                    f"{tp * cp * pp}; choose tp, cp and pp whose product divides it"
                )
            raise ValueError(
                f"--num-gpus {args.num_gpus} is not a multiple of tp x pp = {tp * pp}; "
                "choose tp and pp whose product divides it"
            )
        dp = args.num_gpus // (tp * cp * pp)
    else:
        dp = 1
    return ParallelPlan(
        tp=tp,
        pp=pp,
        dp=dp,
        micro_batch=args.micro_batch,
        global_batch=global_batch,
        recompute=recompute,
        sequence_parallel=args.sequence_parallel,
        vpp=args.vpp,
        zero=args.zero,
        dp_overlap=not args.no_dp_overlap,
        first_stage_layers=first,
        last_stage_layers=last,
        cp=cp,
        ep=args.ep,
        etp=args.etp,
    )


def run(args: argparse.Namespace) -> int:
    model = resolve_model(args)
    cluster = resolve_cluster(args)
    global_batch = args.global_batch or model.global_batch
    if global_batch is None:
        raise ValueError(f"model {model.name!r} has no catalog global batch; give --global-batch")
    modes = RECOMPUTE_MODES if args.recompute == "auto" else (args.recompute,)
    plans = [_plan(args, global_batch, mode, model.num_layers) for mode in modes]
    plans[0].validate(model)
    p0 = plans[0]
    check_torch_plan(
        args.framework,
        tp=p0.tp,
        cp=p0.cp,
        pp=p0.pp,
        vpp=p0.vpp,
        sequence_parallel=p0.sequence_parallel,
    )
    ctx = resolve_context(args, model, cluster)
    batch = PlanBatch.from_plans(plans)
    df = results_frame(batch, simulate_arrays(ctx, batch, args.tokens))
    # auto: the least recomputation that fits; if none fits, full (the least memory)
    pick = int(df.index[df["feasible"]][0]) if df["feasible"].any() else len(df) - 1
    row = df.iloc[pick]
    plan = plans[pick]
    coverage = measured_coverage(ctx.ops)  # measured profile: what came from its tables

    ref_time = None
    if args.trace:
        ref = reference(ctx, plan)
        write_json_atomic(args.trace, ref.chrome_trace())
        ref_time = ref.iteration_time_s

    if args.json:
        out: dict[str, Any] = _row_dict(row)
        out["model"] = model.name
        out["gpu"] = cluster.gpu.name
        out["gpus_per_node"] = cluster.gpus_per_node
        out["nvlink_domain"] = cluster.domain_gpus
        out["profile"] = ctx.profile.id
        out["dtype"] = ctx.setup.dtype
        if ctx.setup.fp8:
            out["fp8_recipe"] = ctx.setup.fp8_recipe
        out["attention"] = ctx.setup.attention
        out["recompute_chosen_by"] = "auto" if args.recompute == "auto" else "user"
        if args.tokens:
            out["tokens"] = args.tokens
        if coverage is not None:
            out["measured_tables"] = coverage
        if ref_time is not None:
            out["trace"] = args.trace
            out["reference_iteration_time_s"] = ref_time
        print_json(out)
        return 0

    con = console()
    dtype = ctx.setup.dtype
    if ctx.setup.fp8:
        dtype = f"fp8 ({ctx.setup.fp8_recipe} scaling)"
    domain = cluster.domain_gpus
    domain_text = "" if domain == cluster.gpus_per_node else f", {domain} per NVLink domain"
    con.print(
        f"[b]{model.name}[/b] ({model.num_params() / 1e9:.1f}B params, seq {model.seq_length}) on "
        f"[b]{cluster.gpu.name}[/b] x {plan.num_gpus} ({cluster.gpus_per_node} per node"
        f"{domain_text}), "
        f"profile {ctx.profile.id}, {dtype}, {ctx.setup.attention} attention"
    )
    chosen = " (auto: least recomputation that fits)" if args.recompute == "auto" else ""
    con.print(f"plan: {describe_plan(row)}{chosen}")
    con.print(breakdown_table(row))
    con.print(summary_table(row))
    if coverage is not None:
        con.print(coverage["summary"])
    if ref_time is not None:
        con.print(
            f"reference timeline written to {args.trace} (replayed iteration {format_duration(ref_time)})"
        )
    return 0


def _row_dict(row: pd.Series) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        out[str(key)] = value.item() if hasattr(value, "item") else value
    out["reason"] = str(row["reason"])
    out["recompute"] = str(row["recompute"])
    return out
