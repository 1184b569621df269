"""Memory model against Korthikanti et al. 2022 and Megatron's bytes-per-parameter table."""

import numpy as np
import pytest

from vtrain_opt.sim.memory import layer_activation_bytes, memory_per_gpu, stage_params, state_bytes
from vtrain_opt.spec.model import ModelSpec, get_model
from vtrain_opt.spec.setup import Setup

FP16_UNFUSED = Setup(dtype="fp16", attention="unfused")
GPT3 = get_model("gpt3-175b")
s, h, a = GPT3.seq_length, GPT3.hidden_size, GPT3.num_attention_heads


def korthikanti(b, t, sp, mode):
    """Per-layer activation bytes, Korthikanti et al. 2022, Table 2 (fp16, GPT)."""
    sbh = s * b * h
    if mode == "full":
        return 2 * sbh / (t if sp else 1)
    if mode == "selective":
        return sbh * (34 / t if sp else 10 + 24 / t)
    return sbh * ((34 / t if sp else 10 + 24 / t) + 5 * a * s / (h * t))


@pytest.mark.parametrize("t", [1, 2, 4, 8])
@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize(("mode", "code"), [("none", 0), ("selective", 1), ("full", 2)])
@pytest.mark.parametrize("b", [1, 4])
def test_layer_activations_match_korthikanti(t, sp, mode, code, b):
    if sp and t == 1:
        return
    stored, _ = layer_activation_bytes(
        GPT3, FP16_UNFUSED, np.array([b]), np.array([t]), np.array([sp]), np.array([code])
    )
    assert stored[0] == pytest.approx(korthikanti(b, t, sp, mode), rel=1e-12)


def test_flash_attention_drops_the_quadratic_term():
    args = (np.array([1]), np.array([8]), np.array([False]), np.array([0]))
    flash, _ = layer_activation_bytes(GPT3, Setup(dtype="fp16", attention="flash"), *args)
    unfused, _ = layer_activation_bytes(GPT3, FP16_UNFUSED, *args)
    sbh = s * h
    assert unfused[0] - flash[0] == pytest.approx(
        5 * a * s * sbh / (h * 8) - 4 * a * s / 8, rel=1e-9
    )


def test_pipeline_holds_one_layer_stack_of_activations_on_stage_zero():
    # 1F1B: stage 0 holds p micro-batches of L/p layers = L layers of one micro-batch
    # (Korthikanti eq. 4), plus the embedding's dropout mask per micro-batch.
    kw = dict(
        tp=np.array([8]),
        pp=np.array([8]),
        dp=np.array([1]),
        mb=np.array([1]),
        vpp=np.array([1]),
        zero=np.array([0]),
        sp=np.array([True]),
        recompute=np.array([1]),
        num_microbatches=np.array([64]),
    )
    mem = memory_per_gpu(GPT3, FP16_UNFUSED, 0.0, **kw)
    per_layer = korthikanti(1, 8, True, "selective")
    rebuilt = 5 * a * s * s / 8  # one layer's attention scores, recomputed during its backward
    expected = GPT3.num_layers * per_layer + 8 * s * h / 8 + rebuilt  # + 8 embedding masks
    assert mem.worst_stage[0] == 0
    assert mem.activations_bytes[0] == pytest.approx(expected, rel=1e-9)
    # interleaving multiplies it by (1 + (p-1)/(p v)) (Korthikanti eq. 5)
    inter = memory_per_gpu(GPT3, FP16_UNFUSED, 0.0, **(kw | {"vpp": np.array([2])}))
    layers = inter.activations_bytes[0] - 8 * s * h / 8 - rebuilt  # embedding masks: chunk 0
    assert layers == pytest.approx(GPT3.num_layers * per_layer * (1 + 7 / 16), rel=0.01)


def test_bytes_per_parameter_follow_megatron_table():
    params = np.array([1e9])
    for dtype, total in [("fp16", 20), ("bf16", 18), ("fp32", 16)]:
        setup = Setup(dtype=dtype)
        assert state_bytes(params, setup, np.array([0]), np.array([8]))[0] == pytest.approx(
            total * 1e9
        )
    bf16 = Setup(dtype="bf16")
    d = np.array([8])
    # distributed optimizer (ZeRO-1): 6 + 12/d (Megatron docs)
    assert state_bytes(params, bf16, np.array([1]), d)[0] == pytest.approx((6 + 12 / 8) * 1e9)
    assert state_bytes(params, bf16, np.array([2]), d)[0] == pytest.approx((2 + 16 / 8) * 1e9)
    assert state_bytes(params, bf16, np.array([3]), d)[0] == pytest.approx(18 / 8 * 1e9)


def test_stage_parameters_add_up_to_the_model():
    for name in ("gpt3-175b", "llama3-70b"):
        m = get_model(name)
        for tp, pp in [(1, 1), (8, 1), (1, 8), (8, 8)]:
            sp_ = stage_params(m, np.array([tp]), np.array([pp]))
            total = (
                sp_.first[0] + sp_.last[0] + (pp - 2) * sp_.middle[0] if pp > 1 else sp_.first[0]
            )
            # tp ranks together hold the model, up to replicated norms/biases and vocab padding;
            # with pp > 1 a tied output layer is duplicated on the last stage
            dup = m.padded_vocab(tp) * m.hidden_size if (m.tied_embeddings and pp > 1) else 0
            assert total * tp == pytest.approx(m.num_params() + dup, rel=0.02)


def test_llama_memory_uses_swiglu_and_gqa():
    m = ModelSpec(
        family="llama",
        num_layers=4,
        hidden_size=4096,
        num_attention_heads=32,
        num_query_groups=8,
        ffn_hidden_size=14336,
        vocab_size=128256,
        seq_length=8192,
    )
    stored, _ = layer_activation_bytes(
        m,
        Setup(dtype="bf16", attention="flash"),
        np.array([1]),
        np.array([1]),
        np.array([False]),
        np.array([0]),
    )
    sb = 8192
    expected = sb * (4 * 2 * 4096 + 2 * (2 * 4096 + 2 * 1024) + 3 * 2 * 14336) + 4 * 32 * sb
    assert stored[0] == pytest.approx(expected, rel=1e-12)
