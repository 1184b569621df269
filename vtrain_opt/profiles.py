"""Device profiles: how fast real kernels and collectives run on one kind of GPU.

A profile holds a few bounded, physical parameters (efficiencies between 0 and 1,
overheads in seconds) that the op-time model in ``sim/ops.py`` combines with the
GPU's datasheet figures. A *measured* profile also carries op-latency tables
written by ``python -m vtrain_opt profile`` (their layout and validation in
``profile_tables.py``); ops covered by a table are read from them and the analytical
model covers everything else. Every value carries its source.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vtrain_opt.profile_tables import parse_tables
from vtrain_opt.resources import data_dir

PROFILE_FORMAT = "vtrain_opt.profile/1"


@dataclass(frozen=True)
class ParamDef:
    """A profile parameter: its physical meaning, unit and the bounds a fit may use."""

    name: str
    unit: str
    lower: float
    upper: float
    meaning: str


PARAM_DEFS: dict[str, ParamDef] = {
    p.name: p
    for p in (
        ParamDef(
            "gemm_efficiency",
            "fraction of dense peak",
            0.2,
            1.0,
            "fraction of the datasheet dense peak reached by large, well-shaped GEMMs",
        ),
        ParamDef(
            "gemm_k_half",
            "elements",
            0.0,
            2048.0,
            "inner dimension K at which a GEMM tile's main loop reaches half its efficiency "
            "(prologue/epilogue cost); efficiency factor K/(K+k_half)",
        ),
        ParamDef(
            "step_gemm_scale",
            "ratio",
            0.7,
            1.3,
            "time of a GEMM inside a real training step relative to the op model's (a measured "
            "table's isolated benchmark, or the analytical curve): clocks under sustained load, "
            "cuBLAS's kernel choice with the bias epilogue, cache state; 1 = as benchmarked",
        ),
        ParamDef(
            "attention_efficiency",
            "fraction of dense peak",
            0.1,
            1.0,
            "fraction of peak reached by the fused (flash) attention kernel",
        ),
        ParamDef(
            "memory_efficiency",
            "fraction of HBM bandwidth",
            0.2,
            1.0,
            "fraction of the datasheet HBM bandwidth reached by memory-bound kernels",
        ),
        ParamDef(
            "kernel_overhead_s",
            "s",
            0.0,
            50e-6,
            "fixed time added to every kernel: launch, ramp-up and tail",
        ),
        ParamDef(
            "nvlink_efficiency",
            "fraction of link bandwidth",
            0.2,
            1.0,
            "NCCL bus bandwidth inside a node as a fraction of the per-direction NVLink bandwidth",
        ),
        ParamDef(
            "network_efficiency",
            "fraction of NIC bandwidth",
            0.2,
            1.0,
            "NCCL bus bandwidth across nodes as a fraction of the adapters' line rate",
        ),
        ParamDef(
            "collective_latency_s",
            "s",
            0.0,
            500e-6,
            "fixed cost of one NCCL collective or send/recv (launch, handshake)",
        ),
        ParamDef(
            "collective_hbm_passes",
            "bytes per payload byte",
            0.0,
            8.0,
            "HBM traffic of a collective's copy and reduction kernels per byte of payload, "
            "counted at the datasheet HBM bandwidth (all-reduce; half of it for all-gather and "
            "reduce-scatter)",
        ),
        ParamDef(
            "host_layer_s",
            "s",
            0.0,
            10e-3,
            "host (CPU) time to dispatch one transformer layer's forward: Python, framework and "
            "kernel launches; the backward dispatches twice as much. A layer whose GPU work is "
            "shorter runs at the host's pace (launch-bound)",
        ),
        ParamDef(
            "torch_host_layer_s",
            "s",
            0.0,
            10e-3,
            "host (CPU) time to dispatch one transformer layer's forward in a plain PyTorch "
            "model (framework 'torch': nn.Linear, nn.LayerNorm, SDPA, ~20 ops through Python "
            "and the dispatcher); the backward dispatches twice as much",
        ),
        ParamDef(
            "unfused_softmax_host_ops",
            "layer ops",
            0.0,
            24.0,
            "host dispatch cost of PyTorch's unfused softmax path (upcast, scale, mask-fill, "
            "softmax, downcast and their autograd nodes), which Megatron takes when micro-batch "
            "x heads/tp is not a multiple of 4, beyond the one fused kernel: in units of the "
            "~24 ops a layer's forward dispatches (host_layer_s); at least its 4 extra kernels",
        ),
        ParamDef(
            "host_overlap",
            "exponent",
            1.0,
            16.0,
            "how well the host's dispatch overlaps the GPU's execution of a pass: its time is "
            "(host^k + gpu^k)^(1/k), from k=1 (no overlap) to large k (the longer of the two)",
        ),
        ParamDef(
            "host_collective_wait",
            "fraction",
            0.0,
            1.0,
            "share of a tensor-parallel collective's duration during which the host is blocked "
            "(0: the host dispatches ahead of collectives; 1: it waits for each to finish)",
        ),
        ParamDef(
            "node_straggler",
            "fraction",
            0.0,
            0.2,
            "spread (standard deviation, relative) of the GPU speed from node to node: a "
            "synchronous step waits for the slowest of its n nodes, so GPU work on n > 1 nodes "
            "takes 1 + node_straggler * E[max of n standard normals] times longer (in a "
            "pipeline, the steady state; the fill and drain run at the mean speed)",
        ),
        ParamDef(
            "microbatch_overhead_s",
            "s",
            0.0,
            20e-3,
            "framework time per micro-batch per pipeline stage (Python, scheduling)",
        ),
        ParamDef(
            "iteration_overhead_s",
            "s",
            0.0,
            1.0,
            "framework time per iteration outside the pipeline (grad clipping, loss scaling, "
            "bookkeeping)",
        ),
        ParamDef(
            "runtime_reserved_bytes",
            "bytes",
            0.0,
            16e9,
            "memory not available to the model: CUDA context, NCCL buffers, allocator slack",
        ),
    )
}

# Fixed (not fitted) shape constants of the GEMM model: candidate CTA tiles (m, n) and their
# relative efficiency, as cuBLAS picks smaller tiles to fill the GPU when a GEMM is small.
GEMM_TILES = ((256, 128, 1.0), (128, 128, 0.95), (128, 64, 0.85), (64, 64, 0.70))


@dataclass(frozen=True)
class Profile:
    """One device's profile: parameter values (SI units), their sources, optional op tables."""

    name: str
    gpu: str
    params: dict[str, float]
    sources: dict[str, str] = field(default_factory=dict)
    kind: str = "analytical"  # analytical | calibrated | derived | measured
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)  # measured op tables (profiler)
    fit: dict[str, Any] = field(default_factory=dict)  # calibration record, if fitted
    # a measured profile's device (GPUSpec fields + sources), so a device outside the GPU
    # catalog (e.g. a CPU) can be simulated: see spec/hardware.py:cluster_for_profile
    device: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = sorted(set(PARAM_DEFS) - set(self.params))
        if missing:
            raise ValueError(f"profile {self.name!r}: missing parameter(s) {', '.join(missing)}")
        for name, value in self.params.items():
            if name not in PARAM_DEFS:
                raise ValueError(
                    f"profile {self.name!r}: unknown parameter {name!r}; known: {', '.join(PARAM_DEFS)}"
                )
            d = PARAM_DEFS[name]
            if (
                not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not (d.lower <= value <= d.upper)
            ):
                raise ValueError(
                    f"profile {self.name!r}: parameter {name} = {value!r} is outside "
                    f"[{d.lower:g}, {d.upper:g}] ({d.unit})"
                )

    def __getattr__(self, name: str) -> float:
        # params as attributes: profile.gemm_efficiency
        params = self.__dict__.get("params", {})
        if name in params:
            return float(params[name])
        raise AttributeError(name)

    def with_params(self, **values: float) -> Profile:
        return replace(self, params={**self.params, **values})

    @property
    def id(self) -> str:
        """A short identity for result files: name, kind and fit date if any."""
        date = self.provenance.get("date") or self.fit.get("date") or ""
        return f"{self.name}:{self.kind}" + (f":{date}" if date else "")

    # ---- io -------------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": PROFILE_FORMAT,
            "name": self.name,
            "gpu": self.gpu,
            "kind": self.kind,
            "description": self.description,
            "provenance": self.provenance,
            "params": {
                k: {
                    "value": self.params[k],
                    "unit": PARAM_DEFS[k].unit,
                    "bounds": [PARAM_DEFS[k].lower, PARAM_DEFS[k].upper],
                    "source": self.sources.get(k, ""),
                }
                for k in PARAM_DEFS
            },
        }
        if self.fit:
            out["fit"] = self.fit
        if self.device:
            out["device"] = self.device
        if self.tables:
            out["tables"] = self.tables
        return out

    @classmethod
    def from_json_dict(cls, data: Any, origin: str = "profile") -> Profile:
        if not isinstance(data, dict):
            raise ValueError(f"{origin}: not a profile (expected a JSON object)")
        fmt = data.get("format")
        if fmt != PROFILE_FORMAT:
            raise ValueError(f"{origin}: key 'format' is {fmt!r}, expected {PROFILE_FORMAT!r}")
        for key in ("name", "gpu", "params"):
            if key not in data:
                raise ValueError(f"{origin}: missing key {key!r}")
        raw = data["params"]
        if not isinstance(raw, dict):
            raise ValueError(f"{origin}: key 'params' must be an object")
        params: dict[str, float] = {}
        sources: dict[str, str] = {}
        for k, v in raw.items():
            value = v.get("value") if isinstance(v, dict) else v
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(
                    f"{origin}: key 'params.{k}' must be a number (or {{value: number}})"
                )
            params[k] = float(value)
            if isinstance(v, dict) and v.get("source"):
                sources[k] = str(v["source"])
        _fill_new_params(params, sources, str(data["gpu"]), origin)
        device = data.get("device") or {}
        if device:
            from vtrain_opt.spec.hardware import GPUSpec

            GPUSpec.from_dict(device, name=str(data["gpu"]), owner=f"{origin}: key 'device'")
        tables = data.get("tables") or {}
        if tables:
            parse_tables(tables, origin)
        try:
            return cls(
                name=str(data["name"]),
                gpu=str(data["gpu"]),
                params=params,
                sources=sources,
                kind=str(data.get("kind", "analytical")),
                description=str(data.get("description", "")),
                provenance=dict(data.get("provenance") or {}),
                tables=dict(tables),
                fit=dict(data.get("fit") or {}),
                device=dict(device),
            )
        except ValueError as e:
            raise ValueError(f"{origin}: {e}") from None


