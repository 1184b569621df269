"""Sweep file parsing: the product, stable ids, and errors that name file, line and key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vtrain_opt.cli import main
from vtrain_opt.resources import data_dir
from vtrain_opt.studies.sweepfile import SweepFileError, load_sweep

SWEEPS = data_dir("search_spaces") / "sweeps"


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASIC = """\
name: basic
product:
  model: [llama2-7b, gpt3-175b]
  gpu: [a100-80gb, h100-sxm, h200]
  tokens: [300B, 1T]
search:
  max_gpus: 512
  objective: cost
"""


def test_shipped_sweeps_parse() -> None:
    comparison = load_sweep(SWEEPS / "gpu-comparison.yaml")
    assert len(comparison) == 2 * 4 * 3 * 2
    gpus = {s.inputs["gpu"] for s in comparison.scenarios}
    assert gpus == {"a100-80gb", "h100-sxm", "h200", "b200"}
    assert {s.inputs["model"] for s in comparison.scenarios} == {"llama3-70b", "llama3-405b"}
    scaling = load_sweep(SWEEPS / "gpt3-scaling.yaml")
    assert len(scaling) == 11 * 2 * 2
    assert {s.inputs["model"] for s in scaling.scenarios} == {"gpt3-175b"}


def test_product_values_and_defaults(tmp_path) -> None:
    sweep = load_sweep(write(tmp_path, BASIC))
    assert sweep.name == "basic"
    assert len(sweep) == 2 * 3 * 2
    assert sweep.axes == ("model", "gpu", "tokens")
    first = sweep.scenarios[0].inputs
    assert first == {
        "max_gpus": 512,
        "objective": "cost",
        "model": "llama2-7b",
        "gpu": "a100-80gb",
        "tokens": 300e9,
    }
    assert len({s.id for s in sweep.scenarios}) == len(sweep)
    combos = {(s.inputs["model"], s.inputs["gpu"], s.inputs["tokens"]) for s in sweep.scenarios}
    assert len(combos) == len(sweep)


def test_ids_are_stable_across_order_spelling_and_location(tmp_path) -> None:
    a = load_sweep(write(tmp_path, BASIC))
    reordered = """\
search:
  objective: cost
  max_gpus: 512
product:
  tokens: [3e11, 1000B]
  gpu: [h200, a100-80gb, h100-sxm]
  model: [gpt3-175b, llama2-7b]
"""
    (tmp_path / "elsewhere").mkdir()
    b = load_sweep(write(tmp_path / "elsewhere", reordered, "other.yaml"))
    assert {s.id for s in a.scenarios} == {s.id for s in b.scenarios}
    assert a.fingerprint == b.fingerprint
    c = load_sweep(write(tmp_path, BASIC.replace("max_gpus: 512", "max_gpus: 1024"), "c.yaml"))
    assert not ({s.id for s in a.scenarios} & {s.id for s in c.scenarios})
    assert c.fingerprint != a.fingerprint


def test_list_valued_options_and_model_files(tmp_path) -> None:
    (tmp_path / "tiny.yaml").write_text(
        "family: gpt\nnum_layers: 4\nhidden_size: 512\nnum_attention_heads: 8\n"
        "vocab_size: 1000\nseq_length: 512\nglobal_batch: 64\n"
    )
    sweep = load_sweep(
        write(
            tmp_path,
            """\
product:
  tp: [[1, 2], [4]]
  gpu: [[a100-80gb, h100-sxm], b200]
  budget: [$5k, 2000 gpu-h]
search:
  model: tiny.yaml
  tokens: 1B
  recompute: [full, none]
  max_days: 2w
