"""The Optuna strategy: sample plans, evaluate them a batch at a time, tell the results.

A trial samples the *structural* dimensions of a plan: GPU type, global batch, tp, pp and
the GPU count (as ``gpus_log2``), plus any free dimension not completed inside the trial.
The *inner* dimensions (by default recomputation and sequence parallelism, which trade
memory for time) are not sampled: the trial evaluates each of their combinations in the
same vectorized call and keeps the fastest feasible one. For a fixed GPU type and count
the fastest plan is also the cheapest, so this inner choice is exact for every
objective, and the sampler no longer has to find the narrow band of plans that fit in
memory one dimension at a time (it settles on full recomputation otherwise, which always
fits). ``inner=()`` samples every dimension. (Parameters to plans: ``trial_space``.)

Trials are asked ``batch_size`` at a time; the batch's new plans are simulated in one
call (on a Ray worker when the backend is Ray) and results are cached by plan, so a
repeated configuration is never simulated twice (``trial_cache``). Memory and the
budget/time limits are Optuna constraints (``trial.set_constraint``); each told trial
carries its plan, days and dollars as user attributes (Optuna's dashboard shows them); a sampled
combination with no valid plan (a divisibility rule, the GPU range) is told as pruned,
without simulating anything.

Studies live in an Optuna storage (``study_store``): a journal file (resumable: running
the same search again continues it up to ``trials``) or an RDB URL. Interrupts are held
back while a batch is told, and trials left running by a killed run are marked failed on
resume, so a study is never left half-told.

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
import json
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vtrain_opt.search.collect import TOP_K, Partial, reduce_rows
from vtrain_opt.search.evaluate import COST, TIME
from vtrain_opt.search.limits import Limits
from vtrain_opt.search.ray_backend import Backend
from vtrain_opt.search.space import SearchSpace
from vtrain_opt.search.study_store import (
    DRIVER_ATTR,
    Heartbeat,
    ask,
    drop_surplus,
    fail_stale,
    is_url,
    journal_lock,
    open_storage,
)
from vtrain_opt.search.trial_cache import TrialCache, trial_attrs
from vtrain_opt.search.trial_space import DEFAULT_INNER, Key, ParamSpace

SAMPLERS = ("tpe", "nsga2", "gp", "random")

Progress = Callable[[int, int], None]

# A driver whose trials are all told waits for the others' trials in flight (RDB studies),
# looking every WAIT_POLL_S.
WAIT_POLL_S = 0.5
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
        heartbeat = stack.enter_context(Heartbeat(store))
        cache = TrialCache(ParamSpace(space, inner), backend, tokens, limits)
        return _drive(
            study,
            cache,
            objective,
            trials=trials,
            batch_size=batch_size,
            shared=is_url(storage),
            heartbeat=heartbeat,
            progress=progress,
            top_k=top_k,
        )


def _drive(
    study: Any,
    cache: TrialCache,
    objective: str,
    *,
    trials: int,
    batch_size: int,
    shared: bool,
    heartbeat: Heartbeat,
    progress: Progress | None,
    top_k: int,
) -> OptunaRun:
    """Ask, evaluate and tell batches until the study holds ``trials`` finished trials."""
    import optuna

    running, fail = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL
    gone = optuna.exceptions.UpdateFinishedTrialError  # failed meanwhile by another driver
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    params = cache.params
    driver = f"{socket.gethostname()}:{os.getpid()}"

    # Resume. Trials left running by a killed run are failed: with a journal (one writer)
    # every running trial; in a shared RDB study only those of a driver that died. The
    # finished ones are re-evaluated (one vectorized call) so their plans are in the results.
    if shared:
        fail_stale(study)
    else:
        for t in study.get_trials(deepcopy=False, states=(running,)):
            study.tell(t.number, state=fail)
    previous = study.get_trials(deepcopy=False, states=finished_states)
    cache.lookup([params.resolve(t.params) for t in previous])
    evaluated_at = {t.number: cache.count() for t in previous}  # plans simulated so far
    reported = -1

    while True:
        if shared:
            fail_stale(study)
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
                asked.append(ask(study))
                heartbeat.hold(asked[-1])
                if shared:
                    with contextlib.suppress(gone):
                        asked[-1].set_user_attr(DRIVER_ATTR, driver)
            if shared:
                asked = drop_surplus(study, asked, trials)
            keys: list[Key | None] = []
            for trial in list(asked):
                try:
                    keys.append(params.suggest(trial))
                except gone:  # this driver stalled past the grace period: not its trial now
                    asked.remove(trial)
            cache.lookup(keys)
            all_rows = cache.rows()
            cons = cache.constraints()
            with _interrupts_held():
                for trial, key in zip(asked, keys, strict=True):
                    _tell(study, trial, cache.hits[key], all_rows, cons, objective)
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
    cache.lookup([params.resolve(t.params) for t in others])
    evaluated_at.update({t.number: cache.count() for t in others})

    evaluated = cache.rows()
    history = _history(study, params, evaluated_at)
    return OptunaRun(
        partial=reduce_rows(evaluated, top_k) if len(evaluated) else reduce_rows(pd.DataFrame()),
        trials=len(final),
        study_name=study.study_name,
        history=history,
    )


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
        for name, value in trial_attrs(all_rows, i).items():
            trial.set_user_attr(name, value)
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
