"""The parameters of an Optuna trial, and the plans of the space they stand for.

A trial samples the *structural* dimensions of a plan (GPU type, global batch, tp, pp,
the GPU count as ``gpus_log2``) plus any free dimension not completed inside the trial;
``ParamSpace`` resolves them to the nearest valid plan, as a trial key. The *inner*
dimensions hold ``AUTO`` in the key: the trial evaluates each of their values.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from vtrain_opt.search.space import SearchSpace
from vtrain_opt.spec.plan import RECOMPUTE_MODES

# A plan key: (gpu index, gb, tp, pp, dp, mb, recompute code, sp, vpp, zero, dp_overlap).
# In a trial's key an inner dimension holds AUTO: the trial evaluates all its values.
Key = tuple[int, int, int, int, int, int, int, bool, int, int, bool]
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

    def suggest(self, trial: Any) -> Key | None:
        p: dict[str, Any] = {}
        if len(self.gpus) > 1:
            p["gpu"] = trial.suggest_categorical("gpu", self.gpus)
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
        """The trial key a trial's parameters stand for; None when no valid plan is near."""
        sp_, m = self.space, self.space.model
        g = self.gpus.index(p["gpu"]) if "gpu" in p else 0
        step = sp_.step_of(sp_.gpus[g])

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
        target = p.get("gpus_log2", self.log2_range[1])
        dps = [
            d
            for d in self._dps[gb]
            if sp_.min_gpus <= tp * pp * d <= sp_.max_gpus and (tp * pp * d) % step == 0
        ]
        if not dps:
            return None
        dp = min(dps, key=lambda d: (abs(np.log2(tp * pp * d) - target), d))
        mb = pick("micro_batch", lambda v: gb % (dp * v) == 0)
        rc = pick("recompute", lambda v: True)
        if "sequence_parallel" in self.inner:
            sp: Any = AUTO
        else:
            sp = p.get("sequence_parallel", self.categorical["sequence_parallel"][0])
            if (
                sp
                and (tp < 2 or m.seq_length % tp)
                and False in self.categorical["sequence_parallel"]
            ):
                sp = False
        vpp = pick(
            "vpp",
            lambda v: (
                v == 1 or (pp > 1 and m.num_layers % (pp * v) == 0 and (gb // (dp * mb)) % pp == 0)
            ),
        )
        zero = pick("zero", lambda v: v < 2 or pp == 1)
        if "dp_overlap" in self.inner:
            ovl: Any = AUTO
        else:
            ovl = p.get("dp_overlap", self.categorical["dp_overlap"][0])
        if mb is None or vpp is None or zero is None:
            return None
        return (
            g,
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
        )

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