""",
        )
    )
    assert len(sweep) == 2 * 2 * 2
    s = sweep.scenarios[0]
    assert s.inputs["tp"] == [1, 2]
    assert s.inputs["gpu"] == ["a100-80gb", "h100-sxm"]
    assert s.inputs["budget"] == {"usd": 5000.0}
    assert s.inputs["recompute"] == ["none", "full"]
    assert math.isclose(s.inputs["max_days"], 14.0)
    assert s.inputs["model"] == "tiny"
    assert s.model_spec["hidden_size"] == 512
    assert {str(x.inputs["budget"]) for x in sweep.scenarios} == {
        "{'usd': 5000.0}",
        "{'gpu_hours': 2000.0}",
    }


def test_nvlink_domain_key(tmp_path) -> None:
    from vtrain_opt.studies.sweep import build_search

    sweep = load_sweep(
        write(
            tmp_path,
            "product:\n  model: [gpt3-175b]\n  gpu: [h100-sxm]\n  tokens: [1T]\n"
            "  nvlink_domain: [8, 16]\nsearch:\n  max_gpus: 64\n",
        )
    )
    assert [sc.inputs["nvlink_domain"] for sc in sweep.scenarios] == [8, 16]
    assert len({sc.id for sc in sweep.scenarios}) == 2
    domains = [
        build_search(sc.inputs, sc.model_spec)[0].gpus[0].cluster.domain_gpus
        for sc in sweep.scenarios
    ]
    assert domains == [8, 16]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        # unknown key in the product, on line 3
        ("product:\n  model: [gpt3-175b]\n  modle: [x]\n", ":3: product.modle: unknown key"),
        # empty product list, on line 4
        (
            "product:\n  model: [gpt3-175b]\n  gpu: [a100-80gb]\n  tokens: []\n",
            ":4: product.tokens: the list is empty",
        ),
        ("name: x\nproducts:\n  model: [a]\n", ":2: products: unknown key"),
        ("name: x\n", ":1: product: give a mapping"),
        (
            "product:\n  model: [gpt3-175b]\n  gpu: [a100-80gb]\n  tokens:\n    - 1T\n    - 2X\n",
            ":6: product.tokens: '2X' is not a count",
        ),
        (
            "product:\n  model: [gpt3-175b]\n  gpu: [a100-80gb, h300]\n  tokens: [1T]\n",
            ":3: product.gpu: unknown GPU 'h300'",
        ),
        (
            "product:\n  model: [gpt3-175b]\n  gpu: [a100-80gb]\n  tokens: [1T, 1000B]\n",
            ":4: product.tokens: '1000B' is the same value as item 1",
        ),
        (
            "product:\n  model: [gpt3-175b]\n  gpu: [a100-80gb]\n",
            ":1: product: missing key 'tokens'",
        ),
        (
            "product:\n  model: [gpt3-175b]\n  gpu: [a100-80gb]\n  tokens: [1T]\n"
            "search:\n  tokens: 2T\n",
            ":6: search.tokens: also in product (line 4)",
        ),
        (
            "product:\n  model: [gpt3-175b]\n  model: [llama2-7b]\n",
            ":3: product.model: listed twice (first on line 2)",
        ),
        (
            "product:\n  model: [gpt3-175b]\n  gpu: [a100-80gb]\n  tokens: [1T]\n"
            "search:\n  objective: fastest\n",
            ":6: search.objective: 'fastest' is not one of time, cost, pareto",
        ),
        (
            "product:\n  model: [gpt-9]\n  gpu: [a100-80gb]\n  tokens: [1T]\n",
            ":2: product.model: unknown model 'gpt-9'",
        ),
        ("product: [\n", ": not valid YAML"),
        (
            "product:\n  model: [gpt3-175b]\n  gpu: [a100-80gb]\n  tokens: [1T]\n"
            "search:\n  nvlink_domain: 0\n",
            ":6: search.nvlink_domain:",
        ),
    ],
)
def test_mistakes_name_file_line_and_key(tmp_path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SweepFileError) as err:
        load_sweep(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert where in message, message


def test_cli_reports_a_bad_sweep_file_in_one_line(tmp_path, capsys) -> None:
    path = write(tmp_path, "product:\n  model: [gpt3-175b]\n  gpu: [a100-80gb]\n  tokens: []\n")
    code = main(["sweep", str(path), "--workers", "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr()
    assert code == 2 and err.out == ""
    assert err.err.strip().endswith(
        "product.tokens: the list is empty, so the sweep has no scenario"
    )
    assert f"{path}:4:" in err.err and len(err.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_dry_run_counts(tmp_path, capsys) -> None:
    import json

    code = main(
        ["sweep", str(write(tmp_path, BASIC)), "--dry-run", "--json", "--out", str(tmp_path / "o")]
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (doc["total"], doc["done"], doc["todo"]) == (12, 0, 12)
    assert not (tmp_path / "o").exists()
