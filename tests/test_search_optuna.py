"""The Optuna strategy: quality on a small space, constraints, caching, determinism, resume."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vtrain_opt import PlanBatch, get_cluster, get_model, simulate  # noqa: E402
from vtrain_opt.search import Limits, SearchSpace, search  # noqa: E402
from vtrain_opt.search.study_store import open_storage  # noqa: E402

TOKENS = 1e11
GPU = "a100-40gb"


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.create(
        get_model("llama2-7b"),
        [GPU],
        max_gpus=64,
        global_batch=[128, 256],
        micro_batch=[1, 2, 4],
        vpp=[1, 2],
        zero=[0, 1],
    )


@pytest.fixture(scope="module")
def exact(space):
    return search(space, TOKENS, strategy="exhaustive")


def _batch(df: pd.DataFrame) -> PlanBatch:
    names = {"micro_batch": "mb", "global_batch": "gb", "sequence_parallel": "sp"}
    return PlanBatch.from_frame(df.rename(columns=names))


def _run(space, **kw):
    kw.setdefault("trials", 96)
    kw.setdefault("batch_size", 16)
    return search(space, TOKENS, strategy="optuna", **kw)


def test_finds_near_optimal_plans_with_few_trials(space, exact):
    ratios = []
    for seed in range(4):
        got = _run(space, objective="time", trials=64, seed=seed)  # 1% of the space
        assert got.strategy == "optuna" and got.trials == 64
        assert got.evaluated < 0.5 * space.size  # it did not enumerate the space
        ratios.append(got.best_time["training_time_s"] / exact.best_time["training_time_s"])
    assert min(ratios) >= 1.0  # never better than the exact optimum
    assert np.median(ratios) <= 1.02 and max(ratios) <= 1.10, ratios


def test_each_trial_keeps_its_best_inner_plan(space):
    got = _run(space, objective="time", seed=5, trials=32)
    outer = ["tp", "pp", "dp", "global_batch"]
    feasible = got.plans[got.plans["feasible"]]
    best = feasible.groupby(outer, observed=True)["training_time_s"].min()
    done = got.history[got.history["feasible"]]
    assert len(done) > 0
    for _, trial in done.iterrows():
        _, gb, tp, pp, dp = trial["key"][:5]
        assert trial["value0"] == best.loc[(tp, pp, dp, gb)]
    # with no inner dimensions, a trial is one plan
    one = _run(space, objective="time", seed=5, trials=32, inner=())
    assert one.evaluated <= 32


def test_reported_plans_are_simulated_faithfully(space):
    got = _run(space, objective="pareto", seed=3)
    rows = got.plans.head(20)
    ref = simulate(space.model, get_cluster(GPU), _batch(rows), tokens=TOKENS)
    np.testing.assert_allclose(rows["training_time_s"], ref["training_time_s"], rtol=1e-12)
    assert (rows["fits_memory"].to_numpy() == ref["feasible"].to_numpy()).all()
    # every evaluated plan is a plan of the space, listed once (repeats come from the cache)
    key = [
        "tp",
        "pp",
        "dp",
        "micro_batch",
        "global_batch",
        "recompute",
        "sequence_parallel",
        "vpp",
        "zero",
    ]
    assert not got.plans.duplicated(subset=key).any()
    assert space.member_mask(0, _batch(got.plans)).all()
    # the front is non-dominated among what was evaluated
    f = got.pareto
    assert f["training_time_s"].is_monotonic_increasing and f["cost_usd"].is_monotonic_decreasing


def test_limits_are_constraints(space, exact):
    cap = float(exact.plans.loc[exact.plans["feasible"], "cost_usd"].quantile(0.2))
    got = _run(space, objective="time", limits=Limits(budget_usd=cap), seed=0)
    assert got.ok
    assert got.best_time["cost_usd"] <= cap
    assert (got.plans.loc[got.plans["feasible"], "cost_usd"] <= cap).all()
    assert got.reason_counts.get("over budget", 0) > 0
    study_feasible = got.history[got.history["feasible"]]
    assert len(study_feasible) > 0
    assert (study_feasible["value0"] >= got.best_time["training_time_s"]).all()


def test_same_seed_same_study(space):
    a = _run(space, objective="cost", seed=7, trials=48)
    b = _run(space, objective="cost", seed=7, trials=48)
    pd.testing.assert_frame_equal(a.history, b.history)
    pd.testing.assert_frame_equal(a.pareto, b.pareto)


@pytest.mark.parametrize("sampler", ["nsga2", "random", "gp"])
def test_other_samplers_run(space, sampler):
    got = _run(space, objective="pareto", sampler=sampler, trials=14, batch_size=7)
    assert got.trials == 14 and got.sampler == sampler and got.evaluated > 0


def test_unknown_sampler(space):
    with pytest.raises(ValueError, match="sampler: 'cmaes' is not one of"):
        _run(space, sampler="cmaes")


def test_resume_continues_the_study(space, tmp_path):
    storage = str(tmp_path / "study.journal")
    first = _run(space, objective="time", trials=32, storage=storage, seed=2)
    second = _run(space, objective="time", trials=64, storage=storage, seed=2)
    assert first.study_name == second.study_name and second.trials == 64
    # the first 32 trials are the first run's, not a fresh start
    same = ["number", "state", "value0", "value1", "feasible", "key"]
    pd.testing.assert_frame_equal(second.history.head(32)[same], first.history[same])
    # a run with more trials from scratch asks the same first 32
    again = _run(space, objective="time", trials=32, storage=str(tmp_path / "b.journal"), seed=2)
    pd.testing.assert_frame_equal(again.history, first.history)  # evaluated counts too
    # asking for no more than the study holds evaluates nothing new
    third = _run(space, objective="time", trials=64, storage=storage, seed=2)
    assert third.trials == 64 and len(third.history) == 64


def test_interrupt_keeps_finished_batches(space, tmp_path):
    storage = str(tmp_path / "study.journal")
    calls = []

    def progress(done, total):
        calls.append(done)
        if done >= 32:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(space, objective="time", trials=96, storage=storage, progress=progress)
    study = optuna.load_study(study_name=None, storage=open_storage(storage))
    states = [t.state for t in study.get_trials()]
    assert optuna.trial.TrialState.RUNNING not in states
    finished = [s for s in states if s.is_finished() and s != optuna.trial.TrialState.FAIL]
    assert len(finished) == 32
    resumed = _run(space, objective="time", trials=96, storage=storage)
    assert resumed.trials == 96


def test_interrupt_inside_a_batch_fails_only_that_batch(space, tmp_path, monkeypatch):
    import vtrain_opt.search.trial_cache as mod

    storage = str(tmp_path / "study.journal")
    real, calls = mod.evaluate_keys, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third batch is being simulated
        return real(*args)

    monkeypatch.setattr(mod, "evaluate_keys", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(space, objective="time", trials=96, storage=storage)
    monkeypatch.setattr(mod, "evaluate_keys", real)
    study = optuna.load_study(study_name=None, storage=open_storage(storage))
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.FAIL) == 16  # the interrupted batch
    assert optuna.trial.TrialState.RUNNING not in states
    assert len(states) - 16 == 32
    assert _run(space, objective="time", trials=96, storage=storage).trials == 96


def test_torn_journal_tail_is_dropped(space, tmp_path):
    path = tmp_path / "study.journal"
    _run(space, objective="time", trials=16, storage=str(path))
    with path.open("ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 3, "sta')  # cut by a kill
    resumed = _run(space, objective="time", trials=32, storage=str(path))
    assert resumed.trials == 32
    assert path.read_bytes().endswith(b"\n")


def test_rdb_storage(space, tmp_path):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _run(space, objective="time", trials=16, storage=url)
    got = _run(space, objective="time", trials=32, storage=url)
    assert got.trials == 32
    with pytest.raises(ValueError, match="unknown database scheme 'nosuchdb'"):
        _run(space, storage="nosuchdb://x/y")


def test_postgres_url_needs_the_driver(space, monkeypatch):
    pytest.importorskip("sqlalchemy")
    import importlib.util

    import vtrain_opt.search.study_store as mod

    real = importlib.util.find_spec
    monkeypatch.setattr(
        mod.importlib.util, "find_spec", lambda n, *a: None if n == "psycopg" else real(n, *a)
    )
    with pytest.raises(ValueError, match=r"psycopg driver: pip install 'vtrain_opt\[postgres\]'"):
        _run(space, storage="postgresql://u:pw@127.0.0.1:1/db")


def test_journal_takes_one_search(space, tmp_path):
    from vtrain_opt.search.study_store import journal_lock

    storage = str(tmp_path / "study.journal")
    _run(space, objective="time", trials=8, storage=storage)
    before = (tmp_path / "study.journal").read_bytes()
    refused = pytest.raises(ValueError, match=r"is in use by another search \(pid \d+ on ")
    with journal_lock(storage, "held"), refused:  # another search's lock (a second open file)
        _run(space, objective="time", trials=16, storage=storage)
    assert (tmp_path / "study.journal").read_bytes() == before  # nothing written
    assert _run(space, objective="time", trials=16, storage=storage).trials == 16


def test_a_named_study_refuses_other_inputs(space, tmp_path):
    storage = str(tmp_path / "study.journal")
    _run(space, objective="time", trials=8, storage=storage, study_name="shared", seed=1)
    joined = _run(space, objective="time", trials=16, storage=storage, study_name="shared", seed=2)
    assert joined.trials == 16  # another seed joins the same study
    with pytest.raises(ValueError, match="'shared' holds the trials of a search with other inputs"):
        search(
            space,
            2 * TOKENS,
            strategy="optuna",
            objective="time",
            trials=24,
            storage=storage,
            study_name="shared",
        )
