"""The Optuna strategy: sample plans, evaluate them a batch at a time, tell the results.

A trial samples the *structural* dimensions of a plan: GPU type, global batch, tp, pp and
the GPU count (as ``gpus_log2``), plus any free dimension not completed inside the trial.
The *inner* dimensions (by default recomputation and sequence parallelism, which trade
memory for time) are not sampled: the trial evaluates each of their combinations in the
same vectorized call and keeps the fastest feasible one. For a fixed GPU type and count
the fastest plan is also the cheapest, so this inner choice is exact for every
objective, and the sampler no longer has to find the narrow band of plans that fit in
memory one dimension at a time (it settles on full recomputation otherwise, which always
fits). ``inner=()`` samples every dimension.

Trials are asked ``batch_size`` at a time; the batch's new plans are simulated in one
call (on a Ray worker when the backend is Ray) and results are cached by plan, so a
repeated configuration is never simulated twice. Memory and the budget/time limits are
Optuna constraints (``trial.set_constraint``); a sampled combination with no valid plan
(a divisibility rule, the GPU range) is told as pruned, without simulating anything.

Studies live in an Optuna storage: a journal file (resumable: running the same search
again continues it up to ``trials``) or an RDB URL. Interrupts are held back while a
batch is told, and trials left running by a killed run are marked failed on resume, so a
study is never left half-told.

A journal file takes one search at a time (an exclusive lock next to it, held for the
run). An RDB study (PostgreSQL for several machines) takes several drivers at once,
Optuna's distributed mode: each counts the study's finished trials, asks only what is
missing to reach ``trials`` (a trial beyond them, asked in a race, is failed unevaluated),
waits for the others' trials in flight, and collects every finished trial of the study
in its results. Each driver records a heartbeat for the trials it holds; the running
trials of a driver that died are failed once their heartbeat is older than the grace
period, and asked again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import json
import os
import re
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.search.collect import TOP_K, Partial, reduce_rows
from vtrain_opt.search.evaluate import COST, TIME, evaluate, rows
from vtrain_opt.search.limits import Limits
from vtrain_opt.search.ray_backend import Backend
from vtrain_opt.search.space import SearchSpace
from vtrain_opt.spec.plan import RECOMPUTE_MODES, PlanBatch

SAMPLERS = ("tpe", "nsga2", "gp", "random")
# A plan key: (gpu index, gb, tp, pp, dp, mb, recompute code, sp, vpp, zero, dp_overlap).
# In a trial's key an inner dimension holds AUTO: the trial evaluates all its values.
Key = tuple[int, int, int, int, int, int, int, bool, int, int, bool]
AUTO = -1
# Dimensions a trial may complete itself, and their position in a key.
INNER_DIMS = {
    "micro_batch": 5,
    "recompute": 6,
    "sequence_parallel": 7,
    "vpp": 8,
    "zero": 9,
    "dp_overlap": 10,
}
DEFAULT_INNER = tuple(INNER_DIMS)
_KEY_COLS = ("gpu", "gb", "tp", "pp", "dp", "mb", "recompute", "sp", "vpp", "zero", "dp_overlap")

Progress = Callable[[int, int], None]

# RDB studies: a driver records a heartbeat for each trial it holds every
# HEARTBEAT_INTERVAL_S; another driver fails a running trial whose heartbeat is older than
# HEARTBEAT_GRACE_S (its driver died) and asks it again. A driver whose trials are all
# told waits for the others' trials in flight, looking every WAIT_POLL_S.
HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_GRACE_S = 60
WAIT_POLL_S = 0.5
# Seconds to connect to a PostgreSQL server before giving up (unless the URL sets it).
CONNECT_TIMEOUT_S = 10
DRIVER_ATTR = "vtrain_opt.driver"  # trial user attribute: host:pid of the driver that asked it
INPUTS_ATTR = "vtrain_opt.inputs"  # study user attribute: the digest of the search's inputs


@dataclass
class OptunaRun:
    partial: Partial  # every distinct plan the study evaluated, reduced
    trials: int  # finished trials in the study
    study_name: str
    history: pd.DataFrame  # one row per finished trial: number, state, objective values, key


def make_sampler(name: str, seed: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        with warnings.catch_warnings():  # deterministic_objective is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, deterministic_objective=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler: {name!r} is not one of {', '.join(SAMPLERS)}")


def default_study_name(
    space: SearchSpace,
    tokens: float,
    limits: Limits,
    objective: str,
    sampler: str,
    seed: int,
    inner: tuple[str, ...] = DEFAULT_INNER,
) -> str:
    """Same inputs, same name: re-running a search finds its study and continues it."""
    ident = json.dumps(
        [space.to_dict(), tokens, limits.to_dict(), objective, sampler, seed, sorted(inner)],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return f"{space.name or space.model.name}-{objective}-{sampler}-s{seed}-{digest}"


def inputs_digest(
    space: SearchSpace,
    tokens: float,
    limits: Limits,
    objective: str,
    inner: tuple[str, ...] = DEFAULT_INNER,
) -> str:
    """What a study's trial values depend on: drivers joining one study by name must agree
    on it (they may differ in sampler and seed)."""
    ident = json.dumps(
        [space.to_dict(), tokens, limits.to_dict(), objective, sorted(inner)],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


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


class ParamSpace:
    """Maps trial parameters to plans of the space, and back.

    Sampling every dimension independently lands outside the space most of the time (the
    GPU count must be a whole number of nodes, dp x micro-batch must divide the global
    batch, ...), and samplers learn nothing from such trials. So the GPU count is sampled
    as a continuous ``gpus_log2`` and each ordered dimension as an index, then resolved in
    order (GPU type, global batch, tp, pp, GPU count, micro-batch, sequence parallelism,
    vpp, ZeRO, overlap) to the nearest value that keeps the plan valid given the ones
    before. Nearby parameters map to nearby plans, and almost every trial is a plan of the
    space; the rare remainder is told as pruned.
    """

    def __init__(self, space: SearchSpace, inner: tuple[str, ...] = DEFAULT_INNER) -> None:
        unknown = sorted(set(inner) - set(INNER_DIMS))
        if unknown:
            raise ValueError(
                f"inner dimensions: {', '.join(unknown)} unknown; allowed: {', '.join(INNER_DIMS)}"
            )
        inner = tuple(d for d in INNER_DIMS if d in inner and len(getattr(space, d)) > 1)
        if "micro_batch" in inner and "vpp" not in inner and len(space.vpp) > 1:
            inner = (*inner, "vpp")  # vpp's validity depends on the micro-batch count
        self.space = space
        self.inner = inner
        self.gpus = [g.name for g in space.gpus]
        steps = [space.step_of(g) for g in space.gpus]
        lo = min(-(-space.min_gpus // s) * s for s in steps)
        self.log2_range = (float(np.log2(lo)), float(np.log2(space.max_gpus)))
        self.ordered: dict[str, tuple[Any, ...]] = {
            "global_batch": space.global_batch,
            "tp": space.tp,
            "pp": space.pp,
            "micro_batch": space.micro_batch,
            "recompute": tuple(sorted(RECOMPUTE_MODES.index(r) for r in space.recompute)),
            "vpp": space.vpp,
            "zero": space.zero,
        }
        self.categorical: dict[str, tuple[Any, ...]] = {
            "sequence_parallel": space.sequence_parallel,
            "dp_overlap": space.dp_overlap,
        }
        self._dps = {gb: _divisors(gb) for gb in space.global_batch}

    def suggest(self, trial: Any) -> Key | None:
        p: dict[str, Any] = {}
        if len(self.gpus) > 1:
            p["gpu"] = trial.suggest_categorical("gpu", self.gpus)
        if self.log2_range[1] > self.log2_range[0]:
            p["gpus_log2"] = trial.suggest_float("gpus_log2", *self.log2_range)
        for name, values in self.ordered.items():
            if len(values) > 1 and name not in self.inner:
                p[f"{name}_index"] = trial.suggest_int(f"{name}_index", 0, len(values) - 1)
        for name, values in self.categorical.items():
            if len(values) > 1 and name not in self.inner:
                p[name] = trial.suggest_categorical(name, values)
        return self.resolve(p)

    def resolve(self, p: dict[str, Any]) -> Key | None:
        """The trial key a trial's parameters stand for; None when no valid plan is near."""
        sp_, m = self.space, self.space.model
        g = self.gpus.index(p["gpu"]) if "gpu" in p else 0
        step = sp_.step_of(sp_.gpus[g])

        def pick(name: str, ok: Callable[[Any], bool]) -> Any:
            if name in self.inner:
                return AUTO
            values = self.ordered[name]
            want = p.get(f"{name}_index", 0)
            good = [i for i, v in enumerate(values) if ok(v)]
            if not good:
                return None
            return values[min(good, key=lambda i: (abs(i - want), i))]

        gb = pick("global_batch", lambda v: True)
        tp = pick("tp", lambda v: True)
        pp = pick("pp", lambda v: True)
        target = p.get("gpus_log2", self.log2_range[1])
        dps = [
            d
            for d in self._dps[gb]
            if sp_.min_gpus <= tp * pp * d <= sp_.max_gpus and (tp * pp * d) % step == 0
        ]
        if not dps:
            return None
        dp = min(dps, key=lambda d: (abs(np.log2(tp * pp * d) - target), d))
        mb = pick("micro_batch", lambda v: gb % (dp * v) == 0)
        rc = pick("recompute", lambda v: True)
        if "sequence_parallel" in self.inner:
            sp: Any = AUTO
        else:
            sp = p.get("sequence_parallel", self.categorical["sequence_parallel"][0])
            if (
                sp
                and (tp < 2 or m.seq_length % tp)
                and False in self.categorical["sequence_parallel"]
            ):
                sp = False
        vpp = pick(
            "vpp",
            lambda v: (
                v == 1 or (pp > 1 and m.num_layers % (pp * v) == 0 and (gb // (dp * mb)) % pp == 0)
            ),
        )
        zero = pick("zero", lambda v: v < 2 or pp == 1)
        if "dp_overlap" in self.inner:
            ovl: Any = AUTO
        else:
            ovl = p.get("dp_overlap", self.categorical["dp_overlap"][0])
        if mb is None or vpp is None or zero is None:
            return None
        return (
            g,
            int(gb),
            int(tp),
            int(pp),
            int(dp),
            int(mb),
            int(rc),
            sp,
            int(vpp),
            int(zero),
            ovl,
        )

    def expand(self, key: Key) -> list[Key]:
        """The plans a trial key stands for: every combination of its AUTO dimensions."""
        options: list[tuple[Any, ...]] = []
        for pos, value in enumerate(key):
            if not isinstance(value, bool) and value == AUTO:
                name = next(n for n, i in INNER_DIMS.items() if i == pos)
                options.append(self.ordered.get(name) or self.categorical[name])
            else:
                options.append((value,))
        return [tuple(c) for c in itertools.product(*options)]  # type: ignore[misc]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def evaluate_keys(
    space: SearchSpace, gpu_index: int, keys: np.ndarray, tokens: float, limits: Limits
) -> tuple[np.ndarray, pd.DataFrame, dict[str, np.ndarray]]:
    """Simulate the plans ``keys`` (K, 11) of one GPU type in one call (here or on Ray).

    Returns which keys belong to the space, the result rows of those that do, and their
    constraint values (memory and each active limit; <= 0 means met).
    """
    c = {name: keys[:, i] for i, name in enumerate(_KEY_COLS)}
    batch = PlanBatch(
        tp=c["tp"],
        pp=c["pp"],
        dp=c["dp"],
        mb=c["mb"],
        gb=c["gb"],
        recompute=c["recompute"].astype(np.int8),
        sp=c["sp"].astype(bool),
        vpp=c["vpp"],
        zero=c["zero"],
        dp_overlap=c["dp_overlap"].astype(bool),
    )
    member = space.member_mask(gpu_index, batch)
    inside = batch.take(np.flatnonzero(member))
    if inside.n == 0:
        return member, pd.DataFrame(), {}
    ev = evaluate(space, gpu_index, inside, tokens, limits)
    constraints = {
        "memory": ev.cols["memory_per_gpu_bytes"] / ev.cols["memory_capacity_bytes"] - 1.0,
        **limits.violations(ev.cols),
    }
    return member, rows(space, ev), constraints


def run_optuna(
    space: SearchSpace,
    tokens: float,
    limits: Limits,
    objective: str,
    backend: Backend,
    *,
    trials: int,
    sampler: str = "tpe",
    seed: int = 0,
    batch_size: int = 16,
    storage: str | None = None,
    study_name: str | None = None,
    progress: Progress | None = None,
    top_k: int = TOP_K,
    inner: tuple[str, ...] = DEFAULT_INNER,
) -> OptunaRun:
    """Run (or continue) a study until it holds ``trials`` finished trials.

    Several drivers may run on one RDB study at once: together they reach ``trials``,
    and each one's results hold every finished trial of the study.
    """
    import optuna

    if trials < 1:
        raise ValueError(f"trials: must be at least 1, got {trials}")
    if batch_size < 1:
        raise ValueError(f"batch size: must be at least 1, got {batch_size}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name or default_study_name(space, tokens, limits, objective, sampler, seed, inner)
    directions: list[Any] = ["minimize", "minimize"] if objective == "pareto" else ["minimize"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(journal_lock(storage, name))
        store = open_storage(storage)
        study = optuna.create_study(
            study_name=name,
            storage=store,
            sampler=make_sampler(sampler, seed),
            directions=directions,
            load_if_exists=True,
        )
        if [d.name.lower() for d in study.directions] != directions:
            raise ValueError(
                f"study {name!r} exists with other objectives; choose another --storage"
            )
        digest = inputs_digest(space, tokens, limits, objective, inner)
        known = study.user_attrs.get(INPUTS_ATTR)
        if known is None:
            study.set_user_attr(INPUTS_ATTR, digest)
        elif known != digest:
            raise ValueError(
                f"study {name!r} holds the trials of a search with other inputs (space, tokens, "
                "limits, objective or inner dimensions); choose another --study-name"
            )
        heartbeat = stack.enter_context(_Heartbeat(store))
        return _drive(
            study,
            space,
            tokens,
            limits,
            objective,
            backend,
            trials=trials,
            batch_size=batch_size,
            shared=is_url(storage),
            heartbeat=heartbeat,
            progress=progress,
            top_k=top_k,
            inner=inner,
        )


def _drive(
    study: Any,
    space: SearchSpace,
    tokens: float,
    limits: Limits,
    objective: str,
    backend: Backend,
    *,
    trials: int,
    batch_size: int,
    shared: bool,
    heartbeat: _Heartbeat,
    progress: Progress | None,
    top_k: int,
    inner: tuple[str, ...],
) -> OptunaRun:
    """Ask, evaluate and tell batches until the study holds ``trials`` finished trials."""
    import optuna

    running, fail = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL
    gone = optuna.exceptions.UpdateFinishedTrialError  # failed meanwhile by another driver
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    params = ParamSpace(space, inner)
    shared_space = backend.put(space)
    cache: dict[Key | None, tuple[bool, int]] = {None: (False, -1)}  # -> (in space, row)
    frames: list[pd.DataFrame] = []
    constraint_rows: list[dict[str, np.ndarray]] = []
    driver = f"{socket.gethostname()}:{os.getpid()}"

    def lookup(keys: list[Key | None]) -> None:
        """Evaluate the trial keys not seen yet: one vectorized call per GPU type."""
        new = sorted({k for k in keys if k not in cache}, key=str)
        if not new:
            return
        plans = {k: params.expand(k) for k in new}  # type: ignore[arg-type]
        flat = sorted({p for ps in plans.values() for p in ps})
        arr = np.array(flat, dtype=np.int64)
        groups = [(int(g), arr[arr[:, 0] == g]) for g in np.unique(arr[:, 0])]
        calls = [(shared_space, g, sub, tokens, limits) for g, sub in groups]
        row_of: dict[Key, int] = {}
        offset = sum(len(f) for f in frames)
        for (_, sub), (member, df, cons) in zip(
            groups, backend.map(evaluate_keys, calls), strict=True
        ):
            inside = [_as_key(tuple(k)) for k, m in zip(sub.tolist(), member, strict=True) if m]
            row_of.update({k: offset + j for j, k in enumerate(inside)})
            if len(df):
                frames.append(df)
                constraint_rows.append(cons)
                offset += len(df)
        all_rows, cons_all = _concat(frames), _concat_constraints(constraint_rows)
        for key, candidates in plans.items():
            found = [row_of[p] for p in candidates if p in row_of]
            cache[key] = (True, _best(found, all_rows, cons_all)) if found else (False, -1)

    # Resume. Trials left running by a killed run are failed: with a journal (one writer)
    # every running trial; in a shared RDB study only those of a driver that died. The
    # finished ones are re-evaluated (one vectorized call) so their plans are in the results.
    if shared:
        _fail_stale(study)
    else:
        for t in study.get_trials(deepcopy=False, states=(running,)):
            study.tell(t.number, state=fail)
    previous = study.get_trials(deepcopy=False, states=finished_states)
    lookup([params.resolve(t.params) for t in previous])
    evaluated_at = {t.number: _rows(frames) for t in previous}  # plans simulated so far
    reported = -1

    while True:
        if shared:
            _fail_stale(study)
        now = study.get_trials(deepcopy=False, states=(*finished_states, running))
        done = sum(t.state != running for t in now)
        if progress and done != reported:
            progress(done, trials)
            reported = done
        if done >= trials:
            break
        # this driver's trials are all told: the running ones are other drivers'
        want = min(batch_size, trials - len(now))
        if want <= 0:
            time.sleep(WAIT_POLL_S)
            continue
        asked: list[Any] = []
        try:
            for _ in range(want):
                asked.append(_ask(study))
                heartbeat.hold(asked[-1])
                if shared:
                    with contextlib.suppress(gone):
                        asked[-1].set_user_attr(DRIVER_ATTR, driver)
            if shared:
                asked = _drop_surplus(study, asked, trials)
            keys: list[Key | None] = []
            for trial in list(asked):
                try:
                    keys.append(params.suggest(trial))
                except gone:  # this driver stalled past the grace period: not its trial now
                    asked.remove(trial)
            lookup(keys)
            all_rows = _concat(frames)
            cons = _concat_constraints(constraint_rows)
            with _interrupts_held():
                for trial, key in zip(asked, keys, strict=True):
                    _tell(study, trial, cache[key], all_rows, cons, objective)
                    evaluated_at[trial.number] = len(all_rows)
                asked = []
        except BaseException:
            with _interrupts_held():
                for trial in asked:  # asked but not told: not counted, re-asked on resume
                    with contextlib.suppress(Exception):  # skip any told before the error
                        study.tell(trial, state=fail)
            raise
        finally:
            heartbeat.release()

    # Trials told by other drivers of the study: their plans join the results too.
    final = study.get_trials(deepcopy=False, states=finished_states)
    others = [t for t in final if t.number not in evaluated_at]
    lookup([params.resolve(t.params) for t in others])
    evaluated_at.update({t.number: _rows(frames) for t in others})

    evaluated = _concat(frames)
    history = _history(study, params, evaluated_at)
    return OptunaRun(
        partial=reduce_rows(evaluated, top_k) if len(evaluated) else reduce_rows(pd.DataFrame()),
        trials=len(final),
        study_name=study.study_name,
        history=history,
    )


def _ask(study: Any) -> Any:
    with warnings.catch_warnings():  # "heartbeat ... supposed to be used with Study.optimize"
        warnings.filterwarnings("ignore", message=".*[Hh]eartbeat", category=UserWarning)
        return study.ask()


def _drop_surplus(study: Any, asked: list[Any], trials: int) -> list[Any]:
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


def _fail_stale(study: Any) -> None:
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


class _Heartbeat:
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

    def __enter__(self) -> _Heartbeat:
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


def _tell(
    study: Any,
    trial: Any,
    hit: tuple[bool, int],
    all_rows: pd.DataFrame,
    cons: dict[str, np.ndarray],
    objective: str,
) -> None:
    import optuna

    inside, i = hit
    try:
        if not inside:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
            return
        for name in sorted(cons):
            trial.set_constraint(name, float(cons[name][i]))
        t, c = float(all_rows[TIME].iat[i]), float(all_rows[COST].iat[i])
        values = {"time": [t], "cost": [c], "pareto": [t, c]}[objective]
        study.tell(trial, values, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # failed by another driver while this one stalled: not counted, asked again


def _history(study: Any, params: ParamSpace, evaluated_at: dict[int, int]) -> pd.DataFrame:
    """One row per finished trial, in trial order: state, values, feasibility, its trial
    key, and how many distinct plans had been simulated when it was told."""
    import optuna

    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            continue
        cons = t.constraints
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value0": t.values[0] if t.values else np.nan,
                "value1": t.values[1] if t.values and len(t.values) > 1 else np.nan,
                "feasible": t.state == optuna.trial.TrialState.COMPLETE
                and all(v <= 0 for v in cons.values()),
                "key": params.resolve(t.params),
                "evaluated": evaluated_at.get(t.number, 0),
            }
        )
    return pd.DataFrame(out)


def _best(found: list[int], all_rows: pd.DataFrame, cons: dict[str, np.ndarray]) -> int:
    """A trial's plan among its evaluated rows: the fastest feasible one (for a fixed GPU
    type and count, also the cheapest); when none is feasible, the least violation."""
    idx = np.array(found)
    time = all_rows[TIME].to_numpy()[idx]
    feasible = all_rows["feasible"].to_numpy()[idx]
    if feasible.any():
        return int(idx[np.flatnonzero(feasible)[np.argmin(time[feasible])]])
    excess = sum(np.maximum(c[idx], 0.0) for c in cons.values()) if cons else np.zeros(len(idx))
    order = np.lexsort((time, excess))
    return int(idx[order[0]])


def _as_key(values: tuple[int, ...]) -> Key:
    g, gb, tp, pp, dp, mb, rc, sp, vpp, zero, ovl = values
    return (g, gb, tp, pp, dp, mb, rc, bool(sp), vpp, zero, bool(ovl))


def _rows(frames: list[pd.DataFrame]) -> int:
    return sum(len(f) for f in frames)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame()
    if len(frames) > 1:
        frames[:] = [pd.concat(frames, ignore_index=True)]
    return frames[0]


def _concat_constraints(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) > 1:
        parts[:] = [{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}]
    return parts[0] if parts else {}


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C back until the block ends (a batch is told whole or not at all)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
