"""Mixture-of-Experts and Multi-head Latent Attention fields of a ModelSpec: their checks and
parameter counts.

Names follow Megatron-LM (``num_experts``, ``moe_router_topk``, ``moe_ffn_hidden_size``,
``moe_layer_freq``, ``multi_latent_attention``, ``q_lora_rank``, ``kv_lora_rank``,
``qk_head_dim``, ``qk_pos_emb_head_dim``, ``v_head_dim``, ``kv_channels``) with two from the
HF configs that Megatron spells as a pattern: ``num_shared_experts`` (HF
``n_shared_experts``; Megatron's ``moe_shared_expert_intermediate_size`` is
``num_shared_experts x moe_ffn_hidden_size``) and ``moe_first_k_dense`` (HF
``first_k_dense_replace``: the first k layers keep a dense MLP).

Layer ``i`` (0-based) is a MoE layer when ``i >= moe_first_k_dense`` and
``i % moe_layer_freq == 0`` (Megatron's integer ``moe_layer_freq``). A MoE layer's MLP is a
router (a GEMM h x num_experts), ``num_experts`` routed experts of which each token uses
``moe_router_topk``, and ``num_shared_experts`` experts every token uses; each expert is a
gated (SwiGLU) or plain MLP of ``moe_ffn_hidden_size``. The other layers keep the dense MLP
of ``ffn_hidden_size``.

MLA (DeepSeek-V2/V3): queries through a low-rank ``q_lora_rank`` bottleneck (or directly when
it is unset), keys and values through a shared ``kv_lora_rank`` latent plus a
``qk_pos_emb_head_dim`` rotary key shared by the heads; each head has ``qk_head_dim``
non-rotary query/key dimensions, ``qk_pos_emb_head_dim`` rotary ones and ``v_head_dim``
value dimensions. The two latents each have an RMSNorm.
"""

from __future__ import annotations

from typing import Any

from vtrain_opt.spec._check import positive_int

# spec/model.py imports this module: a ModelSpec is typed Any here (no import cycle)
ModelSpec = Any

MOE_FIELDS = (
    "num_experts",
    "moe_router_topk",
    "moe_ffn_hidden_size",
    "num_shared_experts",
    "moe_layer_freq",
    "moe_first_k_dense",
    "moe_router_num_groups",
    "moe_router_group_topk",
)
MLA_RANKS = ("q_lora_rank", "kv_lora_rank", "qk_head_dim", "qk_pos_emb_head_dim", "v_head_dim")
# integer fields of a model file beside the dense ones; the booleans are in BOOL_FIELDS
INT_FIELDS = (*MOE_FIELDS, *MLA_RANKS, "kv_channels", "mtp_num_layers")
BOOL_FIELDS = ("multi_latent_attention",)
# names accepted in model files for the same field (HF's and the spelling)
ALIASES = {
    "moe_top_k": "moe_router_topk",
    "qk_rope_head_dim": "qk_pos_emb_head_dim",
    "first_k_dense_replace": "moe_first_k_dense",
    "n_shared_experts": "num_shared_experts",
    "n_group": "moe_router_num_groups",
    "topk_group": "moe_router_group_topk",
}
# the value of each field that leaves a dense model as it was (dropped from ``to_dict``)
DEFAULTS: dict[str, Any] = {
    "num_experts": None,
    "moe_router_topk": None,
    "moe_ffn_hidden_size": None,
    "num_shared_experts": 0,
    "moe_layer_freq": 1,
    "moe_first_k_dense": 0,
    "moe_router_num_groups": None,
    "moe_router_group_topk": None,
    "multi_latent_attention": False,
    "q_lora_rank": None,
    "kv_lora_rank": None,
    "qk_head_dim": None,
    "qk_pos_emb_head_dim": None,
    "v_head_dim": None,
    "kv_channels": None,
    "mtp_num_layers": 0,
}


_NON_NEGATIVE = ("num_shared_experts", "moe_first_k_dense", "mtp_num_layers")


