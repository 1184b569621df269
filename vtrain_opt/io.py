"""Atomic file writing: write to a temporary name beside the target, then rename.

An interrupted run never leaves a half-written results file behind. ``jsonable`` makes the
plain JSON values every results file and ``--json`` share.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, default=_json_default) + "\n")


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Atomically write a file produced by ``writer(tmp_path)`` (parquet, png, csv, ...)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def check_writable_folder(path: str | Path, flag: str = "--out") -> None:
    """Raise a one-line ValueError when files cannot be written into the folder ``path``.

    Creates nothing: ``path`` must be a folder this process may write in, or not exist yet
    below one (it is created when the results are written)."""
    folder = Path(path)
    probe = folder.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {folder}: cannot write there ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {folder}: cannot write there ({probe}: permission denied)")


def jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become null (JSON has no NaN), -0.0 is 0.0.

    Here, not in the commands, so a study writes its results file as ``--json`` prints it."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, float) and obj == 0.0:
        return 0.0  # never -0.0
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
