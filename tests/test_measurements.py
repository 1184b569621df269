"""Reading measurement CSVs: exact headers, BOM, optional column, and every bad-input case."""

import pytest

from vtrain_opt.cli import main
from vtrain_opt.measurements import COLUMNS, read_measurements

HEADER = ",".join(COLUMNS)
GOOD = ["8,16,2,1024,16,12,1024,2,2,2,123.4", "4,8,1,2048,16,24,1024,1,4,1,99.5"]


def write(tmp_path, lines, name="m.csv", bom=True):
    path = tmp_path / name
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_rows_with_bom_and_optional_parameters_column(tmp_path):
    m = read_measurements([write(tmp_path, [HEADER, *GOOD])])
    assert len(m.rows) == 2 and not m.skipped
    assert m.rows["tp"].tolist() == [2, 1]
    assert m.measured_s.tolist() == pytest.approx([0.1234, 0.0995])
    with_params = write(
        tmp_path, ["Parameters (billion)," + HEADER, "0.3," + GOOD[0]], "p.csv", bom=False
    )
    assert read_measurements([with_params]).rows["params_billion"].tolist() == [0.3]


def test_missing_and_misspelled_columns_are_named(tmp_path):
    header = HEADER.replace("micro batch", "micro-batch").replace(",# layers", "")
    with pytest.raises(ValueError) as e:
        read_measurements([write(tmp_path, [header, "1"])])
    msg = str(e.value)
    assert "'micro batch' (found 'micro-batch'?)" in msg and "'# layers'" in msg


def test_non_numeric_cell_names_row_and_column(tmp_path):
    bad = GOOD[1].replace("2048", "2k")
    with pytest.raises(ValueError, match=r"row 2, column 'hidden size': '2k' is not a number"):
        read_measurements([write(tmp_path, [HEADER, GOOD[0], bad])])


def test_empty_and_header_only_files(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_measurements([empty])
    with pytest.raises(ValueError, match="header but no rows"):
        read_measurements([write(tmp_path, [HEADER], "h.csv")])
    with pytest.raises(ValueError, match="does not exist"):
        read_measurements([tmp_path / "nope.csv"])


def test_rule_breaking_rows_are_skipped_and_counted(tmp_path):
    rows = [
        HEADER,
        *GOOD,
        "8,16,2,1024,16,12,1024,2,2,4,50",  # 2 x 2 x 4 = 16 GPUs, not 8
        "8,16,2,1024,16,13,1024,1,4,2,50",  # pp 2 does not divide 13 layers
        "8,10,4,1024,16,12,1024,1,8,1,50",
    ]  # 10 not a multiple of 8 x 4
    m = read_measurements([write(tmp_path, rows)])
    assert len(m.rows) == 2
    assert [(s.row, s.reason) for s in m.skipped] == [
        (3, "# GPUs != tp x pp x dp"),
        (4, "pp does not divide the layers"),
        (5, "global batch is not a multiple of dp x micro batch"),
    ]
    with pytest.raises(ValueError, match="no usable measurement rows"):
        read_measurements([write(tmp_path, [HEADER, rows[3]], "only_bad.csv")])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([HEADER.replace("tensor parallelism", "tp")], "missing column(s) 'tensor parallelism'"),
        ([HEADER, GOOD[0].replace("123.4", "fast")], "column 'iteration time (ms)'"),
        ([], "the file is empty"),
    ],
)
def test_cli_bad_input_exit_2(tmp_path, capsys, lines, message):
    path = write(tmp_path, lines, bom=False) if lines else tmp_path / "empty.csv"
    if not lines:
        path.write_text("")
    for command in ("validate", "calibrate"):
        argv = [command, "--measurements", str(path)]
        if command == "calibrate":
            argv += ["--out", str(tmp_path / "p.json"), "--folds", "0"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "p.json").exists()


def test_validate_reports_skipped_rows(tmp_path, capsys):
    import json

    rows = [HEADER, *GOOD, "8,16,2,1024,16,12,1024,2,2,4,50"]
    assert main(["validate", "--measurements", str(write(tmp_path, rows)), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_rows"] == 2 and d["n_skipped"] == 1
    assert d["skipped"][0] == {
        "file": str(tmp_path / "m.csv"),
        "row": 3,
        "reason": "# GPUs != tp x pp x dp",
    }


def test_validate_by_combination_of_columns(tmp_path, capsys):
    import json

    rows = [HEADER, *GOOD, "8,32,2,1024,16,12,1024,2,2,2,240.0", "4,8,1,2048,16,24,1024,1,4,1,80.0"]
    path = write(tmp_path, rows)
    assert main(["validate", "--measurements", str(path), "--by", "tp,micro_batch", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    groups = d["by"]["groups"]
    assert d["by"]["keys"] == ["tp", "micro_batch"]
    assert sorted((g["tp"], g["micro_batch"], g["rows"]) for g in groups) == [(1, 1, 2), (2, 2, 2)]
    by_tp = {g["tp"]: g for g in groups}
    tp1 = [r for r in d["rows"] if r["tp"] == 1]
    ratios = [r["predicted_s"] / r["measured_s"] for r in tp1]
    assert by_tp[1]["mean_ratio"] == pytest.approx(sum(ratios) / 2)
    assert by_tp[1]["ratio_std"] == pytest.approx(abs(ratios[0] - ratios[1]) / 2**0.5)
    # the shares of the combinations add up to the file's MAPE
    assert sum(g["share_pct"] for g in groups) == pytest.approx(d["mape_pct"])
    assert main(["validate", "--measurements", str(path), "--by", "tp,hidden_size"]) == 0
    assert "By tp, hidden_size" in capsys.readouterr().out


def test_validate_by_unknown_column_is_one_line_exit_2(tmp_path, capsys):
    path = write(tmp_path, [HEADER, *GOOD])
    assert main(["validate", "--measurements", str(path), "--by", "tp,hidden"]) == 2
    err = capsys.readouterr().err.strip()
    assert "hidden is not a column to group by" in err and "hidden_size" in err
    assert "\n" not in err and "Traceback" not in err


def test_validate_names_runs_the_memory_model_puts_over_capacity(tmp_path, capsys):
    import json

    # a measured run of a GPT-3-sized model on one node: it cannot have fit, so the memory
    # model (which says so) is flagged against the "measurement"; the small run fits
    big = "8,8,1,12288,96,96,2048,8,1,1,60000.0"
    path = write(tmp_path, [HEADER, GOOD[0], big])
    assert main(["validate", "--measurements", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_over_memory"] == 1
    over = d["over_memory"][0]
    assert over["row"] == 2 and over["memory_per_gpu_bytes"] > over["memory_capacity_bytes"]
    by_row = {r["row"]: r for r in d["rows"]}
    assert by_row[1]["memory_per_gpu_bytes"] < over["memory_capacity_bytes"]
    assert main(["validate", "--measurements", str(path)]) == 0
    out = capsys.readouterr().out
    assert "memory: 1 measured run(s) fit in reality but the memory model puts them" in out
    assert "m.csv:2" in out
    assert main(["validate", "--measurements", str(write(tmp_path, [HEADER, *GOOD]))]) == 0
    assert "memory: every measured run fits the memory model too" in capsys.readouterr().out