def check(m: ModelSpec) -> None:
    """Raise ValueError naming the field for inconsistent MoE or MLA settings."""
    owner = f"model {m.name!r}"
    for f in INT_FIELDS:
        value = getattr(m, f)
        if value is not None and f not in _NON_NEGATIVE:
            positive_int(owner, f, value)
    for f in _NON_NEGATIVE:
        value = getattr(m, f)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{owner}.{f}: must be a non-negative integer, got {value!r}")
    if m.num_experts is None:
        extra = [f for f in MOE_FIELDS[1:] if getattr(m, f) != DEFAULTS[f]]
        if extra:
            raise ValueError(
                f"{owner}: {', '.join(extra)} set on a model without experts; set num_experts"
            )
    elif m.moe_router_topk is not None and m.moe_router_topk > m.num_experts:
        raise ValueError(
            f"{owner}.moe_router_topk: {m.moe_router_topk} is above the expert count "
            f"(num_experts {m.num_experts})"
        )
    if m.is_moe:
        assert m.num_experts is not None and m.moe_router_topk is not None
        if m.moe_first_k_dense >= m.num_layers:
            raise ValueError(
                f"{owner}.moe_first_k_dense: {m.moe_first_k_dense} leaves no MoE layer of "
                f"{m.num_layers}"
            )
    groups, group_topk = m.moe_router_num_groups, m.moe_router_group_topk
    if (groups is None) != (group_topk is None):
        raise ValueError(
            f"{owner}: group-limited routing needs both moe_router_num_groups and "
            "moe_router_group_topk"
        )
    if (
        groups is not None
        and m.num_experts is not None
        and (m.num_experts % groups or group_topk > groups)
    ):
        raise ValueError(
            f"{owner}: moe_router_num_groups ({groups}) must divide num_experts "
            f"({m.num_experts}) and moe_router_group_topk ({group_topk}) be at most it"
        )
    if m.mtp_num_layers and not m.is_moe:
        raise ValueError(
            f"{owner}.mtp_num_layers: multi-token prediction is modelled for MoE models "
            "(DeepSeek-V3's) only"
        )
    if not m.multi_latent_attention:
        ranks = [f for f in MLA_RANKS if getattr(m, f) is not None]
        if ranks:
            raise ValueError(
                f"{owner}: {', '.join(ranks)} are Multi-head Latent Attention ranks, but the "
                "model has no MLA; set multi_latent_attention: true"
            )
    else:
        missing = [f for f in MLA_RANKS[1:] if getattr(m, f) is None]
        if missing:
            raise ValueError(f"{owner}: MLA needs {', '.join(missing)}")
        if m.kv_channels is not None:
            raise ValueError(
                f"{owner}.kv_channels: MLA sets the head sizes by qk_head_dim, "
                "qk_pos_emb_head_dim and v_head_dim; drop kv_channels"
            )
        if m.num_query_groups != m.num_attention_heads:
            raise ValueError(
                f"{owner}.num_query_groups: MLA has no query groups (every head has its own "
                f"key and value from the latent), got {m.num_query_groups}"
            )


def moe_layer_flags(m: ModelSpec) -> list[bool]:
    """Whether each layer (in order) is a MoE layer."""
    if not m.is_moe:
        return [False] * m.num_layers
    return [i >= m.moe_first_k_dense and i % m.moe_layer_freq == 0 for i in range(m.num_layers)]


def attention_matmul_params(m: ModelSpec) -> int:
    """Weights of one layer's attention GEMMs (QKV or MLA's projections, output)."""
    h = m.hidden_size
    if not m.multi_latent_attention:
        q = m.num_attention_heads * m.head_dim
        return h * (q + 2 * m.kv_hidden_size) + q * h
    a = m.num_attention_heads
    qk, rope, v = m.qk_head_dim, m.qk_pos_emb_head_dim, m.v_head_dim
    kv_lora = m.kv_lora_rank
    assert qk is not None and rope is not None and v is not None and kv_lora is not None
    q_lora = m.q_lora_rank
    q = h * a * (qk + rope) if q_lora is None else h * q_lora + q_lora * a * (qk + rope)
    kv = h * (kv_lora + rope) + kv_lora * a * (qk + v)
    return q + kv + a * v * h


def mla_norm_params(m: ModelSpec) -> int:
    """The RMSNorms of MLA's latents (0 without MLA)."""
    if not m.multi_latent_attention:
        return 0
    assert m.kv_lora_rank is not None
    return m.kv_lora_rank + (m.q_lora_rank or 0)


def expert_params(m: ModelSpec) -> int:
    """Weights of one expert's MLP (gated: three GEMMs)."""
    return (3 if m.swiglu else 2) * m.hidden_size * m.moe_ffn


def moe_layer_matmul_params(m: ModelSpec, active: bool) -> int:
    """A MoE layer's MLP GEMM weights: router, shared experts and the routed experts (all of
    them, or the top-k a token uses when ``active``)."""
    assert m.num_experts is not None and m.moe_router_topk is not None
    routed = m.moe_router_topk if active else m.num_experts
    router = m.hidden_size * m.num_experts
    return router + (m.num_shared_experts + routed) * expert_params(m)


