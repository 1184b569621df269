"""Where an Optuna study lives, and what keeps it whole while several drivers share it.

A journal file (``--storage study.journal``) takes one search at a time: an exclusive
lock beside it, held for the run, and a record torn by a kill is dropped before the next
append. An RDB URL (``sqlite:///f.db``, ``postgresql://...``) takes several drivers at
once: tables created by drivers racing on a new database are retried, each driver records
a heartbeat for the trials it holds, the running trials of a driver that died are failed
once their heartbeat is older than the grace period, and trials asked beyond the study's
target in a race are failed unevaluated. A URL's password is never shown.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# RDB studies: a driver records a heartbeat for each trial it holds every
# HEARTBEAT_INTERVAL_S; another driver fails a running trial whose heartbeat is older than
# HEARTBEAT_GRACE_S (its driver died) and asks it again.
HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_GRACE_S = 60
# Seconds to connect to a PostgreSQL server before giving up (unless the URL sets it).
CONNECT_TIMEOUT_S = 10
DRIVER_ATTR = "vtrain_opt.driver"  # trial user attribute: host:pid of the driver that asked it


def is_url(storage: str | None) -> bool:
    return storage is not None and "://" in storage


def redact(text: str) -> str:
    """``text`` with the password of any URL in it shown as ***."""
    return re.sub(r"(://[^/@\s:]*:)[^@/\s]+@", r"\1***@", text)


def storage_url(storage: str) -> str:
    """The SQLAlchemy URL of ``--storage``: a plain ``postgresql://`` (or ``postgres://``)
    URL is read with psycopg 3, the driver of the ``[postgres]`` extra."""
    scheme, _, rest = storage.partition("://")
    if scheme.lower() in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return storage


def open_storage(storage: str | None) -> Any:
    """None: in memory. An URL (sqlite:///f.db, postgresql://...): RDB. Else a journal file."""
    if storage is None:
        return None
    if is_url(storage):
        return _open_rdb(storage)
    path = Path(storage)
    if path.is_dir():
        raise ValueError(f"--storage {storage!r} is a folder; give a journal file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(path)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


def _open_rdb(storage: str) -> Any:
    """An RDB storage with heartbeats; any failure (unknown scheme, missing driver, server
    unreachable, login refused) is one ValueError line, with the URL's password hidden."""
    import optuna
    import sqlalchemy

    url, shown = storage_url(storage), redact(storage)
    try:
        parsed = sqlalchemy.engine.make_url(url)
        parsed.get_dialect()
    except Exception:  # not an URL, or a scheme SQLAlchemy does not know
        scheme = storage.partition("://")[0]
        raise ValueError(
            f"--storage {shown!r}: unknown database scheme {scheme!r}; give a journal file, "
            "sqlite:///FILE or postgresql://USER@HOST[:PORT]/DB"
        ) from None
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}  # a night-long run outlives idle links
    if parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() == "psycopg" and importlib.util.find_spec("psycopg") is None:
            raise ValueError(
                f"--storage {shown!r}: PostgreSQL needs the psycopg driver: "
                "pip install 'vtrain_opt[postgres]'"
            )
        if "connect_timeout" not in parsed.query:
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    attempts = 5
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=HEARTBEAT_GRACE_S,
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # drivers creating the tables of a new database at once: all but one collide
            if attempt + 1 < attempts:
                time.sleep(0.2 * (attempt + 1))
                continue
            error: Exception = e
        except Exception as e:  # missing driver, unreachable server, login refused
            error = e
            break
    text = str(getattr(error, "orig", None) or error).strip()
    first = redact(text.splitlines()[0]) if text else type(error).__name__
    raise ValueError(f"--storage {shown!r}: cannot open the database: {first}") from None


@contextlib.contextmanager
def journal_lock(storage: str | None, study_name: str) -> Iterator[None]:
    """A journal file takes one search at a time: an exclusive lock on ``JOURNAL.search.lock``,
    held for the run. A second search on it stops with one line naming the study, the lock
    and the search that holds it. RDB URLs and in-memory studies take no lock."""
    if storage is None or is_url(storage):
        yield
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform: unguarded, as before
        yield
        return
    journal = Path(storage)
    lock = journal.with_name(journal.name + ".search.lock")  # Optuna's own is JOURNAL.lock
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
            raise ValueError(
                f"--storage {storage}: study {study_name!r} is in use by another search "
                f"({holder or 'process unknown'}; lock {lock}); a journal file takes one search "
                "at a time: wait for it to finish, or keep the study in PostgreSQL "
                "(--storage postgresql://...) to run several at once"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _drop_torn_tail(path: Path) -> None:
    """A journal whose last record was cut by a kill (no final newline) gets it removed,
    so that the next append does not glue onto it and corrupt the file."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    from vtrain_opt.io import write_with

    keep = data[: data.rfind(b"\n") + 1]

    def write(tmp: Path) -> None:
        tmp.write_bytes(keep)

    write_with(path, write)


def ask(study: Any) -> Any:
    """``study.ask()``, without Optuna's warning that heartbeats are meant for optimize()."""
    with warnings.catch_warnings():  # "heartbeat ... supposed to be used with Study.optimize"
        warnings.filterwarnings("ignore", message=".*[Hh]eartbeat", category=UserWarning)
        return study.ask()


def drop_surplus(study: Any, asked: list[Any], trials: int) -> list[Any]:
    """Drivers asking at the same moment may together ask more than ``trials``: a trial is
    kept when it is among the first ``trials`` of the study (by number) that are finished
    or running; the rest are failed before anything is evaluated. A trial once kept stays
    kept (trials only leave the count by failing), so drivers agree without talking."""
    import optuna

    states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.RUNNING,
    )
    live = sorted(t.number for t in study.get_trials(deepcopy=False, states=states))
    keep = set(live[:trials])
    for t in asked:
        if t.number not in keep:
            study.tell(t, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return [t for t in asked if t.number in keep]


def fail_stale(study: Any) -> None:
    """Fail the running trials of drivers that died: those whose heartbeat is older than
    the grace period, and those that never got one (no driver mark) that old."""
    import datetime as _dt

    import optuna

    with warnings.catch_warnings():  # fail_stale_trials is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    cutoff = _dt.datetime.now() - _dt.timedelta(seconds=HEARTBEAT_GRACE_S)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if DRIVER_ATTR not in t.user_attrs and t.datetime_start and t.datetime_start < cutoff:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


class Heartbeat:
    """Records a heartbeat for each trial this driver holds, at once and then every
    ``HEARTBEAT_INTERVAL_S`` from a thread (RDB storages; a no-op for the others)."""

    def __init__(self, storage: Any) -> None:
        interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        self.storage: Any = storage if interval else None
        self.interval = interval or 0
        self.held: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.storage is not None:
            self.thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()

    def hold(self, trial: Any) -> None:
        if self.storage is None:
            return
        trial_id = trial._trial_id  # the storage's id (Optuna's own heartbeat thread uses it)
        self.storage.record_heartbeat(trial_id)
        with self.lock:
            self.held.add(trial_id)

    def release(self) -> None:
        with self.lock:
            self.held.clear()

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                ids = sorted(self.held)
            for trial_id in ids:
                with contextlib.suppress(Exception):  # a lost link: the next beat retries
                    self.storage.record_heartbeat(trial_id)
