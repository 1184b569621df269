"""Shared matplotlib helpers for the commands' plots."""

from __future__ import annotations

import math
from typing import Any


def plain_log_ticks(ax: Any, axes: str = "xy") -> None:
    """Label log axes with plain numbers (0.5, 1, 2, 5, 10) instead of 2x10^0, and never
    crowd them: every mantissa on a span under a decade, 1-2-5 up to three decades, the
    powers of ten beyond. Call it once the limits are set."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    for name in axes:
        axis = ax.xaxis if name == "x" else ax.yaxis
        lo, hi = sorted(ax.get_xlim() if name == "x" else ax.get_ylim())
        decades = math.log10(hi / lo) if lo > 0 else math.inf
        labelled = (2, 3, 4, 5, 6, 7, 8, 9) if decades < 1 else (2, 5) if decades <= 3 else ()
        axis.set_major_locator(LogLocator(base=10))
        axis.set_major_formatter(plain)
        axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
        if labelled:
            axis.set_minor_formatter(
                FuncFormatter(
                    lambda value, _pos, keep=labelled: (
                        f"{value:g}"
                        if round(value / 10 ** math.floor(math.log10(value))) in keep
                        else ""
                    )
                )
            )
        else:
            axis.set_minor_formatter(NullFormatter())