def num_moe_layers(m: ModelSpec) -> int:
    return sum(moe_layer_flags(m))


# The default load imbalance of expert parallelism: the busiest EP rank's routed tokens over
# the mean, per micro-batch. Auxiliary-loss-free balancing (Wang et al. 2024,
# arXiv:2408.15664, which DeepSeek-V3 adopts) keeps the maximal violation of the experts'
# loads to a few percent over a whole evaluation set; a single micro-batch varies more, and
# a rank holding num_experts/ep experts averages over them. 1.1 is our assumption between
# the two, not a published figure: pass --moe-imbalance to change it.
MOE_IMBALANCE = 1.1
# Setup's MoE fields (space files and search requests take them by these names)
MOE_SETUP_KEYS = ("moe_imbalance", "moe_capacity_factor", "moe_a2a_overlap", "moe_node_limit")


def check_moe_setup(imbalance: Any, capacity_factor: Any, overlap: Any) -> None:
    """Raise ValueError for MoE settings outside their ranges."""
    if (
        isinstance(imbalance, bool)
        or not isinstance(imbalance, (int, float))
        or not (1.0 <= imbalance < float("inf"))
    ):
        raise ValueError(
            f"moe imbalance: {imbalance!r} must be a number >= 1 (busiest rank's tokens / mean)"
        )
    if capacity_factor is not None and (
        isinstance(capacity_factor, bool)
        or not isinstance(capacity_factor, (int, float))
        or not (0.0 < capacity_factor < float("inf"))
    ):
        raise ValueError(f"moe capacity factor: {capacity_factor!r} must be a positive number")
    if not isinstance(overlap, bool):
        raise ValueError(f"moe all-to-all overlap: {overlap!r} must be true or false")


def _ep_without_experts(b: Any, m: ModelSpec) -> Any:
    return ((b.ep > 1) | (b.etp > 1)) & (not m.is_moe)


def _fold(b: Any, m: ModelSpec) -> Any:
    gpus = b.tp * getattr(b, "cp", 1) * b.dp
    return gpus % (b.ep * b.etp).clip(1) != 0


# Plan rules of expert parallelism (spec/plan.py runs them with its own): (reason code,
# message formatted with the plan's fields and ``rule_values``, the plans breaking it).
PLAN_RULES = [
    (
        "bad ep",
        "ep and etp must be positive integers, got ep={ep} etp={etp}",
        lambda b, m: (b.ep < 1) | (b.etp < 1),
    ),
    (
        "ep needs experts",
        "expert parallelism (ep={ep}, etp={etp}) needs a MoE model (num_experts > 1); this "
        "model has {experts} expert(s)",
        _ep_without_experts,
    ),
    (
        "ep does not divide experts",
        "expert parallelism ep={ep} must divide the experts ({experts})",
        lambda b, m: m.is_moe & ((m.num_experts or 1) % b.ep.clip(1) != 0),
    ),
    (
        "etp does not divide moe ffn",
        "expert tensor parallelism etp={etp} must divide moe_ffn_hidden_size ({moe_ffn})",
        lambda b, m: m.is_moe & (m.moe_ffn % b.etp.clip(1) != 0),
    ),
    (
        "ep*etp does not divide tp*cp*dp",
        "ep x etp = {ep} x {etp} must divide the GPUs of a pipeline stage, tp x cp x dp = "
        "{tp} x {cp} x {dp} (Megatron-core folds the expert groups over them)",
        _fold,
    ),
    (
        "MoE with tp > 1 needs sp",
        "a MoE model with tensor parallelism tp={tp} needs sequence parallelism (as "
        "Megatron-core requires)",
        lambda b, m: m.is_moe & (b.tp > 1) & ~b.sp,
    ),
]


def rule_values(m: ModelSpec) -> dict[str, Any]:
    """The model's values the messages of ``PLAN_RULES`` name."""
    return {"experts": m.num_experts or 1, "moe_ffn": m.moe_ffn}


def mtp_params(m: ModelSpec) -> int:
    """Parameters of the multi-token-prediction modules (DeepSeek-V3, ``mtp_num_layers``):
    each a MoE transformer layer, a projection (2h -> h) and two RMSNorms; the embedding and
    the output head are shared with the main model. Not in ``num_params`` (the published
    counts leave them out: DeepSeek-V3 671B + 14B of MTP)."""
    if not m.mtp_num_layers:
        return 0
    h = m.hidden_size
    return int(m.mtp_num_layers * (m.moe_layer_params(active=False) + 2 * h * h + 2 * h))
