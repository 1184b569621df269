"""ModelSpec: parameter counts against published figures, FLOPs, files and the catalog."""

import json

import pytest

from vtrain_opt.spec.model import ModelSpec, get_model, load_model, model_names

# Published parameter counts (exact where the authors give them).
PUBLISHED = {
    "gpt3-175b": 175.0e9,  # Brown et al. 2020, Table 2.1
    "mt-nlg-530b": 530.0e9,  # Smith et al. 2022
    "llama2-70b": 68_976_648_192,  # meta-llama/Llama-2-70b-hf safetensors index
    "llama3-8b": 8_030_261_248,  # meta-llama/Meta-Llama-3-8B
    "llama3-70b": 70_553_706_496,  # meta-llama/Meta-Llama-3-70B
    "llama3-405b": 405_853_388_800,  # meta-llama/Llama-3.1-405B (model card: 405.85B)
    # Llama 3.1 (Dubey et al. 2024; HF configs meta-llama/Llama-3.1-*): 8.0B, 70.6B, 405B
    "llama3.1-8b": 8.0e9,
    "llama3.1-70b": 70.6e9,
    "llama3.1-405b": 405e9,
    "nemotron4-340b": 341e9,  # Nemotron-4 340B Technical Report (NVIDIA 2024): 341B
}


@pytest.mark.parametrize(("name", "count"), PUBLISHED.items())
def test_parameter_counts_match_published(name, count):
    assert get_model(name).num_params() == pytest.approx(count, rel=0.01)


def test_llama_counts_are_exact():
    # the LLaMA shapes are fully specified, so the counts must match to the parameter
    assert get_model("llama3-8b").num_params() == 8_030_261_248
    assert get_model("llama2-70b").num_params() == 68_976_648_192
    # Llama 3.1 has Llama 3's shapes (405B came only as 3.1)
    assert get_model("llama3.1-8b").num_params() == 8_030_261_248
    assert get_model("llama3.1-70b").num_params() == 70_553_706_496
    assert get_model("llama3.1-405b").num_params() == 405_853_388_800


def test_llama31_shapes_and_trained_sequence_lengths():
    shapes = {
        "llama3.1-8b": (32, 4096, 32, 8, 14336),
        "llama3.1-70b": (80, 8192, 64, 8, 28672),
        "llama3.1-405b": (126, 16384, 128, 8, 53248),
    }
    for name, (layers, hidden, heads, kv, ffn) in shapes.items():
        m = get_model(name)
        assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.kv_heads, m.ffn) == (
            layers,
            hidden,
            heads,
            kv,
            ffn,
        )
        assert m.vocab_size == 128256 and m.swiglu and not m.learned_positions  # RoPE
        assert m.seq_length == 8192 and m.trained_seq_lengths[-1] == 131072
        assert "Llama 3 Herd" in m.source
    assert get_model("llama3.1-405b").trained_seq_lengths == (4096, 8192, 131072)
    # the same shape as the llama3-* entry: the same model to the simulator (names differ)
    assert get_model("llama3.1-405b").to_dict() | {"name": "x"} == get_model(
        "llama3-405b"
    ).to_dict() | {"name": "x"}
    assert get_model("gpt3-175b").trained_seq_lengths == (2048,)


def test_nemotron4_has_a_two_gemm_mlp_without_biases():
    m = get_model("nemotron4-340b")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.kv_heads, m.ffn) == (
        96,
        18432,
        96,
        8,
        73728,
    )
    assert (m.vocab_size, m.seq_length, m.trained_seq_lengths) == (256000, 4096, (4096,))
    assert not m.swiglu and not m.has_bias and not m.tied_embeddings and not m.learned_positions
    h, kv = m.hidden_size, m.kv_hidden_size
    assert m.layer_matmul_params() == h * (h + 2 * kv) + h * h + 2 * h * m.ffn
    assert "non-gated 2-GEMM MLP" in m.description and "squared-ReLU" in m.description
    assert m.to_dict()["gated_linear_unit"] is False
    assert "gated_linear_unit" not in get_model("llama3-8b").to_dict()  # the family's own
    assert ModelSpec.from_dict(m.to_dict()) == m


def test_gated_linear_unit_and_trained_lengths_are_checked():
    base = {
        "family": "llama",
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "vocab_size": 10,
        "seq_length": 8,
    }
    with pytest.raises(ValueError, match="gated_linear_unit: must be true or false, got 'no'"):
        ModelSpec.from_dict(base | {"gated_linear_unit": "no"})
    with pytest.raises(ValueError, match="trained_seq_lengths: must be a list"):
        ModelSpec.from_dict(base | {"trained_seq_lengths": 4096})
    with pytest.raises(ValueError, match=r"trained_seq_lengths\[1\]: must be a positive"):
        ModelSpec.from_dict(base | {"trained_seq_lengths": [8, 0]})
    gelu = ModelSpec.from_dict(base | {"family": "gpt", "gated_linear_unit": True})
    assert gelu.swiglu and gelu.to_dict()["gated_linear_unit"] is True


