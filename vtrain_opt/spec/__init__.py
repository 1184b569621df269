"""Frozen, validated descriptions of models, hardware and parallel plans."""

from vtrain_opt.spec.hardware import ClusterSpec, GPUSpec, get_cluster, get_gpu, gpu_names
from vtrain_opt.spec.model import ModelSpec, get_model, load_model, model_names
from vtrain_opt.spec.plan import RECOMPUTE_MODES, ParallelPlan, PlanBatch
from vtrain_opt.spec.setup import Setup

__all__ = [
    "RECOMPUTE_MODES",
    "ClusterSpec",
    "GPUSpec",
    "ModelSpec",
    "ParallelPlan",
    "PlanBatch",
    "Setup",
    "get_cluster",
    "get_gpu",
    "get_model",
    "gpu_names",
    "load_model",
    "model_names",
]
