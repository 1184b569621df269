"""Timing one op: warm-up, then repeated samples; the median and the spread.

On a GPU each sample is bracketed by CUDA events on the current stream (the kernels'
own time, no host jitter); on a CPU by ``time.perf_counter``, or, when torch runs on one
thread, by that thread's CPU time (``time.thread_time``): the op's own time, as a CUDA
event gives it, unaffected by other processes taking the core away on a busy machine. A sample repeats the op
``inner`` times back to back, ``inner`` chosen so that a sample lasts at least
``min_sample_s`` (short kernels are below the timers' resolution otherwise).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_INNER = 10_000


@dataclass(frozen=True)
class Timing:
    """One measurement: median seconds per call, relative interquartile spread, samples."""

    median_s: float
    spread: float  # (q75 - q25) / median over the samples
    samples: int
    inner: int  # calls per sample


class Timer:
    """Times callables on one device (``torch.device``)."""

    def __init__(self, torch: Any, device: Any, warmup: int, repeats: int, min_sample_s: float):
        self.torch = torch
        self.cuda = device.type == "cuda"
        # one torch thread: ops run on this thread, so its CPU time is the ops' time
        self.clock = (
            time.thread_time
            if not self.cuda and torch.get_num_threads() == 1
            else time.perf_counter
        )
        self.warmup = warmup
        self.repeats = repeats
        self.min_sample_s = min_sample_s

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def _sample(self, fn: Callable[[], Any], inner: int) -> float:
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3  # ms -> s
        t0 = self.clock()
        for _ in range(inner):
            fn()
        return self.clock() - t0

    @property
    def clock_name(self) -> str:
        if self.cuda:
            return "CUDA events"
        return "thread CPU time" if self.clock is time.thread_time else "wall clock (perf_counter)"

    def time(
        self,
        fn: Callable[[], Any],
        agree: Callable[[int], int] | None = None,
        before_sample: Callable[[], Any] | None = None,
    ) -> Timing:
        """Time ``fn``. Collectives pass ``agree`` (every rank must run the same number of
        calls: the ranks agree on ``inner``) and ``before_sample`` (a barrier, untimed)."""
        fn()  # first call: allocations, kernel selection
        self.sync()
        estimate = max(self._sample(fn, 1), 1e-7)
        inner = int(min(MAX_INNER, max(1, math.ceil(self.min_sample_s / estimate))))
        if agree is not None:
            inner = agree(inner)
        for _ in range(self.warmup):
            self._sample(fn, inner)
        samples = []
        for _ in range(self.repeats):
            if before_sample is not None:
                before_sample()
                self.sync()
            samples.append(self._sample(fn, inner) / inner)
        median = statistics.median(samples)
        if len(samples) >= 2:
            q = statistics.quantiles(samples, n=4, method="inclusive")
            spread = (q[2] - q[0]) / median
        else:
            spread = 0.0
        return Timing(median_s=median, spread=spread, samples=len(samples), inner=inner)
