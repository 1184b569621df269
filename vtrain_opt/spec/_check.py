"""Small validators shared by the frozen spec dataclasses."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def positive_int(owner: str, field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.{field}: must be a positive integer, got {value!r}")


def positive_number(owner: str, field: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{owner}.{field}: must be a positive number, got {value!r}")


def non_negative_number(owner: str, field: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{owner}.{field}: must be a non-negative number, got {value!r}")


def as_int(owner: str, field: str, value: Any) -> int:
    """Coerce a value read from YAML/JSON/CLI to int, or raise a clear ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{owner}.{field}: must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return as_int(owner, field, float(value.replace("_", "").replace(",", "")))
        except ValueError:
            pass
    raise ValueError(f"{owner}.{field}: must be an integer, got {value!r}")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ValueError(f"plan.{name}: {value!r} is not a boolean")


def recompute_codes(value: Any, modes: tuple[str, ...]) -> np.ndarray:
    """Recompute modes (names or codes) as int8 codes into ``modes``."""
    arr = np.asarray(value)
    if arr.dtype.kind in "iu":
        if np.any((arr < 0) | (arr >= len(modes))):
            raise ValueError(
                "PlanBatch.recompute: codes must be 0 (none), 1 (selective) or 2 (full)"
            )
        return arr.astype(np.int8)
    flat = np.atleast_1d(arr).astype(str)
    codes = np.full(flat.shape, -1, dtype=np.int8)
    for code, mode in enumerate(modes):
        codes[flat == mode] = code
    if np.any(codes < 0):
        bad = sorted(set(flat[codes < 0].tolist()))
        raise ValueError(f"recompute: {', '.join(map(repr, bad))} not one of {', '.join(modes)}")
    return codes.reshape(arr.shape) if arr.ndim else codes[0:1]