def test_catalog_has_required_models():
    required = {
        "gpt3-175b",
        "mt-nlg-530b",
        "llama2-70b",
        "llama3-8b",
        "llama3-70b",
        "llama3-405b",
        "llama3.1-8b",
        "llama3.1-70b",
        "llama3.1-405b",
        "nemotron4-340b",
        "chinchilla-70b",
        "gopher-280b",
        "megatron-1.7b",
        "megatron-1t",
    }
    assert required <= set(model_names())


def test_megatron_scaling_table_sizes():
    # Narayanan et al. 2021, Table 1 (nominal sizes)
    for name, nominal in [
        ("megatron-1.7b", 1.7e9),
        ("megatron-18b", 18.4e9),
        ("megatron-145b", 145.6e9),
        ("megatron-1t", 1008e9),
    ]:
        assert get_model(name).num_params() == pytest.approx(nominal, rel=0.03)


def test_training_flops_close_to_6n_plus_attention():
    m = get_model("gpt3-175b")
    n = m.num_params()
    attention = 12 * m.num_layers * m.seq_length * m.hidden_size  # 6 x (2 s h) per layer
    # embeddings are gathers, not GEMMs; the tied output layer is a GEMM: within 1%
    assert m.training_flop_per_token() == pytest.approx(6 * n + attention, rel=0.01)
    # Megatron's formula: 72 B s L h^2 (1 + s/(6h) + V/(12 h L)) per iteration, i.e. per token:
    s, h, L, V = m.seq_length, m.hidden_size, m.num_layers, m.vocab_size
    megatron = 72 * L * h * h * (1 + s / (6 * h) + V / (12 * h * L))
    assert m.training_flop_per_token() == pytest.approx(megatron, rel=1e-3)


def test_gqa_reduces_kv_projection():
    mha = ModelSpec(
        family="llama",
        num_layers=2,
        hidden_size=1024,
        num_attention_heads=16,
        vocab_size=1000,
        seq_length=128,
        ffn_hidden_size=2816,
    )
    gqa = ModelSpec(
        family="llama",
        num_layers=2,
        hidden_size=1024,
        num_attention_heads=16,
        num_query_groups=4,
        vocab_size=1000,
        seq_length=128,
        ffn_hidden_size=2816,
    )
    assert mha.layer_matmul_params() - gqa.layer_matmul_params() == 2 * 1024 * (1024 - 256)


def test_defaults_by_family():
    gpt = ModelSpec(
        family="gpt",
        num_layers=2,
        hidden_size=512,
        num_attention_heads=8,
        vocab_size=1000,
        seq_length=64,
    )
    assert gpt.ffn == 2048 and gpt.tied_embeddings and gpt.kv_heads == 8
    llama = ModelSpec(
        family="llama",
        num_layers=2,
        hidden_size=4096,
        num_attention_heads=32,
        vocab_size=1000,
        seq_length=64,
    )
    assert llama.ffn == 11008 and not llama.tied_embeddings  # LLaMA-7B's rule


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"family": "bert"}, "family"),
        ({"hidden_size": 1001}, "divisible"),
        ({"num_layers": 0}, "num_layers"),
        ({"num_query_groups": 3}, "num_query_groups"),
        ({"seq_length": -1}, "seq_length"),
    ],
)
def test_validation_names_the_field(changes, message):
    base = dict(
        family="gpt",
        num_layers=2,
        hidden_size=512,
        num_attention_heads=8,
        vocab_size=1000,
        seq_length=64,
    )
    with pytest.raises(ValueError, match=message):
        ModelSpec(**(base | changes))


def test_model_files(tmp_path):
    y = tmp_path / "m.yaml"
    y.write_text(
        "family: llama\nnum_layers: 32\nhidden_size: 4096\nnum_attention_heads: 32\n"
        "num_query_groups: 8\nffn_hidden_size: 14336\nvocab_size: 128256\nseq_length: 8192\n"
    )
    assert load_model(str(y)).num_params() == get_model("llama3-8b").num_params()
    j = tmp_path / "m.json"
    j.write_text(
        json.dumps(
            {
                "family": "gpt",
                "num_layers": 96,
                "hidden_size": 12288,
                "num_attention_heads": 96,
                "vocab_size": 50257,
                "seq_length": 2048,
            }
        )
    )
    assert load_model(str(j)).num_params() == get_model("gpt3-175b").num_params()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("family: gpt\nnum_layers: [1\n", "not valid YAML"),
        ("family: gpt\nnum_layers: 2\n", "missing field"),
        (
            "family: gpt\nnum_layers: 2\nhidden_size: 64\nnum_attention_heads: 4\nvocab_size: 10\n"
            "seq_length: 8\nhiden: 3\n",
            "unknown field",
        ),
        (
            "family: gpt\nnum_layers: two\nhidden_size: 64\nnum_attention_heads: 4\nvocab_size: 10\n"
            "seq_length: 8\n",
            "num_layers",
        ),
    ],
)
def test_malformed_model_files(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_model(str(f))


def test_unknown_model_lists_names():
    with pytest.raises(ValueError, match=r"known models: .*gpt3-175b"):
        get_model("gpt5")
    with pytest.raises(ValueError, match="does not exist"):
        load_model("nope.yaml")
