"""SearchSpace: defaults, vectorized enumeration, size, and space files with line numbers."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from vtrain_opt import get_model
from vtrain_opt.search import Limits, SearchSpace
from vtrain_opt.search.spacefile import SpaceFileError, load_space, parse_space, space_names
from vtrain_opt.spec.plan import PlanBatch


def test_defaults_follow_the_model():
    m = get_model("mt-nlg-530b")
    s = SearchSpace.create(m, ["a100-80gb"])
    assert s.tp == (1, 2, 4, 8)
    assert s.pp == (1, 3, 5, 7, 15, 21, 35, 105)
    assert s.global_batch == (1920,)
    assert s.micro_batch == tuple(2**i for i in range(11))  # powers of two up to 1920
    # vpp > 1 only where some pp > 1 leaves a whole number of layers per chunk
    assert all(any(p > 1 and 105 % (p * v) == 0 for p in s.pp) for v in s.vpp if v > 1)
    assert s.recompute == ("full", "none", "selective") or set(s.recompute) == {
        "none",
        "selective",
        "full",
    }


def test_default_tp_goes_up_to_the_nvlink_domain():
    m = get_model("gpt3-175b")  # 96 heads: tp may be 1 ... 32
    assert SearchSpace.create(m, ["h100-sxm"]).tp == (1, 2, 4, 8)
    s = SearchSpace.create(m, ["gb200-nvl72"])
    assert s.tp == (1, 2, 4, 8, 16, 32)  # powers of two up to the 72-GPU domain
    assert s.step_of(s.gpus[0]) == 4  # GPU counts stay in whole (4-GPU) nodes
    assert s.to_dict()["gpus"][0]["cluster"]["nvlink_domain"] == 72


def test_enumeration_is_exactly_the_valid_plans():
    m = get_model("gpt3-175b")
    s = SearchSpace.create(
        m, ["a100-80gb"], max_gpus=256, micro_batch=[1, 2, 4], vpp=[1, 2], zero=[0, 1]
    )
    batches = [b for _, b in s.iter_plans(chunk_plans=5000)]  # many small chunks
    n = sum(b.n for b in batches)
    assert n == s.size == len(s)
    for b in batches:
        assert s.member_mask(0, b).all()
        assert (b.check(m) == 0).all()
        assert np.all(b.num_gpus % 8 == 0) and np.all(b.num_gpus <= 256)
    # nothing is listed twice
    cols = np.concatenate(
        [
            np.stack([b.tp, b.pp, b.dp, b.mb, b.gb, b.recompute, b.sp, b.vpp, b.zero], 1)
            for b in batches
        ]
    )
    assert len(np.unique(cols, axis=0)) == n
    # and a valid plan outside the enumeration is rejected by member_mask (e.g. 12 GPUs)
    odd = PlanBatch(tp=[4], pp=[3], dp=[1], mb=[1], gb=[1536])
    assert not s.member_mask(0, odd)[0]


def test_pinned_dimensions_and_gpu_step():
    m = get_model("gpt3-175b")
    s = SearchSpace.create(m, ["h100-sxm"], tp=8, pp=[8, 16], gpu_step=64, max_gpus=1024)
    assert s.free_dimensions() == [
        "num_gpus",
        "pp",
        "micro_batch",
        "recompute",
        "sequence_parallel",
        "vpp",
        "zero",
    ]
    plans = [b for _, b in s.iter_plans()]
    assert all((b.tp == 8).all() and np.isin(b.pp, [8, 16]).all() for b in plans)
    assert all((b.num_gpus % 64 == 0).all() for b in plans)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tp": [5]}, "space.tp: 5 must divide"),
        ({"pp": [7]}, "space.pp: 7 must divide the layers (96)"),
        ({"zero": [4]}, "space.zero"),
        ({"recompute": ["some"]}, "space.recompute"),
        ({"min_gpus": 20, "max_gpus": 23}, "no multiple of 8"),
    ],
)
def test_impossible_candidates_are_errors(kwargs, message):
    with pytest.raises(ValueError, match="space") as e:
        SearchSpace.create(get_model("gpt3-175b"), ["a100-80gb"], **kwargs)
    assert message in str(e.value)


def test_unknown_gpu_is_an_error():
    with pytest.raises(ValueError, match="unknown GPU 'a100-90gb'"):
        SearchSpace.create(get_model("gpt3-175b"), ["a100-90gb"])


def test_shipped_spaces_load():
    assert {"gpt3-175b", "mt-nlg-530b", "llama3-70b", "llama3-405b"} <= set(space_names())
    s = load_space("mt-nlg-530b")
    assert s.model.name == "mt-nlg-530b" and s.tokens == 270e9
    assert s.min_gpus == 8 and s.max_gpus == 4096 and s.gpu_step is None
    assert s.global_batch == (1920,)
    s = load_space("llama3-405b")
    assert [g.name for g in s.gpus] == ["h100-sxm", "h200", "b200"]


GOOD = """\
space:
  model: gpt3-175b
  tokens: 300B
  gpus:
    - a100-80gb
    - {name: h100-sxm, price_per_gpu_hour: 3.25}
  num_gpus: {min: 64, max: 512, step: node}
  global_batch: [1536, 2048]
  tp: 8
  pp: [8, 16]
  micro_batch: [1, 2]
  recompute: [selective, full]
  sequence_parallel: true
  vpp: 1
  zero: [0, 1]
