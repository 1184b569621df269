"""Measured op tables: exact on grid points, log-space interpolation between them, the
analytical model (counted) outside, per-dtype tables, and clear errors for bad files.
No torch needed: the tables here are synthetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from op_spy import spy_on

from vtrain_opt.cli import main
from vtrain_opt.profile_tables import parse_tables
from vtrain_opt.profiles import Profile, load_profile
from vtrain_opt.sim.convention import sim_bytes_per_element
from vtrain_opt.sim.measured import MeasuredTables, coverage_summary
from vtrain_opt.sim.ops import OpModel
from vtrain_opt.spec.hardware import cluster_for_profile, get_cluster
from vtrain_opt.spec.setup import Setup

RNG = np.random.default_rng(7)
G = [64.0, 256.0, 1024.0, 4096.0]
NB = [1e4, 1e5, 1e6, 1e7]


def _tables(gemm_times: np.ndarray | None = None) -> dict:
    gemm = RNG.uniform(1e-5, 1e-2, size=(4, 4, 4)) if gemm_times is None else gemm_times
    return {
        "fp32": {
            "gemm": {
                "axes": ["m", "n", "k"],
                "grid": {"m": G, "n": G, "k": G},
                "time_s": gemm.tolist(),
            },
            "layernorm": {
                "axes": ["nbytes"],
                "grid": {"nbytes": NB},
                "time_s": [2e-6, 5e-6, None, 4e-4],  # one cell not measured
            },
            "all_reduce": {
                "axes": ["group", "nbytes"],
                "grid": {"group": [2.0, 4.0], "nbytes": NB},
                "time_s": [[1e-5, 2e-5, 1e-4, 1e-3], [2e-5, 4e-5, 2e-4, 2e-3]],
                "scope": "intra_node",
            },
        }
    }


def test_grid_points_return_the_measured_value_exactly():
    raw = _tables()
    mt = MeasuredTables(raw, "t")
    t = np.asarray(raw["fp32"]["gemm"]["time_s"])
    m, n, k = (a.ravel() for a in np.meshgrid(G, G, G, indexing="ij"))
    got = mt.override("gemm", np.zeros(m.size), dtype="fp32", m=m, n=n, k=k, batch=1)
    assert np.array_equal(got, t.ravel())
    nb = np.array([1e4, 1e5, 1e7])
    got = mt.override("layernorm", np.zeros(3), dtype="fp32", nbytes=nb, kernels=1)
    assert np.array_equal(got, [2e-6, 5e-6, 4e-4])
    ar = np.asarray(raw["fp32"]["all_reduce"]["time_s"])
    got = mt.override(
        "all_reduce", np.zeros(8), dtype="fp32", nbytes=np.tile(NB, 2),
        group=np.repeat([2, 4], 4), per_node=np.repeat([2, 4], 4),
    )  # fmt: skip
    assert np.array_equal(got, ar.ravel())


def test_log_space_interpolation_is_exact_for_power_laws_between_points():
    # t = c * m * n * k is a plane in log space: multilinear log interpolation reproduces it
    mm, nn, kk = np.meshgrid(G, G, G, indexing="ij")
    mt = MeasuredTables(_tables(3e-13 * mm * nn * kk), "t")
    m, n, k = (RNG.uniform(64, 4096, size=500) for _ in range(3))
    got = mt.override("gemm", np.zeros(500), dtype="fp32", m=m, n=n, k=k, batch=1)
    np.testing.assert_allclose(got, 3e-13 * m * n * k, rtol=1e-9)
    # and lies between its neighbours for arbitrary (non power-law) tables
    mt = MeasuredTables(_tables(), "t")
    table = mt.tables["fp32"]["gemm"].time_s
    got = mt.override("gemm", np.zeros(500), dtype="fp32", m=m, n=n, k=k, batch=1)
    assert np.all((got >= table.min()) & (got <= table.max()))


def test_batched_gemm_reads_the_table_as_batch_times_m():
    mt = MeasuredTables(_tables(), "t")
    a = mt.override("gemm", 0.0, dtype="fp32", m=64, n=256, k=1024, batch=16)
    b = mt.override("gemm", 0.0, dtype="fp32", m=1024, n=256, k=1024, batch=1)
    assert a == b


def test_outside_the_grid_keeps_the_analytical_time_and_counts_it():
    mt = MeasuredTables(_tables(), "t")
    analytical = np.array([1.0, 2.0, 3.0, 4.0])
    got = mt.override(
        "gemm", analytical, dtype="fp32",
        m=np.array([32.0, 64.0, 8192.0, 100.0]), n=256, k=np.array([256, 256, 256, 5000]), batch=1,
    )  # fmt: skip
    assert got[0] == 1.0 and got[2] == 3.0 and got[3] == 4.0  # m or k outside [64, 4096]
    assert got[1] == mt.tables["fp32"]["gemm"].time_s[0, 1, 1]
    # an unmeasured (null) cell and anything interpolated from it fall back too
    got = mt.override("layernorm", np.full(3, 9.0), dtype="fp32", nbytes=[1e5, 1e6, 5e6], kernels=1)
    assert got[0] == 5e-6 and got[1] == 9.0 and got[2] == 9.0
    cov = mt.coverage()
    assert cov["gemm"] == {"measured": 1, "outside the measured grid": 3}
    assert cov["layernorm"] == {"measured": 1, "outside the measured grid": 2}
    line = coverage_summary(cov)
    assert "2 of 7 op evaluations" in line and "gemm (3)" in line


def test_collectives_per_group_size_inside_one_node_only():
    mt = MeasuredTables(_tables(), "t")
    got = mt.override(
        "all_reduce", np.full(4, 7.0), dtype="fp32", nbytes=1e5,
        group=np.array([2, 3, 4, 1]), per_node=np.array([2, 3, 2, 1]),
    )  # fmt: skip
    assert got[0] == 2e-5  # measured
    assert got[1] == 7.0  # a group of 3 was not measured: no interpolation between sizes
    assert got[2] == 7.0  # spans two nodes: the tables are intra-node
    cov = mt.coverage()["all_reduce"]
    assert cov["measured"] == 1
    assert cov["outside the measured grid"] == 1
    assert cov["across nodes (tables are measured inside one node)"] == 1
    assert sum(cov.values()) == 3  # the group of one (free) is not a question


def test_tables_are_per_dtype_and_missing_ops_fall_back():
    mt = MeasuredTables(_tables(), "t")
    got = mt.override("gemm", np.array([5.0]), dtype="bf16", m=64, n=64, k=64, batch=1)
    assert got[0] == 5.0
    got = mt.override("softmax", np.array([6.0, 7.0]), dtype="fp32", nbytes=[1e5, 1e6], kernels=1)
    assert list(got) == [6.0, 7.0]
    cov = mt.coverage()
    assert cov["gemm"] == {"measured": 0, "no bf16 table": 1}
    assert cov["softmax"] == {"measured": 0, "not measured": 2}


def test_op_model_answers_from_the_tables_vectorized():
    raw = _tables()
    device = {
        "peak_flop_per_s": {"fp32": 1e11},
        "hbm_bytes": 2e10,
        "hbm_bytes_per_s": 2e10,
        "nvlink_bytes_per_s": 1e10,
        "num_sms": 2,
        "devices_per_node": 4,
    }
    base = load_profile("a100-80gb")
    prof = Profile(
        name="synthetic", gpu="cpu-test", params=base.params, kind="measured",
        tables=raw, device=device,
    )  # fmt: skip
    cluster = cluster_for_profile(prof)
    assert cluster.gpu.name == "cpu-test" and cluster.gpus_per_node == 4
    ops = OpModel(prof, cluster, Setup(dtype="fp32"))
    m = np.array([64.0, 256.0, 1024.0, 8192.0, 64.0])
    got = ops.gemm_s(m, 256, 1024)
    assert got.shape == (5,)
    t = np.asarray(raw["fp32"]["gemm"]["time_s"])
    assert list(got[:3]) == [t[0, 1, 2], t[1, 1, 2], t[2, 1, 2]]
    bare = OpModel(base, cluster, Setup(dtype="fp32"))
    assert got[3] == bare.gemm_s(8192, 256, 1024)  # outside: the analytical model
    # the catalog GPUs keep their catalog cluster
    assert cluster_for_profile(base) == get_cluster("a100-80gb")


def test_parse_tables_names_the_bad_key():
    def err(mutate) -> str:
        raw = json.loads(json.dumps(_tables()))
        mutate(raw["fp32"])
        with pytest.raises(ValueError) as e:
            parse_tables(raw, "profile file 'x.json'")
        return str(e.value)

    assert "tables.fp32.gemm': missing key 'time_s'" in err(lambda t: t["gemm"].pop("time_s"))
    assert "must hold 4x4x4 values" in err(lambda t: t["gemm"]["time_s"].pop())
    assert "grid.nbytes': sizes must be strictly increasing" in err(
        lambda t: t["layernorm"]["grid"].update(nbytes=[1e4, 1e4, 1e6, 1e7])
    )
    assert "times must be positive" in err(lambda t: t["layernorm"].update(time_s=[1, -1, 1, 1]))
    assert "is not a number or null" in err(lambda t: t["layernorm"].update(time_s=[1, "x", 1, 1]))
    assert "unknown op" in err(lambda t: t.update(matmul=t["gemm"]))
    assert "axes' must be ['m', 'n', 'k']" in err(lambda t: t["gemm"].update(axes=["m", "k", "n"]))
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        parse_tables({"int8": {}}, "p")


def _write_profile(path: Path, tables: dict, device: dict | None = None) -> Path:
    data = load_profile("a100-80gb").to_json_dict()
    data.update(name=path.stem, gpu="cpu-test", kind="measured", tables=tables)
    data["device"] = device or {
        "peak_flop_per_s": {"fp32": 1e11},
        "hbm_bytes": 2e10,
        "hbm_bytes_per_s": 2e10,
        "nvlink_bytes_per_s": 1e10,
        "num_sms": 2,
    }
    path.write_text(json.dumps(data))
    return path


def test_simulate_accepts_a_measured_profile_of_a_device_outside_the_catalog(tmp_path, capsys):
    prof = _write_profile(tmp_path / "synthetic.json", _tables())
    argv = ["simulate", "--profile", str(prof), "--model", "gpt3-175b", "--tp", "8"]
    assert main([*argv, "--global-batch", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpu"] == "cpu-test" and out["dtype"] == "fp32"
    assert out["iteration_time_s"] > 0
    assert "measured_tables" in out and "summary" in out["measured_tables"]
    assert main([*argv, "--global-batch", "8"]) == 0
    assert "op evaluations from the measured tables" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["tables"]["fp32"]["gemm"].pop("grid"),
            "tables.fp32.gemm': missing key 'grid'",
        ),
        (
            lambda d: d["device"].pop("hbm_bytes_per_s"),
            "key 'device': missing key 'hbm_bytes_per_s'",
        ),
        (lambda d: d["device"].update(num_sms="two"), "'num_sms' must be a number"),
    ],
)
def test_corrupt_profiles_fail_with_one_line_naming_the_key(tmp_path, capsys, mutate, message):
    path = _write_profile(tmp_path / "bad.json", _tables())
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    assert main(["simulate", "--profile", str(path), "--model", "gpt3-175b"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_truncated_profile_fails_with_one_line(tmp_path, capsys):
    path = _write_profile(tmp_path / "cut.json", _tables())
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    assert main(["simulate", "--profile", str(path), "--model", "gpt3-175b"]) == 2
    err = capsys.readouterr().err
    assert "corrupt or truncated JSON" in err and len(err.strip().splitlines()) == 1


def test_memory_tables_follow_the_simulators_byte_count():
    """A table written when the simulator counted other bytes per element is re-keyed: the
    same measured shape answers the same query."""
    factor = sim_bytes_per_element("fp32")["layernorm"]
    elements = [1e3, 1e4, 1e5]
    raw = _tables()
    raw["fp32"]["layernorm"] = {
        "axes": ["nbytes"],
        "grid": {"nbytes": [e * factor / 2 for e in elements]},  # written at half the count
        "time_s": [1e-6, 3e-6, 2e-5],
        "shape": {"elements": elements, "bytes_per_element": factor / 2},
    }
    mt = MeasuredTables(raw, "t")
    got = mt.override(
        "layernorm", np.zeros(3), dtype="fp32", nbytes=np.array(elements) * factor, kernels=1
    )
    assert list(got) == [1e-6, 3e-6, 2e-5]


def test_byte_count_matches_what_the_layer_cost_model_asks():
    """The factors are read off sim/costs.py: a real GPT layer asks for layernorm at
    factor x tokens x hidden."""
    from vtrain_opt.sim.costs import layer_costs
    from vtrain_opt.spec.model import get_model

    base = load_profile("a100-80gb")
    ops = OpModel(base, get_cluster("a100-80gb"), Setup(dtype="bf16"))
    asked = spy_on(ops)
    model = get_model("gpt3-175b")
    one = np.array([1])
    layer_costs(model, ops, one, one, np.array([False]), np.array([0]))
    tokens_hidden = model.seq_length * model.hidden_size
    factors = sim_bytes_per_element("bf16")
    assert ("layernorm", factors["layernorm"] * tokens_hidden) in asked
    assert ("bias_gelu", factors["bias_gelu"] * model.seq_length * model.ffn) in asked
