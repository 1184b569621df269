"""The study an Optuna search leaves behind opens with Optuna's own loader (what
``optuna-dashboard OUT/study.journal`` reads) and holds every trial with its plan, days
and dollars as user attributes."""

from __future__ import annotations

import contextlib
import io
import json

import optuna
import pytest
from helpers import search_argv
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from vtrain_opt.cli import main
from vtrain_opt.units import DAY_S


def test_the_study_opens_with_optunas_loader(tmp_path) -> None:
    out = tmp_path / "run"
    argv = search_argv(strategy="optuna", trials="24", batch_size="8", out=str(out))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([*argv, "--json"]) == 0
    doc = json.loads(stdout.getvalue())
    journal = out / "study.journal"
    assert doc["storage"] == str(journal)

    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=None, storage=storage)  # the file's only study
    assert study.study_name == doc["study_name"]
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]  # time, cost
    finished = study.get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    assert len(finished) == doc["trials"] == 24
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for t in complete:
        attrs = t.user_attrs
        assert set(attrs) >= {"plan", "days", "dollars"}, attrs
        assert " x a100-40gb: tp=" in attrs["plan"] and "recompute=" in attrs["plan"]
        time_s, cost_usd = t.values  # the trial's objective values: seconds and dollars
        assert attrs["days"] == pytest.approx(time_s / DAY_S, abs=1e-4)
        assert attrs["dollars"] == pytest.approx(cost_usd, abs=0.01)
    # the fastest plan of the search is one of the trials, with its plan in words
    best = doc["best_time"]
    plans = {t.user_attrs["plan"] for t in complete}
    assert any(
        p.startswith(f"{best['num_gpus']} x a100-40gb: tp={best['tp']} pp={best['pp']}")
        for p in plans
    )
