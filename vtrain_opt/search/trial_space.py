"""The parameters of an Optuna trial, and the plans of the space they stand for.

A trial samples the *structural* dimensions of a plan (GPU type, global batch, tp, pp,
the GPU count as ``gpus_log2``) plus any free dimension not completed inside the trial;
``ParamSpace`` resolves them to the nearest valid plan, as a trial key. The *inner*
dimensions hold ``AUTO`` in the key: the trial evaluates each of their values. A space's
dtype list (``dtype``), context-parallel sizes (``cp``), a MoE model's expert (tensor)
parallel sizes (``ep``, ``etp``) and pipeline split
(``stage_split``: the variants of ``spec.stages.split_variants`` for stage_layers auto)
are categorical parameters.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from vtrain_opt.search.space import SearchSpace
from vtrain_opt.spec.plan import RECOMPUTE_MODES, PlanBatch
from vtrain_opt.spec.stages import split_variants

# A plan key: (target index (GPU type and dtype), gb, tp, pp, dp, mb, recompute code, sp,
# vpp, zero, dp_overlap, first stage layers, last stage layers, cp, ep, etp). In a trial's
# key an inner dimension holds AUTO: the trial evaluates all its values.
Key = tuple[int, int, int, int, int, int, int, bool, int, int, bool, int, int, int, int, int]
AUTO = -1
# Dimensions a trial may complete itself, and their position in a key.
INNER_DIMS = {
    "micro_batch": 5,
    "recompute": 6,
    "sequence_parallel": 7,
    "vpp": 8,
    "zero": 9,
    "dp_overlap": 10,
}
DEFAULT_INNER = tuple(INNER_DIMS)
# The pipeline splits of stage_layers auto, in split_variants' order: even; first = last =
# x with the middle stages x + 1 or x + 2; the first or the last stage alone one fewer.
SPLIT_CHOICES = ("even", "edges-1", "edges-2", "first-1", "last-1")


class ParamSpace:
    """Maps trial parameters to plans of the space, and back.

    Sampling every dimension independently lands outside the space most of the time (the
    GPU count must be a whole number of nodes, dp x micro-batch must divide the global
    batch, ...), and samplers learn nothing from such trials. So the GPU count is sampled
    as a continuous ``gpus_log2`` and each ordered dimension as an index, then resolved in
    order (GPU type, global batch, tp, pp, GPU count, micro-batch, sequence parallelism,
    vpp, ZeRO, overlap) to the nearest value that keeps the plan valid given the ones
    before. Nearby parameters map to nearby plans, and almost every trial is a plan of the
    space; the rare remainder is told as pruned.
    """

    def __init__(self, space: SearchSpace, inner: tuple[str, ...] = DEFAULT_INNER) -> None:
        unknown = sorted(set(inner) - set(INNER_DIMS))
        if unknown:
            raise ValueError(
                f"inner dimensions: {', '.join(unknown)} unknown; allowed: {', '.join(INNER_DIMS)}"
            )
        inner = tuple(d for d in INNER_DIMS if d in inner and len(getattr(space, d)) > 1)
        if "micro_batch" in inner and "vpp" not in inner and len(space.vpp) > 1:
            inner = (*inner, "vpp")  # vpp's validity depends on the micro-batch count
        self.space = space
        self.inner = inner
        self.gpus = [g.name for g in space.gpus]
        steps = [space.step_of(g) for g in space.gpus]
        lo = min(-(-space.min_gpus // s) * s for s in steps)
        self.log2_range = (float(np.log2(lo)), float(np.log2(space.max_gpus)))
        self.ordered: dict[str, tuple[Any, ...]] = {
            "global_batch": space.global_batch,
            "tp": space.tp,
            "pp": space.pp,
            "micro_batch": space.micro_batch,
            "recompute": tuple(sorted(RECOMPUTE_MODES.index(r) for r in space.recompute)),
            "vpp": space.vpp,
            "zero": space.zero,
        }
        self.categorical: dict[str, tuple[Any, ...]] = {
            "sequence_parallel": space.sequence_parallel,
            "dp_overlap": space.dp_overlap,
        }
        self._dps = {gb: _divisors(gb) for gb in space.global_batch}
        self.splits = SPLIT_CHOICES if space.stage_layers == "auto" else SPLIT_CHOICES[:1]
        self._fits: dict[tuple[int, int, int, int], bool] = {}
        # samplers repeat parameters on discrete spaces: each distinct set is resolved once
        self._resolved: dict[tuple[tuple[str, Any], ...], Key | None] = {}

    def suggest(self, trial: Any) -> Key | None:
        p: dict[str, Any] = {}
        if len(self.gpus) > 1:
            p["gpu"] = trial.suggest_categorical("gpu", self.gpus)
        if len(self.space.dtypes) > 1:
            p["dtype"] = trial.suggest_categorical("dtype", list(self.space.dtypes))
        if len(self.splits) > 1:
            p["stage_split"] = trial.suggest_categorical("stage_split", list(self.splits))
        if len(self.space.cp) > 1:
            p["cp"] = trial.suggest_categorical("cp", list(self.space.cp))
        for name in ("ep", "etp"):  # a MoE model's expert (tensor) parallelism
            if len(getattr(self.space, name)) > 1:
                p[name] = trial.suggest_categorical(name, list(getattr(self.space, name)))
        if self.log2_range[1] > self.log2_range[0]:
            p["gpus_log2"] = trial.suggest_float("gpus_log2", *self.log2_range)
        for name, values in self.ordered.items():
            if len(values) > 1 and name not in self.inner:
                p[f"{name}_index"] = trial.suggest_int(f"{name}_index", 0, len(values) - 1)
        for name, values in self.categorical.items():
            if len(values) > 1 and name not in self.inner:
                p[name] = trial.suggest_categorical(name, values)
        return self.resolve(p)

    def resolve(self, p: dict[str, Any]) -> Key | None:
        """The trial key a trial's parameters stand for; None when no valid plan is near
        (cached by the parameters: the trial cache then finds the key's plans simulated)."""
        params = tuple(sorted(p.items()))
        if params not in self._resolved:
            self._resolved[params] = self._resolve(p)
        return self._resolved[params]

    def _resolve(self, p: dict[str, Any]) -> Key | None:
        sp_, m = self.space, self.space.model
        g = self.gpus.index(p["gpu"]) if "gpu" in p else 0
        step = sp_.step_of(sp_.gpus[g])
        where = self._target(g, p.get("dtype"))
        if where is None:  # a dtype this GPU lacks (fp8 on an A100): outside the space
            return None

        def pick(name: str, ok: Callable[[Any], bool]) -> Any:
            if name in self.inner:
                return AUTO
            values = self.ordered[name]
            want = p.get(f"{name}_index", 0)
            good = [i for i, v in enumerate(values) if ok(v)]
            if not good:
                return None
            return values[min(good, key=lambda i: (abs(i - want), i))]

        gb = pick("global_batch", lambda v: True)
        tp = pick("tp", lambda v: True)
        pp = pick("pp", lambda v: True)
        cp = int(p.get("cp", sp_.cp[0]))
        mp = tp * cp * pp  # GPUs of one model replica
        target = p.get("gpus_log2", self.log2_range[1])
        dps = [
            d
            for d in self._dps[gb]
            if sp_.min_gpus <= mp * d <= sp_.max_gpus and (mp * d) % step == 0
        ]
        if not dps:
            return None
        dp = min(dps, key=lambda d: (abs(np.log2(mp * d) - target), d))
        mb = pick("micro_batch", lambda v: gb % (dp * v) == 0)
        rc = pick("recompute", lambda v: True)
        if "sequence_parallel" in self.inner:
            sp: Any = AUTO
        else:
            sp = p.get("sequence_parallel", self.categorical["sequence_parallel"][0])
            if (
                sp
                and (tp < 2 or m.seq_length % (tp * cp))
                and False in self.categorical["sequence_parallel"]
            ):
                sp = False
        first, last = self._split(pp, p.get("stage_split", "even"))
        vpp = pick(
            "vpp",
            lambda v: (
                v == 1
                or (pp > 1 and self._chunks_fit(pp, v, first, last) and (gb // (dp * mb)) % pp == 0)
            ),
        )
        zero = pick("zero", lambda v: v < 2 or pp == 1)
        if "dp_overlap" in self.inner:
            ovl: Any = AUTO
        else:
            ovl = p.get("dp_overlap", self.categorical["dp_overlap"][0])
        if mb is None or vpp is None or zero is None:
            return None
        # expert parallelism folds over tp x cp x dp: the sampled sizes, else the nearest
        # smaller ones of the space that divide it
        ep = max(
            (e for e in sp_.ep if e <= int(p.get("ep", sp_.ep[0])) and (tp * cp * dp) % e == 0),
            default=None,
        )
        if ep is None:
            return None
        etp = max(
            (
                e
                for e in sp_.etp
                if e <= int(p.get("etp", sp_.etp[0])) and (tp * cp * dp) % (ep * e) == 0
            ),
            default=None,
        )
        if etp is None:
            return None
        return (
            where,
            int(gb),
            int(tp),
            int(pp),
            int(dp),
            int(mb),
            int(rc),
            sp,
            int(vpp),
            int(zero),
            ovl,
            first,
            last,
            cp,
            int(ep),
            int(etp),
        )

    def _target(self, gpu_index: int, dtype: str | None) -> int | None:
        """The target of a GPU type and a sampled dtype (None: the space's only one); None
        when that GPU lacks the dtype."""
        for i, t in enumerate(self.space.targets):
            if t.gpu_index == gpu_index and (dtype is None or t.dtype == dtype):
                return i if t.ok else None
        return None

    def _split(self, pp: int, choice: str) -> tuple[int, int]:
        """(first, last) stage layers of the sampled split for ``pp`` stages: that variant
        when it is whole for pp, else the first one that is (in SPLIT_CHOICES order)."""
        variants = split_variants(
            self.space.stage_layers, self.space.model.num_layers, np.array([pp]), np.array([1])
        )
        want = self.splits.index(choice) if choice in self.splits else 0
        order = [want] + [i for i in range(len(variants)) if i != want]
        for i in order:
            f, last = int(variants[i][0][0]), int(variants[i][1][0])
            if f >= 0 and last >= 0 and self._chunks_fit(pp, 1, f, last):
                return f, last
        return 0, 0  # no split fits pp (the space's pp are those some split allows)

    def _chunks_fit(self, pp: int, vpp: int, first: int, last: int) -> bool:
        """Whether pp stages of vpp chunks hold the model with this split (the plan rules)."""
        if first == 0 and last == 0:
            return self.space.model.num_layers % (pp * vpp) == 0
        key = (pp, vpp, first, last)
        if key not in self._fits:
            b = PlanBatch(tp=1, pp=pp, dp=1, mb=1, gb=pp, vpp=vpp, first=first, last=last)
            self._fits[key] = bool(b.check(self.space.model)[0] == 0)
        return self._fits[key]

    def expand(self, key: Key) -> list[Key]:
        """The plans a trial key stands for: every combination of its AUTO dimensions."""
        options: list[tuple[Any, ...]] = []
        for pos, value in enumerate(key):
            if not isinstance(value, bool) and value == AUTO:
                name = next(n for n, i in INNER_DIMS.items() if i == pos)
                options.append(self.ordered.get(name) or self.categorical[name])
            else:
                options.append((value,))
        return [tuple(c) for c in itertools.product(*options)]  # type: ignore[misc]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
