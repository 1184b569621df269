"""SearchSpace: which plans a search may pick, enumerated vectorized, knowing its own size.

A space is a model, one or more GPU types (each with its cluster and price), a range of
GPU counts (whole nodes by default), a set of global batches, and a candidate list per
plan dimension (a single value pins the dimension, several leave it free). The valid
plans are the cartesian product of the lists, filtered by the plan rules
(``PlanBatch.check``) and the GPU range; they are built with numpy in bounded chunks,
never one Python object per plan.

Enumeration runs in two levels so its cost tracks the valid plans, not the raw product:
the *core* rows (global batch, tp, pp, dp, micro-batch) satisfying the GPU range and
the batch divisibility, then each core row times the small grid of *extras*
(recompute, sequence parallelism, vpp, ZeRO, dp overlap), filtered by the full rules.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from vtrain_opt.profiles import load_profile
from vtrain_opt.search.space_rules import as_tuple as _tuple
from vtrain_opt.search.space_rules import check_values, shape_extras, split_ok, tp_ok
from vtrain_opt.search.space_rules import divisors as _divisors
from vtrain_opt.search.space_rules import powers_of_two as _powers_of_two
from vtrain_opt.search.targets import Target, check_dtypes, space_targets, target_setup
from vtrain_opt.search.targets import dtype_fields as _dtype_fields
from vtrain_opt.search.targets import setup_dict as _setup_dict
from vtrain_opt.sim.step import SimContext, make_context
from vtrain_opt.spec.hardware import ClusterSpec, cluster_for_profile, get_cluster, gpu_names
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import RECOMPUTE_MODES, PlanBatch
from vtrain_opt.spec.setup import Setup
from vtrain_opt.spec.stages import parse_stage_layers, split_variants

# Raw (core x extras) combinations per enumeration chunk: bounds memory (the simulator's
# outputs are ~30 float64 columns per plan, so 2**18 plans are ~60 MB).
CHUNK_PLANS = 1 << 19
DEFAULT_MAX_GPUS = 4096
# Largest virtual-stage count tried by default (Megatron uses a handful of chunks per GPU).
DEFAULT_MAX_VPP = 8

# The plan dimensions a space lists, in the order of PlanBatch's columns.
DIMENSIONS = (
    "tp",
    "cp",
    "pp",
    "micro_batch",
    "recompute",
    "sequence_parallel",
    "vpp",
    "zero",
    "dp_overlap",
)


@dataclass(frozen=True)
class GpuChoice:
    """One candidate GPU type: its cluster (node, network, price) and device profile."""

    name: str
    cluster: ClusterSpec
    profile: str | None = None  # a shipped profile name or a JSON path; None: the GPU's own

    @property
    def price_per_gpu_hour_usd(self) -> float:
        return self.cluster.price_per_gpu_hour_usd

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "profile": self.profile, "cluster": self.cluster.to_dict()}


def gpu_choice(
    name: str,
    *,
    price_per_gpu_hour_usd: float | None = None,
    gpus_per_node: int | None = None,
    inter_node_gbps: float | None = None,
    profile: str | None = None,
    nvlink_domain: int | None = None,
) -> GpuChoice:
    """A GPU with optional overrides of its default cluster: a catalog GPU, or the device a
    measured ``profile`` describes when that device is not in the catalog."""
    base = None
    if profile is not None and name.strip().lower() not in gpu_names():
        measured = load_profile(profile)
        if measured.gpu == name:
            base = cluster_for_profile(measured)
    cluster = (base or get_cluster(name)).with_overrides(
        gpus_per_node=gpus_per_node,
        inter_node_gbps=inter_node_gbps,
        price_per_gpu_hour_usd=price_per_gpu_hour_usd,
        nvlink_domain=nvlink_domain,
    )
    return GpuChoice(name=cluster.gpu.name, cluster=cluster, profile=profile)


@dataclass(frozen=True)
class SearchSpace:
    """The plans a search may pick. Build it with :meth:`create` (defaults resolved)."""

    model: ModelSpec
    gpus: tuple[GpuChoice, ...]
    min_gpus: int
    max_gpus: int
    gpu_step: int | None  # None: whole nodes of each GPU type
    global_batch: tuple[int, ...]
    tp: tuple[int, ...]
    pp: tuple[int, ...]
    micro_batch: tuple[int, ...]
    recompute: tuple[str, ...]
    sequence_parallel: tuple[bool, ...]
    vpp: tuple[int, ...]
    zero: tuple[int, ...]
    dp_overlap: tuple[bool, ...]
    tokens: float | None = None  # the default amount of work, if the space names one
    # the pipeline split: 'even', 'auto' (even and four uneven variants) or 'F,L'
    stage_layers: str = "even"
    setup: Setup | None = None  # None: each GPU's default (bf16 + flash where supported)
    # compute dtypes compared per plan (each GPU type runs once per dtype: search/targets.py);
    # empty: the setup's dtype alone
    dtypes: tuple[str, ...] = ()
    cp: tuple[int, ...] = (1,)  # context parallelism (the sequence over cp GPUs)
    ep: tuple[int, ...] = (1,)  # a MoE model's expert parallelism (sim/moe.py)
    etp: tuple[int, ...] = (1,)  # and expert tensor parallelism
    name: str = ""
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.gpus:
            raise ValueError("space.gpus: give at least one GPU type")
        names = [g.name for g in self.gpus]
        if len(set(names)) != len(names):
            raise ValueError(f"space.gpus: a GPU type is listed twice ({', '.join(names)})")
        if self.min_gpus < 1 or self.max_gpus < self.min_gpus:
            raise ValueError(
                f"space.num_gpus: need 1 <= min ({self.min_gpus}) <= max ({self.max_gpus})"
            )
        if self.gpu_step is not None and self.gpu_step < 1:
            raise ValueError(f"space.num_gpus.step: must be positive, got {self.gpu_step}")
        for dim in ("global_batch", *DIMENSIONS):
            if not getattr(self, dim):
                raise ValueError(f"space.{dim}: the candidate list is empty")
        object.__setattr__(self, "stage_layers", parse_stage_layers(self.stage_layers))
        check_values(self)
        check_dtypes(self)
        for g in self.gpus:
            step = self.step_of(g)
            if self.max_gpus // step * step < self.min_gpus:
                raise ValueError(
                    f"space.num_gpus: no multiple of {step} ({g.name} "
                    f"{'node' if self.gpu_step is None else 'step'}) lies between "
                    f"{self.min_gpus} and {self.max_gpus} GPUs"
                )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        model: ModelSpec,
        gpus: Sequence[str | GpuChoice] = ("a100-80gb",),
        *,
        min_gpus: int | None = None,
        max_gpus: int | None = None,
        gpu_step: int | None = None,
        global_batch: int | Sequence[int] | None = None,
        tp: int | Sequence[int] | None = None,
        pp: int | Sequence[int] | None = None,
        micro_batch: int | Sequence[int] | None = None,
        recompute: str | Sequence[str] | None = None,
        sequence_parallel: bool | Sequence[bool] | None = None,
        vpp: int | Sequence[int] | None = None,
        zero: int | Sequence[int] | None = None,
        dp_overlap: bool | Sequence[bool] | None = None,
        tokens: float | None = None,
        setup: Setup | None = None,
        name: str = "",
        description: str = "",
        stage_layers: str | Sequence[int] | None = None,
        dtypes: str | Sequence[str] | None = None,
        cp: int | Sequence[int] | None = None,
        ep: int | Sequence[int] | None = None,
        etp: int | Sequence[int] | None = None,
    ) -> SearchSpace:
        """A space with every unset dimension at its default (see docs/spaces.md).

        Defaults: all GPU counts from one node to 4,096 in whole nodes; the model's
        catalog global batch; tp the powers of two up to the NVLink domain (the node on
        today's clusters, 72 GPUs on GB200 NVL72) that divide the heads; pp every divisor
        of the layers; micro-batches the powers of two up to the global batch; every
        recompute mode; sequence parallelism on and off; vpp 1 and each of 2..8 that some
        pp allows; ZeRO 0 to 3; gradient reduction overlapped. A plain PyTorch setup
        (framework 'torch') has no model parallelism: tp, pp and vpp default to 1 and
        sequence parallelism to off. ``stage_layers`` ('even', 'auto', 'F,L' or [F, L]):
        the pipeline split (``spec.stages.split_variants``); with a split other than even,
        the default pp and vpp are the values some variant of it allows. ``dtypes``: compute
        dtypes compared per plan (say bf16 and fp8; search/targets.py); one is the setup's.
        ``cp``, ``ep``, ``etp``: context, expert and expert tensor parallel sizes (default 1).
        """
        split = parse_stage_layers("even" if stage_layers is None else stage_layers)
        if setup is not None and setup.torch:
            tp = 1 if tp is None else tp
            pp = 1 if pp is None else pp
            vpp = 1 if vpp is None else vpp
            sequence_parallel = False if sequence_parallel is None else sequence_parallel
        choices = tuple(g if isinstance(g, GpuChoice) else gpu_choice(g) for g in gpus)
        if not choices:
            raise ValueError("space.gpus: give at least one GPU type")
        domain = max(g.cluster.domain_gpus for g in choices)  # tp stays on NVLink
        if global_batch is None:
            if model.global_batch is None:
                raise ValueError(
                    f"model {model.name!r} has no catalog global batch; give the global batch"
                )
            global_batch = model.global_batch
        gbs = _tuple(global_batch, int)
        max_n = DEFAULT_MAX_GPUS if max_gpus is None else int(max_gpus)
        min_n = int(min_gpus) if min_gpus is not None else 1
        if tp is None:
            tp = [t for t in _powers_of_two(domain) if tp_ok(model, t)]
        if pp is None:
            pp = [p for p in _divisors(model.num_layers) if p <= max_n]
            if split != "even":
                pp = [
                    p
                    for p in range(1, min(max_n, model.num_layers) + 1)
                    if split_ok(model, split, p, 1)
                ]
        pps = _tuple(pp, int)
        if micro_batch is None:
            micro_batch = _powers_of_two(max(gbs))
        if recompute is None:
            recompute = RECOMPUTE_MODES
        if sequence_parallel is None:
            sequence_parallel = (False, True)
        if vpp is None:
            vpp = [1] + [
                v
                for v in range(2, DEFAULT_MAX_VPP + 1)
                if any(p > 1 and split_ok(model, split, p, v) for p in pps)
            ]
        if zero is None:
            zero = (0, 1, 2, 3)
        if dp_overlap is None:
            dp_overlap = (True,)
        return cls(
            model=model,
            gpus=choices,
            min_gpus=min_n,
            max_gpus=max_n,
            gpu_step=None if gpu_step is None else int(gpu_step),
            global_batch=gbs,
            tp=_tuple(tp, int),
            pp=pps,
            micro_batch=_tuple(micro_batch, int),
            recompute=_tuple(recompute, str),
            sequence_parallel=_tuple(sequence_parallel, bool),
            vpp=_tuple(vpp, int),
            zero=_tuple(zero, int),
            dp_overlap=_tuple(dp_overlap, bool),
            tokens=tokens,
            name=name or model.name,
            description=description,
            stage_layers=split,
            **_dtype_fields(dtypes, setup, choices),
            cp=_tuple(1 if cp is None else cp, int),
            **{k: _tuple(1 if v is None else v, int) for k, v in (("ep", ep), ("etp", etp))},
        )

    def with_changes(self, **changes: Any) -> SearchSpace:
        """A copy with some fields replaced (validated again); ``None`` values are ignored."""
        kept = {k: v for k, v in changes.items() if v is not None}
        for key in ("global_batch", "tp", "cp", "pp", "micro_batch", "vpp", "zero", "ep", "etp"):
            if key in kept:
                kept[key] = _tuple(kept[key], int)
        for key in ("sequence_parallel", "dp_overlap"):
            if key in kept:
                kept[key] = _tuple(kept[key], bool)
        if "recompute" in kept:
            kept["recompute"] = _tuple(kept["recompute"], str)
        if "dtypes" in kept:
            kept.update(_dtype_fields(kept["dtypes"], kept.get("setup", self.setup), self.gpus))
        if "stage_layers" in kept:
            kept["stage_layers"] = split = parse_stage_layers(kept["stage_layers"])
            model = kept.get("model", self.model)
            if "pp" not in kept:  # the pipeline sizes the new split allows
                kept["pp"] = tuple(p for p in self.pp if split_ok(model, split, p, 1))
        return replace(self, **kept)

    # ---- what the space is ----------------------------------------------------------------
    def step_of(self, gpu: GpuChoice) -> int:
        """GPU-count granularity for this GPU type: the space's step, else one node."""
        return self.gpu_step if self.gpu_step is not None else gpu.cluster.gpus_per_node

    def free_dimensions(self) -> list[str]:
        dims = ["gpu"] if len(self.gpus) > 1 else []
        dims += ["num_gpus"] if self.max_gpus > self.min_gpus else []
        dims += ["global_batch"] if len(self.global_batch) > 1 else []
        dims += ["dtype"] if len(self.dtypes) > 1 else []
        return dims + [d for d in (*DIMENSIONS, "ep", "etp") if len(getattr(self, d)) > 1]

    def context(self, target: int) -> SimContext:
        """The simulator context of one target (a GPU type under one dtype; built once)."""
        ctx = self._contexts[target]
        assert ctx is not None, self.targets[target].unsupported
        return ctx

    @cached_property
    def _contexts(self) -> tuple[SimContext | None, ...]:
        return tuple(
            make_context(self.model, g.cluster, g.profile, target_setup(self, t)) if t.ok else None
            for t in self.targets
            for g in [self.gpus[t.gpu_index]]
        )

    @cached_property
    def targets(self) -> tuple[Target, ...]:
        """Each GPU type once per dtype of the space (one per GPU type without ``dtypes``)."""
        return space_targets(self)

    def gpu_of(self, target: int) -> int:
        """The GPU index of a target."""
        return self.targets[target].gpu_index

    def to_dict(self) -> dict[str, Any]:
        """Every input that defines the space (for best.json and the study's identity)."""
        return {
            "name": self.name,
            "model": self.model.to_dict(),
            "gpus": [g.to_dict() for g in self.gpus],
            "num_gpus": {"min": self.min_gpus, "max": self.max_gpus, "step": self.gpu_step},
            "global_batch": list(self.global_batch),
            **{d: list(getattr(self, d)) for d in DIMENSIONS if d != "cp"},
            **({"cp": list(self.cp)} if self.cp != (1,) else {}),  # earlier fingerprints stay
            **{k: list(getattr(self, k)) for k in ("ep", "etp") if getattr(self, k) != (1,)},
            "tokens": self.tokens,
            "setup": None if self.setup is None else _setup_dict(self.setup),
            **({"dtypes": list(self.dtypes)} if self.dtypes else {}),
            # only when not even: the fingerprints of earlier spaces stay
            **({} if self.stage_layers == "even" else {"stage_layers": self.stage_layers}),
        }

    def fingerprint(self) -> str:
        """A short stable hash of :meth:`to_dict` (names a study of this space)."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    # ---- membership (shared by enumeration and sampled plans) ------------------------------
    def member_mask(self, gpu_index: int, batch: PlanBatch) -> np.ndarray:
        """Which plans of ``batch`` belong to the space on GPU type ``gpu_index`` (N,)."""
        n = batch.num_gpus
        step = self.step_of(self.gpus[self.gpu_of(gpu_index)])
        return (
            (batch.check(self.model) == 0)
            & (n >= self.min_gpus)
            & (n <= self.max_gpus)
            & (n % step == 0)
        )

    # ---- enumeration -----------------------------------------------------------------------
    def core(self, gpu_index: int) -> dict[str, np.ndarray]:
        """Core rows (gb, tp, pp, dp, mb) of one target (its GPU type) that can hold a valid
        plan; (C,)."""
        return self._cores[self.gpu_of(gpu_index)]

    @cached_property
    def _cores(self) -> tuple[dict[str, np.ndarray], ...]:
        return tuple(self._build_core(i) for i in range(len(self.gpus)))

    def _build_core(self, gpu_index: int) -> dict[str, np.ndarray]:
        step = self.step_of(self.gpus[gpu_index])
        parts = []
        for gb in self.global_batch:
            dps = np.array([d for d in _divisors(gb) if d <= self.max_gpus], dtype=np.int64)
            t, c, p, d, m = (
                a.ravel()
                for a in np.meshgrid(
                    np.array(self.tp, dtype=np.int64),
                    np.array(self.cp, dtype=np.int64),
                    np.array(self.pp, dtype=np.int64),
                    dps,
                    np.array(self.micro_batch, dtype=np.int64),
                    indexing="ij",
                )
            )
            n = t * c * p * d
            keep = (
                (n >= self.min_gpus) & (n <= self.max_gpus) & (n % step == 0) & (gb % (d * m) == 0)
            )
            gbs = np.full(int(keep.sum()), gb, dtype=np.int64)
            parts.append((gbs, *(x[keep] for x in (t, c, p, d, m))))
        gb_, t, c, p, d, m = (np.concatenate(cols) for cols in zip(*parts, strict=True))
        order = np.lexsort((gb_, m, d, p, c, t, t * c * p * d))  # GPUs, tp, cp, pp, dp, mb, gb
        core = {"gb": gb_[order], "tp": t[order], "pp": p[order], "dp": d[order], "mb": m[order]}
        return core | ({"cp": c[order]} if self.cp != (1,) else {})

    @cached_property
    def extras(self) -> dict[str, np.ndarray]:
        """The grid of (recompute, sp, vpp, zero, dp_overlap) combinations; (E,)."""
        rc = [RECOMPUTE_MODES.index(r) for r in self.recompute]
        grid = list(
            itertools.product(rc, self.sequence_parallel, self.vpp, self.zero, self.dp_overlap)
        )
        cols = np.array(grid, dtype=np.int64).T
        return {
            "recompute": cols[0].astype(np.int8),
            "sp": cols[1].astype(bool),
            "vpp": cols[2],
            "zero": cols[3],
            "dp_overlap": cols[4].astype(bool),
        }

    def chunks(self, chunk_plans: int = CHUNK_PLANS) -> list[tuple[int, int, int]]:
        """Deterministic (target, first core row, end core row) ranges of bounded size."""
        e = len(self.extras["vpp"]) * self.split_count * len(self.ep) * len(self.etp)
        rows = max(1, chunk_plans // e)
        out: list[tuple[int, int, int]] = []
        for g in range(len(self.targets)):
            c = len(self.core(g)["tp"])
            out.extend((g, s, min(s + rows, c)) for s in range(0, c, rows))
        return out

    def plans(self, gpu_index: int, start: int = 0, stop: int | None = None) -> PlanBatch:
        """The valid plans built from core rows [start, stop) of one target (GPU type).

        The plan rules do not involve recomputation or the gradient overlap, so the rules
        run on core rows x (sp, vpp, ZeRO) only, and the valid rows are then repeated for
        each (recompute, overlap) pair: a few times less work than checking every plan.
        """
        core = self.core(gpu_index)
        stop = len(core["tp"]) if stop is None else stop
        shape, free = self._shape_extras, self._free_extras
        k, ns, nf = stop - start, len(shape["vpp"]), len(free["recompute"])
        cols = {
            **{name: np.repeat(arr[start:stop], ns) for name, arr in core.items()},
            **{name: np.tile(arr, k) for name, arr in shape.items()},
        }
        names: tuple[str, ...] = (*core, *shape)
        if self.stage_layers != "even":  # each (pp, vpp) with its split variants
            variants = split_variants(
                self.stage_layers, self.model.num_layers, cols["pp"], cols["vpp"]
            )
            cols = {name: np.tile(arr, len(variants)) for name, arr in cols.items()}
            cols["first"] = np.concatenate([f for f, _ in variants])
            cols["last"] = np.concatenate([last for _, last in variants])
            names = (*names, "first", "last")
        probe = PlanBatch(**cols, recompute=free["recompute"][0], dp_overlap=free["dp_overlap"][0])
        idx = np.flatnonzero(self.member_mask(gpu_index, probe))
        batch = PlanBatch(
            **{name: np.repeat(getattr(probe, name)[idx], nf) for name in names},
            **{name: np.tile(arr, idx.size) for name, arr in free.items()},
        )
        assert self.member_mask(gpu_index, batch.take(slice(0, 4096))).all()
        return batch

    @cached_property
    def _shape_extras(self) -> dict[str, np.ndarray]:
        return shape_extras(self)  # (sp, vpp, zero, ep, etp) combinations

    @cached_property
    def _free_extras(self) -> dict[str, np.ndarray]:
        rc = [RECOMPUTE_MODES.index(r) for r in self.recompute]
        grid = np.array(list(itertools.product(rc, self.dp_overlap)), dtype=np.int64).T
        return {"recompute": grid[0].astype(np.int8), "dp_overlap": grid[1].astype(bool)}

    def iter_plans(self, chunk_plans: int = CHUNK_PLANS) -> Iterator[tuple[int, PlanBatch]]:
        for g, s, e in self.chunks(chunk_plans):
            yield g, self.plans(g, s, e)

    @cached_property
    def size(self) -> int:
        """Number of valid plans in the space (all GPU types), counted in chunks."""
        return int(sum(self.plans(g, s, e).n for g, s, e in self.chunks()))

    def __len__(self) -> int:
        return self.size

    @property
    def split_count(self) -> int:
        """Pipeline splits tried per (pp, vpp): 1, or 5 for stage_layers 'auto'."""
        return 5 if self.stage_layers == "auto" else 1

    def candidate_dp(self) -> tuple[int, ...]:
        """Data-parallel sizes that can occur: divisors of some global batch, within range."""
        values = {d for gb in self.global_batch for d in _divisors(gb) if d <= self.max_gpus}
        return tuple(sorted(values))
