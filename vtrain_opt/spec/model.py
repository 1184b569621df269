"""ModelSpec: the shape of a decoder-only transformer, its parameter count and FLOPs.

Two families are modelled:

* ``gpt``: GPT-2/3 style. LayerNorm, GeLU MLP (ffn = 4h by default), learned
  position embeddings, biases, dropout, input and output embeddings tied.
* ``llama``: LLaMA style. RMSNorm, SwiGLU MLP with its own ffn size, grouped-query
  attention (``num_query_groups`` kv heads), rotary positions, no biases, no
  dropout, untied input and output embeddings.

``gated_linear_unit`` (Megatron's name) overrides the family's MLP: false gives a
non-gated two-GEMM MLP (up, activation, down), true a gated three-GEMM one (SwiGLU).
Nemotron-4's squared-ReLU MLP is a non-gated ``llama`` layer (its activation priced as
GeLU's: the same bytes).

Mixture-of-Experts layers and Multi-head Latent Attention (and ``kv_channels``, a head size
other than hidden / heads) are described in ``spec/moe.py``; without them (``num_experts``
unset or 1) a model is exactly the dense one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from vtrain_opt.resources import data_dir
from vtrain_opt.spec import moe as _moe
from vtrain_opt.spec._check import as_int, positive_int

FAMILIES = ("gpt", "llama")
# Megatron pads the vocabulary so that each tensor-parallel shard is a multiple of this.
VOCAB_PAD_MULTIPLE = 128

_FIELDS = (
    "family",
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "ffn_hidden_size",
    "vocab_size",
    "seq_length",
)
_OPTIONAL = (
    "name",
    "global_batch",
    "tied_embeddings",
    "gated_linear_unit",
    "trained_seq_lengths",
    "description",
    "source",
    *_moe.INT_FIELDS,
    *_moe.BOOL_FIELDS,
)


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer shape, in Megatron-LM's vocabulary."""

    family: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    vocab_size: int
    seq_length: int
    num_query_groups: int | None = None  # kv heads; None means one per attention head
    ffn_hidden_size: int | None = None  # None: 4h for gpt, LLaMA's 8h/3 rule for llama
    tied_embeddings: bool | None = None  # None: tied for gpt, untied for llama
    name: str = "custom"
    global_batch: int | None = None  # catalog default global batch, in sequences
    gated_linear_unit: bool | None = None  # gated MLP (SwiGLU); None: llama yes, gpt no
    # Mixture-of-Experts and Multi-head Latent Attention (spec/moe.py); None/0/1: dense
    num_experts: int | None = None
    moe_router_topk: int | None = None  # None: 2 (Megatron's default) on a MoE model
    moe_ffn_hidden_size: int | None = None  # None: ffn_hidden_size
    num_shared_experts: int = 0
    moe_layer_freq: int = 1
    moe_first_k_dense: int = 0
    # group-limited routing (DeepSeek-V3's node-limited routing): the experts form this many
    # groups and a token's experts lie in at most moe_router_group_topk of them
    moe_router_num_groups: int | None = None
    moe_router_group_topk: int | None = None
    multi_latent_attention: bool = False
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_head_dim: int | None = None
    qk_pos_emb_head_dim: int | None = None
    v_head_dim: int | None = None
    kv_channels: int | None = None  # head size; None: hidden_size / num_attention_heads
    # DeepSeek-V3's multi-token prediction: MoE layers (with a projection) predicting one
    # more token each, on the last pipeline stage, sharing embedding and head (spec/moe.py)
    mtp_num_layers: int = 0
    # the sequence lengths the published model was trained at, in the order of its stages
    # (catalog information; ``seq_length`` is the one simulated)
    trained_seq_lengths: tuple[int, ...] = field(default=(), compare=False)
    description: str = field(default="", compare=False)
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        owner = f"model {self.name!r}"
        if self.family not in FAMILIES:
            raise ValueError(f"{owner}.family: {self.family!r} is not one of {', '.join(FAMILIES)}")
        for f in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "seq_length"):
            positive_int(owner, f, getattr(self, f))
        if self.num_query_groups is None:
            object.__setattr__(self, "num_query_groups", self.num_attention_heads)
        positive_int(owner, "num_query_groups", self.num_query_groups)
        if self.ffn_hidden_size is None:
            object.__setattr__(self, "ffn_hidden_size", _default_ffn(self.family, self.hidden_size))
        positive_int(owner, "ffn_hidden_size", self.ffn_hidden_size)
        if self.tied_embeddings is None:
            object.__setattr__(self, "tied_embeddings", self.family == "gpt")
        if self.gated_linear_unit is None:
            object.__setattr__(self, "gated_linear_unit", self.family == "llama")
        object.__setattr__(self, "trained_seq_lengths", tuple(self.trained_seq_lengths))
        for i, n in enumerate(self.trained_seq_lengths):
            positive_int(owner, f"trained_seq_lengths[{i}]", n)
        if self.global_batch is not None:
            positive_int(owner, "global_batch", self.global_batch)
        if self.is_moe and self.moe_router_topk is None:
            object.__setattr__(self, "moe_router_topk", 2)
        _moe.check(self)
        if self._plain_heads and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{owner}: hidden_size {self.hidden_size} must be divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"{owner}: num_attention_heads {self.num_attention_heads} must be divisible by "
                f"num_query_groups {self.kv_heads}"
            )

    # ---- derived shape -------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        assert self.num_query_groups is not None
        return self.num_query_groups

    @property
    def ffn(self) -> int:
        assert self.ffn_hidden_size is not None
        return self.ffn_hidden_size

    @property
    def head_dim(self) -> int:
        """The head size; MLA: the mean of the query/key (with rotary) and value head sizes,
        the head size of a plain attention of the same core FLOPs."""
        if self.kv_channels is not None:
            return self.kv_channels
        if self.multi_latent_attention:
            qk = self.qk_head_dim + self.qk_pos_emb_head_dim  # type: ignore[operator]
            return (qk + self.v_head_dim) // 2  # type: ignore[operator]
        return self.hidden_size // self.num_attention_heads

    @property
    def _plain_heads(self) -> bool:
        """Heads of hidden / heads dimensions (no kv_channels, no MLA): the dense formulas."""
        return self.kv_channels is None and not self.multi_latent_attention

    @property
    def is_moe(self) -> bool:
        """Mixture-of-Experts layers (more than one expert)."""
        return self.num_experts is not None and self.num_experts > 1

    @property
    def moe_ffn(self) -> int:
        """One expert's MLP width."""
        return self.moe_ffn_hidden_size or self.ffn

    @property
    def moe_layer_share(self) -> float:
        """The fraction of the layers that are MoE layers (0 for a dense model)."""
        return _moe.num_moe_layers(self) / self.num_layers if self.is_moe else 0.0

    @property
    def kv_hidden_size(self) -> int:
        """Width of the K (or V) projection: kv heads x head size."""
        return self.kv_heads * self.head_dim

    @property
    def swiglu(self) -> bool:
        """A gated MLP: three GEMMs (gate, up, down) around SwiGLU; else up, activation, down."""
        return bool(self.gated_linear_unit)

    @property
    def has_bias(self) -> bool:
        return self.family == "gpt"

    @property
    def learned_positions(self) -> bool:
        return self.family == "gpt"

    def padded_vocab(self, tp: int = 1) -> int:
        """Megatron's padded vocabulary for tensor parallelism ``tp``."""
        multiple = VOCAB_PAD_MULTIPLE * tp
        return -(-self.vocab_size // multiple) * multiple

    # ---- parameter counts ----------------------------------------------------------
    def layer_matmul_params(self) -> float:
        """Weights of the GEMMs of one layer (QKV, output projection, MLP).

        A MoE model: the mean over its layers of the weights outside the routed experts
        (attention, the dense MLPs, the routers and shared experts), all split over tp;
        the routed experts are ``routed_expert_params_per_layer``."""
        h, f = self.hidden_size, self.ffn
        mlp = (3 if self.swiglu else 2) * h * f
        if self._plain_heads:
            attention = h * (h + 2 * self.kv_hidden_size) + h * h
        else:
            attention = _moe.attention_matmul_params(self)
        if not self.is_moe:
            return attention + mlp
        share = self.moe_layer_share
        moe = _moe.moe_layer_matmul_params(self, active=True)
        routed = self.moe_router_topk * _moe.expert_params(self)  # type: ignore[operator]
        return attention + (1.0 - share) * mlp + share * (moe - routed)

    def routed_expert_params_per_layer(self) -> float:
        """The routed experts' weights, mean over the layers (0 for a dense model)."""
        if not self.is_moe:
            return 0.0
        assert self.num_experts is not None
        return self.moe_layer_share * self.num_experts * _moe.expert_params(self)

    def active_layer_matmul_params(self) -> float:
        """GEMM weights one token passes through in a layer, mean over the layers (MoE: the
        top-k routed experts; a dense model: ``layer_matmul_params``)."""
        if not self.is_moe:
            return self.layer_matmul_params()
        routed = self.moe_router_topk * _moe.expert_params(self)  # type: ignore[operator]
        return self.layer_matmul_params() + self.moe_layer_share * routed

    def layer_params(self) -> float:
        """All parameters of one transformer layer (weights, biases, norms); a MoE model:
        the mean over the layers without the routed experts."""
        h, f = self.hidden_size, self.ffn
        n = self.layer_matmul_params() + _moe.mla_norm_params(self)
        if self.has_bias:
            n += (h + 2 * self.kv_hidden_size) + h + f + h
            n += 2 * 2 * h  # two LayerNorms, weight and bias
        else:
            n += 2 * h  # two RMSNorms, weight only
        return n

    def embedding_params(self) -> int:
        """Input embedding (and learned positions); the output layer if untied."""
        h = self.hidden_size
        n = self.vocab_size * h
        if self.learned_positions:
            n += self.seq_length * h
        if not self.tied_embeddings:
            n += self.vocab_size * h
        return n

    def final_norm_params(self) -> int:
        return (2 if self.has_bias else 1) * self.hidden_size

    def num_params(self) -> int:
        """Total trainable parameters (unpadded vocabulary, as published counts use)."""
        if self.is_moe:
            return self._moe_params(active=False)
        return int(
            self.num_layers * self.layer_params()
            + self.embedding_params()
            + self.final_norm_params()
        )

    def active_params(self) -> int:
        """Parameters one token passes through (MoE: the top-k routed experts and the shared
        ones; the embedding and output layer counted whole, as the published counts do)."""
        return self._moe_params(active=True) if self.is_moe else self.num_params()

    def moe_layer_params(self, active: bool) -> int:
        """One MoE layer's parameters (all of them, or those a token passes through)."""
        dense_mlp = (3 if self.swiglu else 2) * self.hidden_size * self.ffn
        return self._dense_layer() - dense_mlp + _moe.moe_layer_matmul_params(self, active)

    def _dense_layer(self) -> int:
        """The parameters of one of this model's dense layers."""
        fields = (*_moe.MOE_FIELDS, "mtp_num_layers")
        return int(replace(self, **{k: _moe.DEFAULTS[k] for k in fields}).layer_params())

    def _moe_params(self, active: bool) -> int:
        """A MoE model's parameters, counted layer by layer (exact integers)."""
        dense_layer = self._dense_layer()
        moe_layer = self.moe_layer_params(active)
        n_moe = _moe.num_moe_layers(self)
        layers = n_moe * moe_layer + (self.num_layers - n_moe) * dense_layer
        return layers + self.embedding_params() + self.final_norm_params()

    # ---- FLOPs ------------------------------------------------------------------------
    def forward_flop_per_token(self, seq_length: int | None = None) -> float:
        """Forward FLOPs per token: all GEMMs, the attention core and the logits.

        Attention uses the convention of Megatron-LM and PaLM (QK^T and AV counted
        in full, causal masking not subtracted), so MFU compares with published figures.
        """
        s = self.seq_length if seq_length is None else seq_length
        layer = 2.0 * self.active_layer_matmul_params() + self.attention_core_flop_per_token(s)
        return self.num_layers * layer + 2.0 * self.hidden_size * self.vocab_size

    def attention_core_flop_per_token(self, seq_length: int | None = None) -> float:
        """Q K^T and P V of one layer, per token: 2 s (query/key width + value width)."""
        s = self.seq_length if seq_length is None else seq_length
        if self._plain_heads:
            return 4.0 * s * self.hidden_size
        a = self.num_attention_heads
        if self.multi_latent_attention:
            qk = self.qk_head_dim + self.qk_pos_emb_head_dim  # type: ignore[operator]
            return 2.0 * s * a * (qk + self.v_head_dim)  # type: ignore[operator]
        return 4.0 * s * a * self.head_dim

    def training_flop_per_token(self, seq_length: int | None = None) -> float:
        """Model FLOPs per trained token (forward + backward = 3x forward, no recompute)."""
        return 3.0 * self.forward_flop_per_token(seq_length)

    # ---- io ------------------------------------------------------------------------------
    def with_seq_length(self, seq_length: int) -> ModelSpec:
        return replace(self, seq_length=seq_length)

    def to_dict(self) -> dict[str, Any]:
        """The shape's fields; ``gated_linear_unit`` only where it is not the family's (so
        the spaces of existing models keep their identity)."""
        d = asdict(self)
        for key in ("description", "source", "trained_seq_lengths"):
            d.pop(key)
        for key, default in _moe.DEFAULTS.items():  # dense models keep their identity
            if d[key] == default:
                d.pop(key)
        if self.gated_linear_unit == (self.family == "llama"):
            d.pop("gated_linear_unit")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str | None = None) -> ModelSpec:
        """Build from Megatron-named keys; unknown keys are an error (typos must not pass)."""
        if not isinstance(data, dict):
            raise ValueError(f"model {name!r}: expected a mapping of Megatron fields, got {data!r}")
        owner = f"model {name or data.get('name', 'custom')!r}"
        data = {_moe.ALIASES.get(k, k): v for k, v in data.items()}
        unknown = sorted(set(data) - set(_FIELDS) - set(_OPTIONAL))
        if unknown:
            raise ValueError(
                f"{owner}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS + _OPTIONAL)}"
            )
        required = (
            "family",
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "vocab_size",
            "seq_length",
        )
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"{owner}: missing field(s) {', '.join(missing)}")
        kwargs: dict[str, Any] = {"family": str(data["family"]).lower()}
        for key in (*_FIELDS[1:], "global_batch", *_moe.INT_FIELDS):
            if data.get(key) is not None:
                kwargs[key] = as_int(owner, key, data[key])
        for key in ("tied_embeddings", "gated_linear_unit", *_moe.BOOL_FIELDS):
            if data.get(key) is not None:
                if not isinstance(data[key], bool):
                    raise ValueError(f"{owner}.{key}: must be true or false, got {data[key]!r}")
                kwargs[key] = data[key]
        lengths = data.get("trained_seq_lengths")
        if lengths is not None:
            if not isinstance(lengths, list):
                raise ValueError(
                    f"{owner}.trained_seq_lengths: must be a list of sequence lengths, "
                    f"got {lengths!r}"
                )
            kwargs["trained_seq_lengths"] = tuple(
                as_int(owner, f"trained_seq_lengths[{i}]", n) for i, n in enumerate(lengths)
            )
        kwargs["name"] = str(name or data.get("name") or "custom")
        kwargs["description"] = str(data.get("description", ""))
        kwargs["source"] = str(data.get("source", ""))
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelSpec:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ValueError(f"model file {str(p)!r}: cannot be read ({e.strerror})") from None
        try:
            data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(
                f"model file {str(p)!r}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {str(e).splitlines()[0]}"
            ) from None
        if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
            data = data["model"]
        return cls.from_dict(
            data, name=(data or {}).get("name", p.stem) if isinstance(data, dict) else p.stem
        )


