"""Where a study lives: the SQLAlchemy URL of --storage, and its password never shown."""

from __future__ import annotations

from vtrain_opt.search.study_store import redact, storage_url


def test_storage_urls():
    assert storage_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert storage_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert storage_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert storage_url("sqlite:///a.db") == "sqlite:///a.db"
    assert redact("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("--storage=postgresql://u@h/db") == "--storage=postgresql://u@h/db"
    assert redact("study.journal") == "study.journal"
