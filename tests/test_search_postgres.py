"""Optuna studies in a real PostgreSQL server, and two `search` drivers on one study.

The tests start their own server: ``initdb`` into a temporary folder, ``pg_ctl start`` on a
free loopback port, stopped by its process id at the end. PostgreSQL refuses to run as
root, so under root the server runs as the unprivileged ``postgres`` user (Debian's
package creates it). Without the server binaries (``apt-get install postgresql``) or the
driver (``pip install -e ".[postgres]"``) the tests skip, saying which is missing.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import search_argv

optuna = pytest.importorskip("optuna")

import pandas as pd  # noqa: E402

from vtrain_opt.cli import main  # noqa: E402
from vtrain_opt.search import SearchSpace, search  # noqa: E402
from vtrain_opt.search.study_store import open_storage  # noqa: E402
from vtrain_opt.spec.model import get_model  # noqa: E402

USER, PASSWORD = "vtrain", "s3cret-pw"
TOKENS = 1e11
REPO = Path(__file__).resolve().parents[1]
SMALL = search_argv(
    max_gpus=64,
    global_batch="128,256",
    micro_batch="1,2,4",
    vpp="1,2",
    zero="0,1",
    strategy="optuna",
    objective="time",
)


# ---- a throwaway server ---------------------------------------------------------------------
def _pg_bin() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    dirs = glob.glob("/usr/lib/postgresql/*/bin") + glob.glob("/usr/local/pgsql/bin")
    dirs = [d for d in dirs if os.access(os.path.join(d, "pg_ctl"), os.X_OK)]
    dirs.sort(key=lambda d: [int(p) if p.isdigit() else 0 for p in Path(d).parent.name.split(".")])
    return Path(dirs[-1]) if dirs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    port: int
    datadir: Path

    def url(self, db: str = "postgres", user: str = USER, password: str = PASSWORD) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{db}"


@contextlib.contextmanager
def postgres_server() -> Iterator[Server]:
    """A PostgreSQL server in a temporary folder, password authentication on 127.0.0.1."""
    pytest.importorskip("psycopg", reason='the driver is missing: pip install -e ".[postgres]"')
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under "
            "/usr/lib/postgresql/*/bin: install the OS package (apt-get install postgresql)"
        )
    run_as: dict[str, object] = {}
    top = Path(tempfile.mkdtemp(prefix="vtrain-pg-"))  # short: the socket path has a limit
    if os.geteuid() == 0:  # initdb and postgres refuse root: run them as `postgres`
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(top)
            pytest.skip("running as root and no unprivileged 'postgres' user to run the server")
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        os.chown(top, pw.pw_uid, pw.pw_gid)
    datadir, log = top / "data", top / "server.log"
    pwfile = top / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        os.chown(pwfile, int(run_as["user"]), int(run_as["group"]))  # type: ignore[call-overload]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    env.pop("PGDATA", None)

    def pg(*args: str, **kw: object) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bindir / args[0]), *args[1:]],
            cwd=top,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **run_as,  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )

    try:
        done = pg(
            "initdb",
            "-D",
            str(datadir),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        assert done.returncode == 0, f"initdb failed: {done.stderr or done.stdout}"
        for _attempt in range(3):  # the port is free when picked; someone may take it first
            port = _free_port()
            opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {top} -c fsync=off"
            done = pg("pg_ctl", "-D", str(datadir), "-l", str(log), "-o", opts, "-w", "start")
            if done.returncode == 0:
                break
        assert done.returncode == 0, f"pg_ctl start failed: {log.read_text(errors='replace')}"
        yield Server(port, datadir)
    finally:
        _stop(datadir / "postmaster.pid")
        shutil.rmtree(top, ignore_errors=True)


def _stop(pidfile: Path) -> None:
    """Stop the server by its process id (from postmaster.pid): a fast shutdown, then a kill
    if it is still there after 10 s."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return  # never started
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)  # fast shutdown: ends the sessions, no recovery needed
    for _ in range(200):
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # exited but not reaped (pg_ctl's server is nobody's child here): gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with postgres_server() as s:
        yield s


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.create(
        get_model("llama2-7b"),
        ["a100-40gb"],
        max_gpus=64,
        global_batch=[128, 256],
        micro_batch=[1, 2, 4],
        vpp=[1, 2],
        zero=[0, 1],
    )


