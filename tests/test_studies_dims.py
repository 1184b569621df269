"""Issue 15 item 6: sweep scenarios and the compute-optimal study take the dense dimensions
of today's plans (a dtype list compared per plan, the pipeline split) as search does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vtrain_opt.cli import main
from vtrain_opt.studies.sweep import build_search, run_scenario
from vtrain_opt.studies.sweepfile import SweepFileError, load_sweep

SWEEP = """\
name: dims
product:
  dtype: [bf16, fp8, [fp8, bf16]]
search:
  model: llama3-405b
  gpu: h100-sxm
  tokens: 1T
  min_gpus: 1024
  max_gpus: 2048
  global_batch: 1024
  tp: 8
  pp: [8, 9, 16]
  micro_batch: 1
  zero: 1
  recompute: [none, full]
  stage_layers: auto
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_sweep_scenarios_take_a_dtype_list_and_the_split(tmp_path):
    sweep = load_sweep(_write(tmp_path, SWEEP))
    by_dtype = {json.dumps(s.inputs["dtype"]): s for s in sweep.scenarios}
    assert set(by_dtype) == {'"bf16"', '"fp8"', '["bf16", "fp8"]'}  # the list in DTYPES order
    both = by_dtype['["bf16", "fp8"]']
    space, _, _ = build_search(both.inputs, both.model_spec)
    assert space.dtypes == ("bf16", "fp8") and space.stage_layers == "auto"
    with_cp = load_sweep(_write(tmp_path, SWEEP.replace("  tp: 8\n", "  tp: 8\n  cp: [2, 1]\n")))
    first = with_cp.scenarios[0]
    assert build_search(first.inputs, first.model_spec)[0].cp == (1, 2)
    records = {k: run_scenario(s) for k, s in by_dtype.items()}
    assert all(r["status"] == "ok" for r in records.values()), records
    days = {k: r["chosen"]["training_time_s"] for k, r in records.items()}
    assert days['["bf16", "fp8"]'] == min(days['"bf16"'], days['"fp8"'])
    chosen = records['["bf16", "fp8"]']["chosen"]
    assert chosen["dtype"] == "fp8"
    assert (chosen["pp"], chosen["first_stage_layers"], chosen["last_stage_layers"]) == (16, 7, 7)


def test_sweep_split_errors(tmp_path):
    bad = _write(tmp_path, SWEEP.replace("stage_layers: auto", "stage_layers: sometimes"))
    with pytest.raises(SweepFileError) as e:
        load_sweep(bad)
    assert str(e.value).startswith(f"{bad}:16: search.stage_layers: 'sometimes' is not even")
    # [5, 5] parses, but leaves 116 layers for 14 (pp 16) or 6 (pp 8) middle stages: the
    # scenario is recorded failed with the space's one line, the sweep goes on
    odd = load_sweep(_write(tmp_path, SWEEP.replace("stage_layers: auto", "stage_layers: [5, 5]")))
    record = run_scenario(odd.scenarios[0])
    assert record["status"] == "failed" and "stage_layers 5,5" in record["error"], record


CHIN = [
    "chinchilla", "--gpu", "h100-sxm", "--num-gpus", "64", "--days", "7",
    "--min-params", "1B", "--max-params", "20B", "--num-sizes", "4",
    "--workers", "0", "--no-plots", "--json",
]  # fmt: skip


def test_chinchilla_compares_dtypes_per_plan(tmp_path, capsys):
    docs = {}
    for dtype in ("bf16", "fp8", "bf16,fp8"):
        assert main([*CHIN, "--dtype", dtype, "--out", str(tmp_path / dtype)]) == 0
        docs[dtype] = json.loads(capsys.readouterr().out)
    loss = {k: d["optimal"]["loss"] for k, d in docs.items()}
    assert loss["bf16,fp8"] == pytest.approx(min(loss["bf16"], loss["fp8"]), rel=1e-12)
    assert loss["fp8"] < loss["bf16"]  # fp8 trains more tokens in the same week
    rows = [c for c in docs["bf16,fp8"]["candidates"] if c["status"] == "ok"]
    assert rows and {c["dtype"] for c in rows} == {"fp8"}


def test_chinchilla_split_and_bad_dtype(capsys, tmp_path):
    from vtrain_opt.cli import build_parser
    from vtrain_opt.commands.chinchilla import config_from

    argv = [*CHIN, "--stage-layers", "auto", "--dtype", "bf16,fp8", "--cp", "2,1"]
    config = config_from(build_parser().parse_args(argv))
    assert config.stage_layers == "auto" and config.dtypes == ("bf16", "fp8")
    dims = {"dtypes": ("bf16", "fp8"), "stage_layers": "auto", "cp": (1, 2)}
    assert config.space_dims() == dims
    bad = [*CHIN[:2], "a100-80gb", *CHIN[3:], "--dtype", "bf16,fp8", "--out", str(tmp_path)]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert "a100-80gb has no fp8 peak" in err and len(err.splitlines()) == 1
    assert main([*CHIN, "--stage-layers", "sometimes", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "stage_layers" in err and len(err.splitlines()) == 1
    assert main([*CHIN, "--cp", "1,3", "--out", str(tmp_path)]) == 2  # 2*3 does not split 2048
    err = capsys.readouterr().err.strip()
    assert "cp: 3" in err and len(err.splitlines()) == 1