def _fill_new_params(
    params: dict[str, float], sources: dict[str, str], gpu: str, origin: str
) -> None:
    """Give a profile written before a parameter existed that parameter from the GPU's
    shipped profile, so saved (e.g. measured) profiles keep loading; say so in its source."""
    missing = [k for k in PARAM_DEFS if k not in params]
    if not missing:
        return
    shipped = data_dir("profiles") / f"{gpu}.json"
    if not shipped.is_file():
        raise ValueError(
            f"{origin}: missing parameter(s) {', '.join(missing)} (and no shipped profile of "
            f"{gpu!r} to take them from)"
        )
    base = json.loads(shipped.read_text())["params"]
    for k in missing:
        entry = base.get(k)
        if entry is None:
            raise ValueError(f"{origin}: missing parameter {k!r}")
        params[k] = float(entry["value"] if isinstance(entry, dict) else entry)
        sources[k] = (
            f"not in this profile (written before the parameter existed): taken from the shipped {gpu} profile"
        )


def profile_names() -> list[str]:
    return sorted(p.stem for p in data_dir("profiles").glob("*.json"))


def load_profile(name_or_path: str | None = None, gpu: str | None = None) -> Profile:
    """Load a profile by name (``profiles/NAME.json``), by file path, or the GPU's default."""
    if name_or_path is None:
        if gpu is None:
            raise ValueError("load_profile: give a profile name/path or a GPU name")
        name_or_path = gpu
    p = Path(name_or_path)
    if p.suffix != ".json" and not p.is_file():
        candidate = data_dir("profiles") / f"{name_or_path}.json"
        if not candidate.is_file():
            raise ValueError(
                f"unknown profile {name_or_path!r}; shipped profiles: {', '.join(profile_names())} "
                "(or give a path to a profile JSON file)"
            )
        p = candidate
    try:
        text = p.read_text()
    except OSError as e:
        raise ValueError(f"profile file {str(p)!r}: cannot be read ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"profile file {str(p)!r}: corrupt or truncated JSON ({e.msg} at line {e.lineno})"
        ) from None
    return Profile.from_json_dict(data, origin=f"profile file {str(p)!r}")
