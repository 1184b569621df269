"""SI constants, parsers for human-entered quantities, and formatters for printing.

Internal code works in SI units (seconds, bytes, FLOP, USD); human units only
appear here, at the edges (CLI parsing and printing).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KIB = 2**10
MIB = 2**20
GIB = 2**30
TIB = 2**40
KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12

MINUTE_S = 60.0
HOUR_S = 3600.0
DAY_S = 86400.0
WEEK_S = 7 * DAY_S

TERA = 1e12
PETA = 1e15

_NUMBER = r"[-+]?(?:\d[\d_,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}


def _number(text: str, what: str) -> float:
    try:
        return float(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None


def parse_count(text: str | float | int, what: str = "count") -> float:
    """Parse a large count such as tokens: ``300B``, ``300e9``, ``1.5T``, ``2M``, ``4096``.

    Suffixes: K (1e3), M (1e6), B or G (1e9), T (1e12), P (1e15), case-insensitive.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip()
        m = re.fullmatch(rf"({_NUMBER})\s*([kKmMbBgGtTpP]?)", s)
        if not m:
            raise ValueError(
                f"{what}: {s!r} is not a count; use a number with an optional suffix "
                "K, M, B, T (e.g. 300B, 3e11, 1.5T)"
            )
        value = _number(m.group(1), what) * _SCALE[m.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what}: must be a positive finite number, got {text!r}")
    return value


def parse_money_usd(text: str, what: str = "amount") -> float:
    """Parse money in USD: ``$2M``, ``2e6usd``, ``2,000,000 USD``, ``$1.5k``."""
    s = str(text).strip().lower().replace(" ", "")
    m = re.fullmatch(rf"\$?({_NUMBER})([kmbt]?)(usd|\$)?", s)
    if not m or not (s.startswith("$") or m.group(3)):
        raise ValueError(
            f"{what}: {text!r} is not an amount of money; write e.g. $2M, $500k or 2e6usd"
        )
    value = _number(m.group(1), what) * _SCALE[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what}: must be positive, got {text!r}")
    return value


_GPU_HOURS = re.compile(rf"({_NUMBER})([kmbt]?)(gpu-?h|gpu-?hours?|gpuh)")


def parse_gpu_hours(text: str, what: str = "GPU time") -> float:
    """Parse GPU time: ``1.5e6gpu-h``, ``1.5M gpu-hours``, ``200k gpuh``."""
    s = str(text).strip().lower().replace(" ", "")
    m = _GPU_HOURS.fullmatch(s)
    if not m:
        raise ValueError(f"{what}: {text!r} is not GPU time; write e.g. 1.5e6gpu-h or 200k gpu-h")
    value = _number(m.group(1), what) * _SCALE[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what}: must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class Budget:
    """A spending limit: either money (``usd``) or GPU time (``gpu_hours``)."""

    usd: float | None = None
    gpu_hours: float | None = None

    def __post_init__(self) -> None:
        if (self.usd is None) == (self.gpu_hours is None):
            raise ValueError("budget: give exactly one of money or GPU-hours")

    def describe(self) -> str:
        if self.usd is not None:
            return format_usd(self.usd)
        assert self.gpu_hours is not None
        return f"{format_count(self.gpu_hours)} GPU-hours"


def parse_budget(text: str) -> Budget:
    """Parse ``--budget``: money (``$2M``, ``2e6usd``) or GPU time (``1.5e6gpu-h``)."""
    s = str(text).strip()
    low = s.lower().replace(" ", "")
    if "gpu" in low:
        return Budget(gpu_hours=parse_gpu_hours(s, "budget"))
    if low.startswith("$") or low.endswith("usd") or low.endswith("$"):
        return Budget(usd=parse_money_usd(s, "budget"))
    raise ValueError(
        f"budget: {text!r} has no unit; write money as $2M or 2e6usd, or GPU time as 1.5e6gpu-h"
    )


_DURATION_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "min": MINUTE_S,
    "h": HOUR_S,
    "hr": HOUR_S,
    "hours": HOUR_S,
    "d": DAY_S,
    "day": DAY_S,
    "days": DAY_S,
    "w": WEEK_S,
    "week": WEEK_S,
    "weeks": WEEK_S,
}


def parse_duration_s(text: str | float, what: str = "duration", default_unit: str = "d") -> float:
    """Parse a duration: ``30d``, ``12h``, ``2w``, ``90min``; a bare number uses ``default_unit``."""
    s = str(text).strip().lower().replace(" ", "")
    m = re.fullmatch(rf"({_NUMBER})([a-z]*)", s)
    unit = (m.group(2) if m else "") or default_unit
    if not m or unit not in _DURATION_UNITS:
        raise ValueError(f"{what}: {text!r} is not a duration; write e.g. 30d, 12h, 2w or 90min")
    value = _number(m.group(1), what) * _DURATION_UNITS[unit]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what}: must be positive, got {text!r}")
    return value


def format_count(x: float) -> str:
    """175e9 -> '175B'; 1.5e12 -> '1.5T'."""
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def format_usd(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"${x / scale:.3g}{suffix}"
    return f"${x:,.2f}"


def format_duration(seconds: float) -> str:
    """Human duration: '850 ms', '12.3 s', '4.2 h', '31.5 d'."""
    if not math.isfinite(seconds):
        return "-"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 2 * HOUR_S:
        return f"{seconds / MINUTE_S:.3g} min"
    if seconds < 2 * DAY_S:
        return f"{seconds / HOUR_S:.3g} h"
    return f"{seconds / DAY_S:.3g} d"


def format_bytes(n: float) -> str:
    if not math.isfinite(n):
        return "-"
    for scale, suffix in ((TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {suffix}"
    return f"{n:.0f} B"
