"""Shared fixtures. Ray, when a test needs it, is started once per session and shut down."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The tests run on private Ray runtimes: a RAY_ADDRESS in the developer's shell (it counts as
# --ray-address) must not send them to a cluster. Tests about RAY_ADDRESS set it themselves.
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a clean skip where it is absent (a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared measurement data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """A private local 2-CPU Ray runtime for the whole session, shut down at the end."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(
            address="local",  # a new runtime, whatever stale /tmp/ray state the machine has
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=200 * 2**20,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()
