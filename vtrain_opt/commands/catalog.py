"""``catalog``: the named models, GPUs (with their default clusters) and shipped profiles."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from vtrain_opt.commands.common import add_json_arg, print_json
from vtrain_opt.console import console
from vtrain_opt.profiles import load_profile, profile_names
from vtrain_opt.spec.hardware import get_cluster, gpu_names
from vtrain_opt.spec.model import get_model, model_names
from vtrain_opt.units import format_bytes, format_count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "catalog",
        help="list the named models, GPUs and device profiles",
        description="List the models of search_spaces/models.yaml, the GPUs of "
        "search_spaces/gpus.yaml with their default clusters, and the shipped profiles.",
    )
    add_json_arg(p)
    p.set_defaults(func=run)


def _models() -> list[dict[str, Any]]:
    out = []
    for name in model_names():
        m = get_model(name)
        out.append(
            {
                "name": name,
                "family": m.family,
                "params": m.num_params(),
                "active_params": m.active_params(),  # MoE: top-k experts; dense: all
                "num_experts": m.num_experts if m.is_moe else None,
                "moe_router_topk": m.moe_router_topk if m.is_moe else None,
                "num_layers": m.num_layers,
                "hidden_size": m.hidden_size,
                "num_attention_heads": m.num_attention_heads,
                "num_query_groups": m.kv_heads,
                "ffn_hidden_size": m.ffn,
                "vocab_size": m.vocab_size,
                "seq_length": m.seq_length,
                "trained_seq_lengths": list(m.trained_seq_lengths),
                "gated_linear_unit": m.gated_linear_unit,
                "global_batch": m.global_batch,
                "source": m.source,
            }
        )
    return out


def _family(m: dict[str, Any]) -> str:
    """The family, and the MLP where it is not the family's (Nemotron-4: llama, 2-GEMM MLP);
    a MoE model's experts and top-k."""
    moe = f", MoE {m['num_experts']} top-{m['moe_router_topk']}" if m["num_experts"] else ""
    if m["gated_linear_unit"] == (m["family"] == "llama"):
        return str(m["family"]) + moe
    return f"{m['family']}, {'gated' if m['gated_linear_unit'] else '2-GEMM'} MLP" + moe


def _gpus() -> list[dict[str, Any]]:
    out = []
    for name in gpu_names():
        c = get_cluster(name)
        out.append(
            {
                "name": name,
                "peak_flop_per_s": c.gpu.peak_flop_per_s,
                "hbm_bytes": c.gpu.hbm_bytes,
                "hbm_bytes_per_s": c.gpu.hbm_bytes_per_s,
                "cluster": c.to_dict(),
                "nvlink_domain": c.domain_gpus,
                "source": c.gpu.source,
            }
        )
    return out


def _profiles() -> list[dict[str, Any]]:
    out = []
    for name in profile_names():
        p = load_profile(name)
        out.append(
            {"name": name, "gpu": p.gpu, "kind": p.kind, "id": p.id, "description": p.description}
        )
    return out


def run(args: argparse.Namespace) -> int:
    models, gpus, profiles = _models(), _gpus(), _profiles()
    if args.json:
        print_json({"models": models, "gpus": gpus, "profiles": profiles})
        return 0
    con = console()
    t = Table(title="Models (--model NAME)", title_justify="left")
    for col in (
        "name",
        "family",
        "params (MoE: /active)",
        "layers x hidden",
        "heads/kv",
        "seq",
        "trained at",
        "batch",
    ):
        # the name is what --model takes: never cut (the other columns wrap instead)
        t.add_column(
            col, justify="left" if col in ("name", "family") else "right", no_wrap=col == "name"
        )
    for m in models:
        t.add_row(
            m["name"],
            _family(m),
            format_count(m["params"])
            + (f"/{format_count(m['active_params'])}" if m["num_experts"] else ""),
            f"{m['num_layers']} x {m['hidden_size']}",
            f"{m['num_attention_heads']}/{m['num_query_groups']}",
            str(m["seq_length"]),
            ", ".join(f"{n // 1024}K" for n in m["trained_seq_lengths"]) or "-",
            str(m["global_batch"] or "-"),
        )
    con.print(t)
    t = Table(
        title="GPUs (--gpu NAME) and their default clusters: dense TFLOP/s per dtype; GPUs per "
        "node and per NVLink domain; network Gbit/s per node",
        title_justify="left",
    )
    for col in (
        "name",
        "bf16/fp16",
        "fp8",
        "fp4",
        "HBM",
        "HBM TB/s",
        "node",
        "NVLink",
        "Gbit/s",
        "$/GPU-h",
    ):
        t.add_column(col, justify="left" if col == "name" else "right", no_wrap=True)
    for g in gpus:
        peak = g["peak_flop_per_s"].get("bf16", g["peak_flop_per_s"].get("fp16", 0.0))
        c = g["cluster"]
        low = [g["peak_flop_per_s"].get(d) for d in ("fp8", "fp4")]
        t.add_row(
            g["name"],
            f"{peak / 1e12:,.0f}",
            *(f"{v / 1e12:,.0f}" if v else "-" for v in low),
            format_bytes(g["hbm_bytes"]),
            f"{g['hbm_bytes_per_s'] / 1e12:.2f}",
            str(c["gpus_per_node"]),
            str(g["nvlink_domain"]),
            f"{c['inter_node_bytes_per_s'] * 8 / 1e9:,.0f}",
            f"{c['price_per_gpu_hour_usd']:.2f}",
        )
    con.print(t)
    t = Table(title="Shipped device profiles (--profile NAME)", title_justify="left")
    for col in ("name", "GPU", "kind", "about"):
        t.add_column(col)
    for p in profiles:
        t.add_row(p["name"], p["gpu"], p["kind"], p["description"])
    con.print(t)
    return 0