"""


def test_space_file_nvlink_domain():
    text = GOOD.replace(
        "{name: h100-sxm, price_per_gpu_hour: 3.25}", "{name: h100-sxm, nvlink_domain: 16}"
    )
    s = parse_space(text.replace("  tp: 8\n", ""), "d.yaml")
    assert [g.cluster.domain_gpus for g in s.gpus] == [8, 16]
    assert s.tp == (1, 2, 4, 8, 16)  # up to the largest domain
    for bad, message in (
        ("nvlink_domain: 12", "d.yaml:6: space.gpus[1].nvlink_domain: cluster 'h100-sxm'"),
        ("nvlink_domain: 0", "d.yaml:6: space.gpus[1].nvlink_domain: expected a positive"),
    ):
        with pytest.raises(SpaceFileError) as e:
            parse_space(text.replace("nvlink_domain: 16", bad), "d.yaml")
        assert str(e.value).startswith(message), str(e.value)


def test_space_file_values():
    s = parse_space(GOOD, "good.yaml")
    assert s.tokens == 300e9
    assert [g.name for g in s.gpus] == ["a100-80gb", "h100-sxm"]
    assert s.gpus[1].price_per_gpu_hour_usd == 3.25
    assert s.global_batch == (1536, 2048) and s.tp == (8,) and s.pp == (8, 16)
    assert set(s.recompute) == {"selective", "full"} and s.sequence_parallel == (True,)
    assert s.size > 0


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (("  tp: 8\n", "  tp: 8\n  tpp: 4\n"), "bad.yaml:10: space.tpp: unknown key"),
        (("  tp: 8\n", "  tp: [8, 5]\n"), "bad.yaml:9: space.tp: 5 must divide"),
        (("price_per_gpu_hour: 3.25", "price_per_gpu_hour: cheap"), "bad.yaml:6: space.gpus[1]"),
        (("- a100-80gb", "- a100-90gb"), "bad.yaml:5: space.gpus[0]: unknown GPU 'a100-90gb'"),
        (("tokens: 300B", "tokens: lots"), "bad.yaml:3: space.tokens:"),
        (("step: node", "step: half"), "bad.yaml:7: space.num_gpus.step: expected a positive"),
        (("model: gpt3-175b", "model: gpt5"), "bad.yaml:2: space.model: unknown model 'gpt5'"),
        (("  micro_batch: [1, 2]", "  micro_batch: [1, -2]"), "bad.yaml:11: space.micro_batch[1]"),
        (("  pp: [8, 16]", "  pp: [8, 16"), "bad.yaml:11: not valid YAML"),
        (
            ("sequence_parallel: true", "sequence_parallel: maybe"),
            "bad.yaml:13: space.sequence_parallel",
        ),
    ],
)
def test_space_file_errors_name_file_line_and_key(change, where):
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(SpaceFileError) as e:
        parse_space(text, "bad.yaml")
    assert str(e.value).startswith(where), str(e.value)


def test_space_file_needs_a_space_mapping(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("model: gpt3-175b\n")
    with pytest.raises(SpaceFileError, match=r"s\.yaml:1: .*top-level 'space:'"):
        load_space(str(p))
    with pytest.raises(ValueError, match="unknown space 'nope'"):
        load_space("nope")


def test_inline_model_shape():
    text = textwrap.dedent(
        """\
        space:
          model: {family: llama, num_layers: 16, hidden_size: 2048, num_attention_heads: 16,
                  vocab_size: 32000, seq_length: 2048, global_batch: 256}
          tokens: 20B
          num_gpus: {max: 64}
        """
    )
    s = parse_space(text)
    assert s.model.num_layers == 16 and s.global_batch == (256,)
    assert s.size > 0


def test_limits_validate():
    with pytest.raises(ValueError, match="budget_usd"):
        Limits(budget_usd=-1)
    with pytest.raises(ValueError, match="min GPUs"):
        Limits(min_gpus=64, max_gpus=8)
    assert Limits(budget_usd=2e6, max_time_s=86400).describe() == "budget $2M, at most 1 days"
