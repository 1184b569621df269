"""A sweep's folder: one JSON record per finished scenario, written atomically.

Layout::

    <folder>/sweep.json              the sweep's identity (fingerprint of its scenario ids)
    <folder>/scenarios/<id>.json     one record per finished scenario (ok, infeasible, failed)
    <folder>/summary.parquet|csv|png the combined table and plot
    <folder>/.lock                   held (flock) while a run writes here

A record appears only once complete (temp file + rename), so a crash, a SIGKILL or a
Ctrl-C loses at most the scenarios in flight; a re-run skips every scenario with a record.
A folder written by another sweep (another fingerprint) is refused, never mixed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from vtrain_opt import __version__
from vtrain_opt.io import write_json_atomic
from vtrain_opt.studies.sweepfile import FORMAT, Sweep

MANIFEST = "sweep.json"
RECORDS = "scenarios"
LOCK = ".lock"


class SweepStore:
    """The folder of one sweep. Use as a context manager to hold its lock while running."""

    def __init__(self, folder: str | Path, sweep: Sweep) -> None:
        self.folder = Path(folder)
        self.sweep = sweep
        self._lock_fd: int | None = None

    # ---- identity ---------------------------------------------------------------------------
    def check(self, create: bool = True) -> None:
        """Refuse a folder that belongs to another sweep; write the manifest if new."""
        f = self.folder
        if f.exists() and not f.is_dir():
            raise ValueError(f"sweep folder {str(f)!r} exists and is not a folder")
        manifest = f / MANIFEST
        if manifest.is_file():
            try:
                info = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"sweep folder {str(f)!r}: unreadable {MANIFEST} ({e})") from None
            if info.get("fingerprint") != self.sweep.fingerprint:
                raise ValueError(
                    f"sweep folder {str(f)!r} holds the results of another sweep file "
                    f"({info.get('name')!r} from {info.get('source')!r}, {info.get('scenarios')} "
                    f"scenarios), not of {self.sweep.source!r} ({len(self.sweep)} scenarios); "
                    "give another folder with --out, or delete that one"
                )
            return
        if f.is_dir() and any(f.iterdir()):
            raise ValueError(
                f"sweep folder {str(f)!r} is not empty and holds no {MANIFEST}: not a sweep "
                "folder; give another folder with --out"
            )
        if not create:
            return
        try:
            (f / RECORDS).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"sweep folder {str(f)!r}: cannot be created ({e.strerror})") from None
        write_json_atomic(
            manifest,
            {
                "format": FORMAT,
                "name": self.sweep.name,
                "description": self.sweep.description,
                "source": self.sweep.source,
                "fingerprint": self.sweep.fingerprint,
                "scenarios": len(self.sweep),
                "ids": [s.id for s in self.sweep.scenarios],
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "vtrain_opt": __version__,
            },
        )

    # ---- lock --------------------------------------------------------------------------------
    def __enter__(self) -> SweepStore:
        self.check()
        (self.folder / RECORDS).mkdir(parents=True, exist_ok=True)
        self._lock()
        self._clean_temp()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, the atomic writes still keep records whole
            return
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ValueError(
                f"sweep folder {str(self.folder)!r}: another sweep run is writing there; "
                "wait for it to end"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _clean_temp(self) -> None:
        """Temp files of records that a killed run never renamed into place."""
        for tmp in (self.folder / RECORDS).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    # ---- records -----------------------------------------------------------------------------
    def path(self, scenario_id: str) -> Path:
        return self.folder / RECORDS / f"{scenario_id}.json"

    def read(self, scenario_id: str) -> dict[str, Any] | None:
        """The record of a finished scenario, or None (missing or unreadable: run it again)."""
        try:
            rec = json.loads(self.path(scenario_id).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return rec if isinstance(rec, dict) and rec.get("id") == scenario_id else None

    def write(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.path(record["id"]), record)

    def records(self) -> dict[str, dict[str, Any]]:
        """Records of this sweep's scenarios that exist, by id (in the sweep's order)."""
        out = {}
        for s in self.sweep.scenarios:
            rec = self.read(s.id)
            if rec is not None:
                out[s.id] = rec
        return out
