"""The shared inputs of one simulation: model, cluster, profile and setup, defaults resolved.

Kept apart from the core (``sim/step.py``) and the per-plan costs (``sim/plan_costs.py``)
so both, the search and the replay can build and pass a context without importing each
other.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from vtrain_opt.profiles import Profile, load_profile
from vtrain_opt.sim.ops import OpModel
from vtrain_opt.spec.hardware import ClusterSpec
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.setup import Setup


@dataclass(frozen=True)
class SimContext:
    """Everything shared by the plans of one simulation: model, cluster, profile, setup."""

    model: ModelSpec
    cluster: ClusterSpec
    profile: Profile
    setup: Setup

    @cached_property
    def ops(self) -> OpModel:
        return OpModel(self.profile, self.cluster, self.setup)


def make_context(
    model: ModelSpec,
    cluster: ClusterSpec,
    profile: Profile | str | None = None,
    setup: Setup | None = None,
) -> SimContext:
    """Resolve defaults: the GPU's shipped profile, bf16 with flash attention where supported."""
    if not isinstance(profile, Profile):
        profile = load_profile(profile, gpu=cluster.gpu.name)
    if setup is None:
        setup = Setup(
            dtype=_default_dtype(cluster, profile),
            attention="flash" if cluster.gpu.flash_attention else "unfused",
        )
    if setup.attention == "flash" and not cluster.gpu.flash_attention:
        raise ValueError(
            f"{cluster.gpu.name} has no FlashAttention kernels; use attention 'unfused'"
        )
    if setup.fp8 and "fp8" not in cluster.gpu.peak_flop_per_s:
        raise ValueError(f"{cluster.gpu.name} has no fp8 peak; FP8 needs Hopper or Blackwell")
    cluster.gpu.peak(setup.compute_dtype)  # raises if the GPU has no such dtype
    if profile.tables:
        device = profile.provenance.get("device", profile.gpu)
        if profile.gpu != cluster.gpu.name:
            raise ValueError(
                f"profile {profile.name!r} was measured on {device} ({profile.gpu}), not "
                f"{cluster.gpu.name}; use a profile of {cluster.gpu.name} or --gpu {profile.gpu}"
            )
        if setup.compute_dtype not in profile.tables:
            raise ValueError(
                f"profile {profile.name!r} was measured in {', '.join(profile.tables)}, not "
                f"{setup.compute_dtype}; use --dtype {next(iter(profile.tables))} or another "
                "profile"
            )
    return SimContext(model, cluster, profile, setup)


def _default_dtype(cluster: ClusterSpec, profile: Profile) -> str:
    """bf16 where the GPU has it, else fp16; a device with neither (a measured CPU profile
    has only the dtypes it was measured in) gets its measured dtype."""
    peaks = cluster.gpu.peak_flop_per_s
    usable = [d for d in ("bf16", "fp16", "fp32") if d in peaks]
    if not usable or usable[0] != "fp32":
        return "bf16" if "bf16" in peaks else "fp16"
    measured = [d for d in usable if d in profile.tables]
    return measured[0] if measured else usable[0]
