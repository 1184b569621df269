"""Private Ray runtimes are private; a cluster is joined only on purpose.

A crashed or killed Ray head leaves ``ray_current_cluster`` behind in Ray's temporary
folder; a private runtime must not try to join it. ``RAY_ADDRESS`` in the environment
counts as ``--ray-address``: a dead one is one clear line and exit status 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import search_argv, session_pids

from vtrain_opt.cli import main
from vtrain_opt.search.ray_backend import cluster_address

pytestmark = pytest.mark.ray

SEARCH = search_argv(global_batch="64,128", micro_batch="1,2")
CHINCHILLA = [
    "chinchilla",
    "--num-gpus",
    "64",
    "--days",
    "7",
    "--min-params",
    "0.3B",
    "--max-params",
    "20B",
    "--num-sizes",
    "4",
    "--no-plots",
]


def _dead_address() -> str:
    """127.0.0.1:PORT where nothing listens (a port the system just handed out, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def _run_cli(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``python -m vtrain_opt ARGS`` in its own session; kill what it leaves behind."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vtrain_opt", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its Ray processes join its session: found and ended below
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if Path("/proc").is_dir():
            deadline = time.monotonic() + 20
            while session_pids(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            for pid in session_pids(proc.pid):  # started by this test: never left behind
                os.kill(pid, signal.SIGKILL)
    return proc.returncode, out, err


def test_a_stale_current_cluster_file_alone_still_gets_a_private_runtime(tmp_path) -> None:
    # Ray reads $RAY_TMPDIR/ray/ray_current_cluster (/tmp/ray/... by default): a private
    # temporary folder stands for /tmp here, so that no other Ray user on the machine is
    # disturbed (and its unix sockets stay short: no pytest tmp_path)
    ray_tmp = tempfile.mkdtemp(prefix="vtr", dir="/tmp")
    try:
        (Path(ray_tmp) / "ray").mkdir()
        (Path(ray_tmp) / "ray" / "ray_current_cluster").write_text(_dead_address() + "\n")
        env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        code, out, err = _run_cli([*SEARCH, "--workers", "2", "--json"], env)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["backend"] == "ray" and doc["workers"] == 2
        code, out, err = _run_cli(
            [*CHINCHILLA, "--workers", "2", "--out", str(tmp_path / "c"), "--json"], env
        )
        assert code == 0, err
        doc = json.loads(out)
        assert doc["backend"] == "ray" and doc["workers"] == 2
        assert "num_cpus" not in err
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize(
    "argv",
    [[*SEARCH, "--workers", "2"], [*SEARCH], [*CHINCHILLA, "--workers", "2"], [*CHINCHILLA]],
    ids=["search-workers-2", "search", "chinchilla-workers-2", "chinchilla"],
)
def test_a_dead_ray_address_in_the_environment_is_one_clear_line(
    argv, monkeypatch, capsys, tmp_path
) -> None:
    address = _dead_address()
    monkeypatch.setenv("RAY_ADDRESS", address)
    start = time.perf_counter()
    code = main([*argv, "--out", str(tmp_path / "out"), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"RAY_ADDRESS {address!r}: cannot reach the Ray cluster" in lines[0]
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "out" / "study.json").exists()


def test_the_flag_wins_over_the_environment(monkeypatch, capsys, tmp_path) -> None:
    flag, env = _dead_address(), "127.0.0.1:1"
    monkeypatch.setenv("RAY_ADDRESS", env)
    code = main([*SEARCH, "--ray-address", flag, "--out", str(tmp_path), "--json"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--ray-address {flag!r}: cannot reach the Ray cluster" in err and env not in err


def test_cluster_address(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None
    assert cluster_address("10.0.0.1:6379") == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert cluster_address(None) == "10.0.0.2:6379"
    assert cluster_address("10.0.0.1:6379") == "10.0.0.1:6379"
    for local in ("local", " ", ""):
        monkeypatch.setenv("RAY_ADDRESS", local)
        assert cluster_address(None) is None
