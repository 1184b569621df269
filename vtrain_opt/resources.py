"""Locate the data folders shipped with the package (search spaces, profiles).

In a source checkout or editable install they sit at the repository root; in a
wheel they are copied into ``vtrain_opt/_data/``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder ``name`` ('search_spaces' or 'profiles')."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"vtrain_opt data folder {name!r} is missing from the installation")
