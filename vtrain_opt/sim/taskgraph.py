"""A small task-graph simulator: tasks on ordered streams with dependencies.

Each task runs on one stream (a GPU's compute stream, a link, ...) for a fixed
duration. It starts when the previous task of its stream has finished and every task
it depends on has finished. Tasks of a stream run in the order they were added.
Times are resolved in topological order (Kahn), so the result is exactly the
as-soon-as-possible schedule of the event-driven execution.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Task:
    name: str
    stream: str
    duration_s: float
    deps: list[str] = field(default_factory=list)
    category: str = ""
    args: dict[str, object] = field(default_factory=dict)
    start_s: float = float("nan")

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


class TaskGraph:
    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self._stream_last: dict[str, str] = {}
        self._stream_prev: dict[str, str] = {}

    def add(
        self,
        name: str,
        stream: str,
        duration_s: float,
        deps: list[str] | None = None,
        category: str = "",
        **args: object,
    ) -> str:
        assert name not in self.tasks, f"duplicate task {name}"
        assert duration_s >= 0, f"negative duration for {name}"
        self.tasks[name] = Task(
            name, stream, float(duration_s), list(deps or []), category, dict(args)
        )
        if stream in self._stream_last:
            self._stream_prev[name] = self._stream_last[stream]
        self._stream_last[stream] = name
        return name

    def run(self) -> float:
        """Resolve start times; return the makespan. Raises on a dependency cycle."""
        preds: dict[str, list[str]] = {}
        for name, task in self.tasks.items():
            p = [d for d in task.deps]
            for d in p:
                if d not in self.tasks:
                    raise KeyError(f"task {name} depends on unknown task {d}")
            if name in self._stream_prev:
                p.append(self._stream_prev[name])
            preds[name] = p
        succs: dict[str, list[str]] = {n: [] for n in self.tasks}
        indeg = {n: len(p) for n, p in preds.items()}
        for n, p in preds.items():
            for d in p:
                succs[d].append(n)
        ready = deque(n for n, k in indeg.items() if k == 0)
        done = 0
        makespan = 0.0
        while ready:
            n = ready.popleft()
            task = self.tasks[n]
            task.start_s = max((self.tasks[d].end_s for d in preds[n]), default=0.0)
            makespan = max(makespan, task.end_s)
            done += 1
            for s in succs[n]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    ready.append(s)
        if done != len(self.tasks):
            stuck = [n for n, k in indeg.items() if k > 0][:5]
            raise RuntimeError(f"task graph has a cycle or deadlock near {stuck}")
        return makespan

    def last_on(self, stream: str) -> str | None:
        """The task added last to ``stream`` (None while it has none)."""
        return self._stream_last.get(stream)

    def stream_end_s(self, stream: str) -> float:
        last = self._stream_last.get(stream)
        return self.tasks[last].end_s if last else 0.0

    def chrome_trace(self, process_names: dict[str, str] | None = None) -> dict[str, object]:
        """Chrome/Perfetto trace JSON: one process per stream prefix, one thread per stream."""
        events: list[dict[str, object]] = []
        pids: dict[str, int] = {}
        tids: dict[str, int] = {}
        for task in self.tasks.values():
            proc = task.stream.split("/")[0]
            pid = pids.setdefault(proc, len(pids) + 1)
            tid = tids.setdefault(task.stream, len(tids) + 1)
            events.append(
                {
                    "name": task.name,
                    "cat": task.category,
                    "ph": "X",
                    "ts": task.start_s * 1e6,
                    "dur": task.duration_s * 1e6,
                    "pid": pid,
                    "tid": tid,
                    "args": task.args,
                }
            )
        for proc, pid in pids.items():
            label = (process_names or {}).get(proc, proc)
            events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": label}})
        for stream, tid in tids.items():
            pid = pids[stream.split("/")[0]]
            events.append(
                {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": stream}}
            )
        return {"traceEvents": events, "displayTimeUnit": "ms"}
