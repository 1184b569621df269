"""MoE and MLA model shapes: published totals, active counts, dense identity, bad input."""

import pytest
import yaml

from vtrain_opt.cli import main
from vtrain_opt.spec.model import ModelSpec, get_model

# (total, active) published parameter counts
PUBLISHED = {
    "mixtral-8x7b": (46.7e9, 12.9e9),  # Jiang et al. 2024, Mixtral of Experts
    "mixtral-8x22b": (141e9, 39e9),  # Mistral AI 2024
    # DeepSeek-V3 Technical Report: 671B / 37B, the main model (MTP's 14B not counted)
    "deepseek-v3": (671e9, 37e9),
    "qwen3-235b-a22b": (235e9, 22e9),  # Qwen3 Technical Report
    "qwen3-30b-a3b": (30.5e9, 3.3e9),  # Qwen3 Technical Report (30B / 3B; HF: 30.5B / 3.3B)
}


@pytest.mark.parametrize(("name", "counts"), PUBLISHED.items())
def test_moe_parameter_counts_match_published(name, counts):
    m = get_model(name)
    total, active = counts
    assert m.is_moe
    assert m.num_params() == pytest.approx(total, rel=0.01)
    # published active counts are rounded to the billion: within 2%
    assert m.active_params() == pytest.approx(active, rel=0.02)
    assert isinstance(m.num_params(), int) and isinstance(m.active_params(), int)


def test_deepseek_v3_counts_layer_by_layer():
    m = get_model("deepseek-v3")
    h, a = 7168, 128
    attention = h * 1536 + 1536 * a * 192 + h * (512 + 64) + 512 * a * 256 + a * 128 * h
    norms = 2 * h + 1536 + 512
    dense = attention + norms + 3 * h * 18432
    expert = 3 * h * 2048
    moe = attention + norms + h * 256 + 257 * expert
    emb = 2 * 129280 * h + h
    assert m.num_params() == 3 * dense + 58 * moe + emb
    assert m.active_params() == 3 * dense + 58 * (moe - 248 * expert) + emb
    assert m.moe_layer_share == pytest.approx(58 / 61)
    # model FLOPs follow the active parameters (6N plus the attention core)
    assert m.training_flop_per_token() > 6 * 37e9


def test_deepseek_v3_multi_token_prediction_is_simulated_not_counted():
    from vtrain_opt.spec.moe import mtp_params

    m = get_model("deepseek-v3")
    assert m.mtp_num_layers == 1 and m.num_params() == pytest.approx(671e9, rel=0.01)
    h = 7168
    assert mtp_params(m) == m.moe_layer_params(active=False) + 2 * h * h + 2 * h
    assert mtp_params(m) == pytest.approx(11.6e9, rel=0.01)  # + shared embedding/head: 14B
    with pytest.raises(ValueError, match="multi-token prediction is modelled for MoE"):
        ModelSpec.from_dict(get_model("llama3-8b").to_dict() | {"mtp_num_layers": 1})


def test_one_expert_is_the_dense_model():
    dense = get_model("llama3-8b")
    one = ModelSpec.from_dict(dense.to_dict() | {"num_experts": 1}, name="llama3-8b")
    assert one.num_params() == dense.num_params() and not one.is_moe
    assert one.training_flop_per_token() == dense.training_flop_per_token()
    assert dense.to_dict() == ModelSpec.from_dict(dense.to_dict(), name="llama3-8b").to_dict()
    assert "num_experts" not in dense.to_dict()  # dense models keep their identity


def test_aliases_and_kv_channels():
    d = get_model("qwen3-30b-a3b").to_dict()
    d["moe_top_k"] = d.pop("moe_router_topk")
    m = ModelSpec.from_dict(d, name="q")
    assert m.moe_router_topk == 8 and m.head_dim == 128 and m.kv_hidden_size == 512
    v3 = get_model("deepseek-v3").to_dict()  # HF's names for group-limited routing
    v3["n_group"], v3["topk_group"] = (
        v3.pop("moe_router_num_groups"),
        v3.pop("moe_router_group_topk"),
    )
    m = ModelSpec.from_dict(v3, name="v3")
    assert (m.moe_router_num_groups, m.moe_router_group_topk) == (8, 4)


BAD = [
    ({"num_experts": 8, "moe_router_topk": 9}, "above the expert count"),
    ({"moe_router_topk": 2}, "without experts"),
    ({"q_lora_rank": 512}, "model has no MLA"),
    ({"multi_latent_attention": True}, "MLA needs"),
    ({"num_experts": 8, "moe_first_k_dense": 32}, "leaves no MoE layer"),
    ({"num_experts": 8, "num_shared_experts": -1}, "non-negative"),
    ({"num_experts": 8, "moe_router_num_groups": 4}, "needs both"),
    ({"num_experts": 8, "moe_router_num_groups": 3, "moe_router_group_topk": 1}, "must divide"),
    ({"num_experts": 8, "moe_router_num_groups": 4, "moe_router_group_topk": 5}, "at most it"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_moe_fields_are_one_line_exit_2(tmp_path, capsys, extra, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec.from_dict(get_model("llama3-8b").to_dict() | extra, name="bad")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(get_model("llama3-8b").to_dict() | extra))
    assert main(["simulate", "--model", str(path), "--num-gpus", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
