"""Log-axis labels of the commands' plots: plain numbers, never crowded."""

import matplotlib
import pytest

from vtrain_opt.plotting import plain_log_ticks


def labels(lo: float, hi: float) -> list[str]:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        plain_log_ticks(ax, "x")
        fig.canvas.draw()
        ticks = ax.xaxis.get_majorticklabels() + ax.xaxis.get_minorticklabels()
        shown = [(t.get_position()[0], t.get_text()) for t in ticks if t.get_text()]
        return [text for _, text in sorted(shown) if lo <= float(text) <= hi]
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (2.0, 60.0, ["2", "5", "10", "20", "50"]),  # 1-2-5 within three decades
        (0.05, 80.0, ["0.1", "1", "10"]),  # beyond: the powers of ten only
        (2.2, 9.5, ["3", "4", "5", "6", "7", "8", "9"]),  # under a decade: every mantissa
    ],
)
def test_log_axes_get_plain_uncrowded_labels(lo, hi, expected):
    assert labels(lo, hi) == expected