def _new_database(server: Server, name: str) -> str:
    """A fresh database (so a test also creates Optuna's tables); its plain postgresql:// URL."""
    import psycopg

    with psycopg.connect(
        host="127.0.0.1",
        port=server.port,
        user=USER,
        password=PASSWORD,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(f'create database "{name}"')
    return server.url(name)


def _study(url: str, name: str):
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _counts(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# ---- one driver ------------------------------------------------------------------------------
def test_study_lives_in_postgres_and_resumes(server, space):
    url = _new_database(server, "resume")  # plain postgresql://: read with psycopg
    first = search(space, TOKENS, strategy="optuna", objective="time", trials=16, storage=url)
    second = search(space, TOKENS, strategy="optuna", objective="time", trials=32, storage=url)
    assert first.study_name == second.study_name and second.trials == 32
    same = ["number", "state", "value0", "value1", "feasible", "key"]
    pd.testing.assert_frame_equal(second.history.head(16)[same], first.history[same])
    assert second.storage == f"postgresql://{USER}:***@127.0.0.1:{server.port}/resume"
    study = _study(url, second.study_name)
    assert _counts(study).get("COMPLETE", 0) + _counts(study).get("PRUNED", 0) == 32
    assert "RUNNING" not in _counts(study)


def test_drivers_opening_a_new_database_at_once(server):
    """Creating Optuna's tables races (PostgreSQL's catalog refuses the second CREATE TABLE):
    every driver but one retries, and all open the study store."""
    import threading

    url = _new_database(server, "race")
    got: list[object] = []

    def open_it() -> None:
        try:
            got.append(open_storage(url))
        except Exception as e:
            got.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(g, optuna.storages.RDBStorage) for g in got), got


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_dead_drivers_trials_are_asked_again(server, space, monkeypatch):
    import vtrain_opt.search.study_store as mod

    monkeypatch.setattr(mod, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(mod, "HEARTBEAT_GRACE_S", 1)
    url = _new_database(server, "stale")
    name = "stale-study"
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    dead = study.ask()  # a driver that asked a trial, beat once and died
    study._storage.record_heartbeat(dead._trial_id)
    dead.set_user_attr(mod.DRIVER_ATTR, "elsewhere:1")
    time.sleep(2.2)
    got = search(
        space,
        TOKENS,
        strategy="optuna",
        objective="time",
        trials=8,
        batch_size=4,
        storage=url,
        study_name=name,
    )
    assert got.trials == 8
    study = _study(url, name)
    assert study.trials[dead.number].state == optuna.trial.TrialState.FAIL
    counts = _counts(study)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 8 and "RUNNING" not in counts


def test_bad_urls_are_one_line(server, capsys, tmp_path):
    out = tmp_path / "run"
    base = [*SMALL, "--trials", "4", "--out", str(out)]
    wrong_pw = server.url(password="wrong-pw")
    nobody = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{_free_port()}/postgres"
    for url, why in (
        (wrong_pw, "password authentication failed"),
        (nobody, "cannot open the database"),
        ("nosuchdb://x/y", "unknown database scheme 'nosuchdb'"),
    ):
        code = main([*base, "--storage", url])
        _, err = capsys.readouterr()
        assert code == 2, err
        assert why in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err and "wrong-pw" not in err and PASSWORD not in err
        assert not out.exists()  # nothing written


# ---- two drivers on one study ----------------------------------------------------------------
def test_two_searches_share_one_study(server, tmp_path):
    url = _new_database(server, "shared")  # both create Optuna's tables at once
    trials, name = 48, "two-drivers"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vtrain_opt",
                *SMALL,
                "--storage",
                url,
                "--study-name",
                name,
                "--trials",
                str(trials),
                "--batch-size",
                "2",
                "--seed",
                str(seed),  # each driver its own seed: they propose different first plans
                "--workers",
                "0",
                "--out",
                str(tmp_path / f"d{seed}"),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for seed in (1, 2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    runs = [json.loads(out) for out, _ in outs]

    study = _study(url, name)
    counts = _counts(study)
    finished = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) == trials and "RUNNING" not in counts, counts  # none lost, no extra
    assert all(not t.values for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL")
    drivers = {t.user_attrs.get("vtrain_opt.driver") for t in finished}
    assert len(drivers) == 2, drivers  # both drivers told trials of the study

    plan_cols = ["gpu", "num_gpus", "tp", "pp", "dp", "micro_batch", "global_batch"]
    plan_cols += ["recompute", "sequence_parallel", "vpp", "zero", "dp_overlap"]
    plans = []
    for seed, run in zip((1, 2), runs, strict=True):
        assert run["trials"] == trials and run["study_name"] == name
        assert PASSWORD not in json.dumps(run)
        df = pd.read_parquet(tmp_path / f"d{seed}" / "plans.parquet")
        assert len(df) == run["evaluated"] and not df.duplicated(subset=plan_cols).any()
        best = json.loads((tmp_path / f"d{seed}" / "best.json").read_text())
        assert PASSWORD not in json.dumps(best)
        plans.append(df.sort_values(plan_cols).reset_index(drop=True))
    # each driver's results hold every trial of the study, its own and the other's
    pd.testing.assert_frame_equal(plans[0][plan_cols], plans[1][plan_cols])
    assert runs[0]["best_time"] == runs[1]["best_time"]
