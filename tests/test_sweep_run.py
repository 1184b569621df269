"""Running sweeps: statuses, resume, retry, refusal of foreign folders, Ray, SIGKILL + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import STATUSES_SWEEP, session_pids

from vtrain_opt.cli import main
from vtrain_opt.studies.sweep import comparable, run_sweep
from vtrain_opt.studies.sweepfile import load_sweep
from vtrain_opt.studies.sweepstore import SweepStore

# 48 fast scenarios (about 60 ms each here) for the kill-and-resume test.
MANY = """\
name: many
product:
  model: [megatron-1.7b, megatron-3.6b, llama2-7b, megatron-7.5b]
  gpu: [a100-80gb, h100-sxm]
  max_gpus: [64, 128, 256]
  objective: [time, cost]
search:
  tokens: 100B
"""


def write(tmp_path: Path, text: str, name: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def run_cli(*args: str) -> tuple[int, dict]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["sweep", *args, "--json", "--no-plot"])
    return code, json.loads(out.getvalue()) if out.getvalue() else {}


def records(folder: Path) -> dict[str, dict]:
    files = sorted((folder / "scenarios").iterdir())
    assert all(f.suffix == ".json" and not f.name.startswith(".") for f in files), files
    return {f.stem: json.loads(f.read_text()) for f in files}


def test_statuses_resume_and_retry(tmp_path) -> None:
    path = write(tmp_path, STATUSES_SWEEP, "statuses.yaml")
    out = tmp_path / "out"
    code, doc = run_cli(str(path), "--workers", "0", "--out", str(out))
    assert code == 1  # failures are recorded, and the exit status says so
    assert doc["statuses"] == {"failed": 2, "ok": 1, "infeasible": 1}
    assert (doc["ran"], doc["skipped"]) == (4, 0)
    recs = records(out)
    assert len(recs) == 4
    failed = [r for r in recs.values() if r["status"] == "failed"]
    assert all("tp: 5 must divide the heads" in r["error"] for r in failed)
    infeasible = next(r for r in recs.values() if r["status"] == "infeasible")
    assert "budget" in infeasible["explain"]
    ok = next(r for r in recs.values() if r["status"] == "ok")
    assert ok["chosen"]["cost_usd"] <= 100_000 and ok["chosen"]["tp"] in (1, 2, 4)
    # the combined table: one row per scenario
    table = pd.read_parquet(out / "summary.parquet")
    assert sorted(table["id"]) == sorted(recs) and len(table) == 4
    assert pd.read_csv(out / "summary.csv")["status"].value_counts().to_dict() == doc["statuses"]
    # a re-run skips everything; --retry-failed runs the failed ones again
    code, doc = run_cli(str(path), "--workers", "0", "--out", str(out))
    assert (doc["ran"], doc["skipped"]) == (0, 4)
    code, doc = run_cli(str(path), "--workers", "0", "--out", str(out), "--retry-failed")
    assert (doc["ran"], doc["skipped"]) == (2, 2)
    assert {k: comparable(v) for k, v in records(out).items()} == {
        k: comparable(v) for k, v in recs.items()
    }


def test_summary_only_and_plot(tmp_path) -> None:
    path = write(tmp_path, STATUSES_SWEEP, "statuses.yaml")
    out = tmp_path / "out"
    code, _ = run_cli(str(path), "--summary", "--out", str(out))
    assert code == 2  # nothing run yet
    run_cli(str(path), "--workers", "0", "--out", str(out))
    (out / "summary.csv").unlink()
    assert main(["sweep", str(path), "--summary", "--out", str(out)]) == 1
    assert (out / "summary.csv").is_file()
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_a_folder_of_another_sweep_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    first = write(tmp_path, STATUSES_SWEEP, "first.yaml")
    run_cli(str(first), "--workers", "0", "--out", str(out))
    before = records(out)
    other = write(tmp_path, STATUSES_SWEEP.replace("tokens: 10B", "tokens: 20B"), "other.yaml")
    capsys.readouterr()
    assert main(["sweep", str(other), "--workers", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds the results of another sweep file" in err and "--out" in err
    assert len(err.strip().splitlines()) == 1
    assert records(out) == before
    # a folder that is not a sweep's is refused too
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert main(["sweep", str(first), "--workers", "0", "--out", str(tmp_path / "mine")]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


def test_a_running_sweep_locks_its_folder(tmp_path, capsys) -> None:
    path = write(tmp_path, STATUSES_SWEEP, "s.yaml")
    out = tmp_path / "out"
    with SweepStore(out, load_sweep(path)):
        assert main(["sweep", str(path), "--workers", "0", "--out", str(out)]) == 2
        assert "another sweep run is writing there" in capsys.readouterr().err
    assert main(["sweep", str(path), "--workers", "0", "--out", str(out), "--json"]) == 1


def test_ray_run_matches_in_process(tmp_path, ray_local) -> None:
    sweep = load_sweep(write(tmp_path, STATUSES_SWEEP, "statuses.yaml"))
    with SweepStore(tmp_path / "ray", sweep) as store:
        run = run_sweep(sweep, store, workers=2)
    assert (run.backend, run.ran, run.failed) == ("ray", 4, 2)
    with SweepStore(tmp_path / "here", sweep) as store:
        run_sweep(sweep, store, workers=0)
    on_ray, here = records(tmp_path / "ray"), records(tmp_path / "here")
    assert {k: comparable(v) for k, v in on_ray.items()} == {
        k: comparable(v) for k, v in here.items()
    }


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the killed processes")
def test_sigkill_mid_run_then_resume_loses_nothing(tmp_path) -> None:
    path = write(tmp_path, MANY, "many.yaml")
    out = tmp_path / "killed"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "vtrain_opt", "sweep", str(path), "--workers", "2"]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out), "--no-plot"],
        start_new_session=True,  # its own process group and session: Ray's processes too
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    folder = out / "scenarios"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if folder.is_dir() and len(list(folder.glob("*.json"))) >= 3:
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = len(list(folder.glob("*.json")))
    assert 3 <= at_kill < 48, "the kill must land mid-run"
    # the sweep's Ray processes die with it
    deadline = time.monotonic() + 30
    while session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = session_pids(proc.pid)
    for pid in left:  # processes this test started: never leave them behind
        os.kill(pid, signal.SIGKILL)
    assert left == []

    # resume (in this process) and compare with an uninterrupted run
    code, doc = run_cli(str(path), "--workers", "0", "--out", str(out))
    assert code == 0
    assert doc["skipped"] == at_kill and doc["ran"] == 48 - at_kill
    code, _ = run_cli(str(path), "--workers", "0", "--out", str(tmp_path / "whole"))
    resumed, whole = records(out), records(tmp_path / "whole")
    assert len(resumed) == 48 and sorted(resumed) == sorted(whole)
    assert {k: comparable(v) for k, v in resumed.items()} == {
        k: comparable(v) for k, v in whole.items()
    }
    table = pd.read_parquet(out / "summary.parquet")
    assert len(table) == 48 and table["id"].is_unique and (table["status"] == "ok").all()


def test_a_task_whose_worker_dies_is_recorded_as_failed(tmp_path, ray_local, monkeypatch) -> None:
    import vtrain_opt.studies.sweep as sweep_module

    def dying(scenario):  # a nested function travels to the worker by value
        os._exit(1)

    monkeypatch.setattr(sweep_module, "run_scenario", dying)
    sweep = load_sweep(write(tmp_path, STATUSES_SWEEP, "statuses.yaml"))
    with SweepStore(tmp_path / "out", sweep) as store:
        run = run_sweep(sweep, store, workers=2)
    recs = records(tmp_path / "out")
    assert (run.ran, run.failed, len(recs)) == (4, 4, 4)
    assert all(r["status"] == "failed" and "Ray task lost" in r["error"] for r in recs.values())
