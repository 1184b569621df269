"""Small validators shared by the frozen spec dataclasses."""

from __future__ import annotations

import math
from typing import Any


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
