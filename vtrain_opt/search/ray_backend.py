"""Where a search evaluates its work: in this process, or on Ray workers.

``InProcess`` never imports Ray (the studies code calls searches from inside Ray tasks).
``RayBackend`` starts a small private Ray runtime (a few CPUs, no dashboard, a small object
store: it fits a 2-core laptop) or joins an existing cluster with ``address``; it shuts
down only a runtime it started itself. Both run ``map`` in submission order, so results
do not depend on the backend.

A private runtime is asked for as one (Ray's ``address="local"``): whatever a crashed or
killed Ray left behind (``/tmp/ray/ray_current_cluster``) is never joined by accident.
A cluster is joined only when asked: ``address`` (``--ray-address``), or ``RAY_ADDRESS``
in the environment, Ray's own convention (Ray Jobs set it), which counts as ``address``.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

# Local runtime settings: enough for a 2-core machine, no dashboard.
OBJECT_STORE_BYTES = 200 * 2**20
CONNECT_TIMEOUT_S = 5.0
# Ray's variable naming the cluster to join (set by Ray Jobs); it counts as --ray-address
RAY_ADDRESS_ENV = "RAY_ADDRESS"


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster to join: ``address`` (``--ray-address``), else ``RAY_ADDRESS`` from
    the environment, else None (a private local runtime; so is Ray's word ``'local'``)."""
    address = (address or os.environ.get(RAY_ADDRESS_ENV, "")).strip() or None
    return None if address == "local" else address


def _flag(given: str | None, address: str) -> str:
    """How the user named ``address``, for the one-line errors."""
    if given and given.strip() != os.environ.get(RAY_ADDRESS_ENV, "").strip():
        return "--ray-address"
    return RAY_ADDRESS_ENV


class Backend(Protocol):
    workers: int
    name: str

    def put(self, obj: Any) -> Any: ...

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[Any]: ...

    def close(self) -> None: ...


class InProcess:
    """Run everything here, one call after the other."""

    workers = 0
    name = "in-process"

    def put(self, obj: Any) -> Any:
        return obj

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        for args in calls:
            yield fn(*args)

    def close(self) -> None:
        pass

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RayBackend:
    """Run calls as Ray tasks, at most ``2 x workers`` in flight, results in order."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        import ray

        self._ray = ray
        self._started = False
        given, address = address, cluster_address(address)
        flag = _flag(given, address) if address else ""
        if address:
            _check_reachable(address, flag)
        if ray.is_initialized():
            pass  # reuse the caller's runtime (a test fixture, a driver script)
        elif address:
            try:
                # Ray's C++ client logs every failed connection attempt on stderr; keep that
                # noise back and show it only if the connection works (one line otherwise)
                with _captured_stderr() as replay:
                    ray.init(
                        address=address,
                        log_to_driver=False,
                        configure_logging=False,
                        include_dashboard=False,
                    )
                    replay.ok = True
            except Exception as e:  # Ray raises ConnectionError, RuntimeError, AuthenticationError
                raise ValueError(
                    f"{flag} {address!r}: cannot join the Ray cluster: {_first_line(e)}"
                ) from None
            self._started = True
        else:
            # A private local runtime: no token needed (Ray 2.60 enables token auth by default).
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(
                address="local",  # a new runtime, never a stale or foreign one
                num_cpus=max(1, workers or os.cpu_count() or 1),
                include_dashboard=False,
                object_store_memory=OBJECT_STORE_BYTES,
                log_to_driver=False,
                configure_logging=False,
            )
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, min(workers, cpus) if workers else cpus)
        self._remote: dict[Callable[..., Any], Any] = {}

    def put(self, obj: Any) -> Any:
        return self._ray.put(obj)

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(num_cpus=1)(fn)
        pending: deque[Any] = deque()
        it = iter(calls)
        limit = 2 * self.workers
        for args in it:
            pending.append(remote.remote(*args))
            if len(pending) >= limit:
                yield self._ray.get(pending.popleft())
        while pending:
            yield self._ray.get(pending.popleft())

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Replay:
    ok = False


@contextmanager
def _captured_stderr() -> Iterator[_Replay]:
    """Redirect file descriptor 2 (C++ libraries write there) to a temporary file; write
    what was captured back to stderr only when the block marks ``ok``."""
    replay = _Replay()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield replay
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if replay.ok:
                tmp.seek(0)
                sys.stderr.write(tmp.read().decode(errors="replace"))


def open_backend(workers: int, address: str | None = None) -> InProcess | RayBackend:
    """``workers == 0`` and no address: in-process, even with ``RAY_ADDRESS`` set (the
    studies run their searches so inside Ray tasks); otherwise Ray: a private runtime, or
    the cluster at ``address`` or ``RAY_ADDRESS``."""
    if workers < 0:
        raise ValueError(f"workers: must be 0 (in-process) or more, got {workers}")
    if workers == 0 and not address:
        return InProcess()
    return RayBackend(workers or None, address)


def _check_reachable(address: str, flag: str = "--ray-address") -> None:
    """Fail fast with one line when nothing listens at ``address`` (Ray would retry long)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{flag} {address!r}: expected HOST:PORT, ray://HOST:PORT or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ValueError(
            f"{flag} {address!r}: cannot reach the Ray cluster ({e.strerror or e})"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
