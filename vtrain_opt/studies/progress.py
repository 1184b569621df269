"""Progress of a long study on stderr: done / total, failures and an ETA.

On a terminal a rich progress bar; otherwise (a log file, an overnight ``nohup`` run) one
plain line every ``LINE_EVERY_S`` seconds or tenth of the work (but at most one per
``MIN_GAP_S``), so logs stay short.
Nothing is written to stdout (``--json`` owns it).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from vtrain_opt.units import format_duration

LINE_EVERY_S = 30.0
# ... and at most one line per MIN_GAP_S (a run shorter than that prints none).
MIN_GAP_S = 5.0


class Progress:
    """Counts finished items of this run (items done before it are not timed)."""

    def __init__(
        self,
        what: str,
        total: int,
        already: int = 0,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.what = what
        self.total = total
        self.done = already
        self.failed = 0
        self._todo = max(0, total - already)
        self._ran = 0
        self._t0 = time.perf_counter()
        self._stream = stream or sys.stderr
        self._enabled = enabled and self._todo > 0
        self._bar: Any = None
        self._task: Any = None
        self._last_line = 0.0
        self._last_done = already
        if self._enabled and self._stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                console=Console(file=self._stream),
                transient=True,
            )
            self._task = self._bar.add_task(what, total=total, completed=already, note="")
            self._bar.start()

    def eta_s(self) -> float | None:
        """Seconds left at this run's rate so far (None before the first item)."""
        if self._ran == 0:
            return None
        rate = self._ran / (time.perf_counter() - self._t0)
        return (self.total - self.done) / rate

    def line(self) -> str:
        eta = self.eta_s()
        parts = [f"{self.what}: {self.done}/{self.total} done"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA -")
        return ", ".join(parts)

    def advance(self, failed: bool = False) -> None:
        self.done += 1
        self._ran += 1
        self.failed += int(failed)
        if not self._enabled:
            return
        if self._bar is not None:
            eta = self.eta_s()
            note = (f"{self.failed} failed  " if self.failed else "") + (
                f"ETA {format_duration(eta)}" if eta is not None else ""
            )
            self._bar.update(self._task, completed=self.done, note=note)
            return
        now = time.perf_counter()
        step = max(1, self._todo // 10)
        since = now - max(self._last_line, self._t0)
        if since >= LINE_EVERY_S or (since >= MIN_GAP_S and self.done - self._last_done >= step):
            self._last_line, self._last_done = now, self.done
            print(self.line(), file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