def _default_ffn(family: str, hidden: int) -> int:
    if family == "gpt":
        return 4 * hidden
    # LLaMA: 2/3 of 4h, rounded up to a multiple of 256
    return -(-int(8 * hidden / 3) // 256) * 256


_CATALOG: dict[str, ModelSpec] | None = None


def _catalog() -> dict[str, ModelSpec]:
    global _CATALOG
    if _CATALOG is None:
        raw = yaml.safe_load((data_dir("search_spaces") / "models.yaml").read_text())
        _CATALOG = {name: ModelSpec.from_dict(d, name=name) for name, d in raw["models"].items()}
    return _CATALOG


def model_names() -> list[str]:
    return sorted(_catalog())


def get_model(name: str) -> ModelSpec:
    """A model of the catalog (``search_spaces/models.yaml``) by name."""
    cat = _catalog()
    key = name.strip().lower()
    if key not in cat:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(cat))}")
    return cat[key]


def load_model(name_or_path: str) -> ModelSpec:
    """A catalog name, or a path to a YAML/JSON model file with Megatron's field names."""
    p = Path(name_or_path)
    if p.suffix.lower() in (".yaml", ".yml", ".json") or p.is_file():
        if not p.is_file():
            raise ValueError(f"model file {name_or_path!r} does not exist")
        return ModelSpec.from_file(p)
    return get_model(name_or_path)
