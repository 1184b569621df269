"""Model-shape rules: head size, hidden ladder, aspect ratio, layer multiple, batch rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtrain_opt.studies.shapes import (
    DEFAULT_LADDER,
    ShapeRules,
    _num_divisors,
    most_divisible,
    parse_ladder,
)


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_candidates_follow_the_rules(family: str) -> None:
    rules = ShapeRules(family=family)
    models = rules.candidates(0.5e9, 1e12, 24)
    sizes = [m.num_params() for m in models]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert 0.3e9 < sizes[0] < 0.8e9 and 0.7e12 < sizes[-1] < 1.4e12
    for m in models:
        assert m.head_dim == 128
        assert m.hidden_size in DEFAULT_LADDER
        assert m.num_layers % 8 == 0
        aspect = m.hidden_size / m.num_layers
        assert 64 <= aspect <= 256, (m.name, aspect)
        assert m.vocab_size == (51200 if family == "gpt" else 32000)
        assert m.seq_length == 2048
        if family == "gpt":
            assert m.ffn == 4 * m.hidden_size and m.kv_heads == m.num_attention_heads
        else:
            assert m.kv_heads == math.gcd(m.num_attention_heads, 8)
            assert m.ffn % 256 == 0 and abs(m.ffn - 8 * m.hidden_size / 3) < 256


def test_for_params_lands_near_the_target() -> None:
    rules = ShapeRules()
    for target in (1e9, 7e9, 70e9, 175e9, 500e9):
        n = rules.for_params(target).num_params()
        assert abs(math.log(n / target)) < math.log(1.3), (target, n)


def test_a_larger_aspect_ratio_gives_shallower_models() -> None:
    deep = ShapeRules(aspect_ratio=64).for_params(70e9)
    wide = ShapeRules(aspect_ratio=256).for_params(70e9)
    assert deep.num_layers > wide.num_layers
    assert deep.hidden_size < wide.hidden_size


def test_overrides_are_used() -> None:
    rules = ShapeRules(
        family="llama",
        hidden_ladder=(4096, 8192),
        head_size=64,
        layer_multiple=4,
        vocab_size=128256,
        seq_length=8192,
        kv_heads=4,
        global_batch=512,
    )
    for m in rules.candidates(5e9, 80e9, 5):
        assert m.hidden_size in (4096, 8192)
        assert m.head_dim == 64 and m.kv_heads == 4
        assert m.num_layers % 4 == 0
        assert m.vocab_size == 128256 and m.seq_length == 8192
        assert m.global_batch == 512


def test_batch_rule_grows_with_size_and_stays_near_the_target() -> None:
    rules = ShapeRules()
    assert rules.batch_tokens(1e9) == pytest.approx(2**20)
    # close to GPT-3's Table 2.1 batches (1M tokens at 1.3B, 3.2M at 175B)
    assert 0.9e6 < rules.batch_tokens(1.3e9) < 1.3e6
    assert 3.0e6 < rules.batch_tokens(175e9) < 4.2e6
    previous = 0
    for n in (1e9, 1e10, 1e11, 1e12):
        gb = rules.global_batch_for(n)
        target = rules.batch_tokens(n) / rules.seq_length
        assert target / 1.125 <= gb <= target * 1.125
        assert gb >= previous
        previous = gb


@settings(max_examples=60, deadline=None)
@given(
    target=st.floats(min_value=1.0, max_value=5000.0), slack=st.floats(min_value=1.0, max_value=1.5)
)
def test_most_divisible_has_the_most_divisors_in_range(target: float, slack: float) -> None:
    gb = most_divisible(target, slack)
    lo, hi = max(1, math.ceil(target / slack)), max(1, math.floor(target * slack))
    if lo <= hi:
        assert lo <= gb <= hi
        assert all(_num_divisors(v) <= _num_divisors(gb) for v in range(lo, hi + 1))


def test_parse_ladder() -> None:
    assert parse_ladder("1024,2048") == (1024, 2048)
    assert parse_ladder("1024:4096:1024") == (1024, 2048, 3072, 4096)
    with pytest.raises(ValueError, match="--hidden-ladder"):
        parse_ladder("1024,big")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_ladder": (1000,)}, "multiple of the head size"),
        ({"family": "bert"}, "family"),
        ({"aspect_ratio": 0.0}, "aspect ratio"),
        ({"batch_exponent": 2.0}, "batch exponent"),
    ],
)
def test_bad_rules_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShapeRules(**kwargs)
