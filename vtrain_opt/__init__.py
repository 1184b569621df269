"""vtrain_opt: predict and optimize distributed LLM training plans.

The public API: specs (models, GPUs, clusters, plans), profiles, and ``simulate``.
"""

__version__ = "0.1.0"

from vtrain_opt.profiles import Profile, load_profile, profile_names
from vtrain_opt.sim.step import SimContext, make_context, simulate, simulate_arrays
from vtrain_opt.sim.timeline import reference
from vtrain_opt.spec import (
    RECOMPUTE_MODES,
    ClusterSpec,
    GPUSpec,
    ModelSpec,
    ParallelPlan,
    PlanBatch,
    Setup,
    get_cluster,
    get_gpu,
    get_model,
    gpu_names,
    load_model,
    model_names,
)

__all__ = [
    "RECOMPUTE_MODES",
    "ClusterSpec",
    "GPUSpec",
    "ModelSpec",
    "ParallelPlan",
    "PlanBatch",
    "Profile",
    "Setup",
    "SimContext",
    "__version__",
    "get_cluster",
    "get_gpu",
    "get_model",
    "gpu_names",
    "load_model",
    "load_profile",
    "make_context",
    "model_names",
    "profile_names",
    "reference",
    "simulate",
    "simulate_arrays",
]
