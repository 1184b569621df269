"""Predict measured rows: how the runs were made (``RunSetup``) and their models and plans.

Shared by ``validate`` (compare) and ``calibrate`` (fit): the rows' models and plans are
built once, then predicted for any profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vtrain_opt.measurements import MeasurementSet
from vtrain_opt.profiles import Profile
from vtrain_opt.sim.step import make_context, simulate_arrays
from vtrain_opt.spec.hardware import ClusterSpec, get_cluster
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import RECOMPUTE_MODES, PlanBatch
from vtrain_opt.spec.setup import Setup


@dataclass(frozen=True)
class RunSetup:
    """How the measured runs were made (defaults: the stated setup of vTrain's set)."""

    gpu: str = "a100-80gb"
    family: str = "gpt"
    vocab_size: int = 50257
    dtype: str = "fp16"
    attention: str = "unfused"
    recompute: str = "full"
    gpus_per_node: int = 8
    inter_node_gbps: float = 800.0
    dp_overlap: bool = False  # no gradient bucketing: the all-reduce follows the backward
    framework: str = "megatron"
    dropout: float | None = None  # None: the model family's default
    master_weights: str = "fp32"
    fp8_recipe: str = "delayed"  # with dtype fp8 (Transformer Engine)

    def __post_init__(self) -> None:
        self.setup()  # a bad framework, dropout or optimizer precision raises here
        if self.recompute not in RECOMPUTE_MODES:
            raise ValueError(
                f"recompute: {self.recompute!r} is not one of {', '.join(RECOMPUTE_MODES)}"
            )

    def setup(self) -> Setup:
        return Setup(
            dtype=self.dtype,
            attention=self.attention,
            framework=self.framework,
            dropout=self.dropout,
            master_weights=self.master_weights,
            fp8_recipe=self.fp8_recipe,
        )

    def cluster(self) -> ClusterSpec:
        return get_cluster(self.gpu).with_overrides(
            gpus_per_node=self.gpus_per_node, inter_node_gbps=self.inter_node_gbps
        )


@dataclass
class Predictor:
    """Predicts measured rows for any profile; the rows' models and plans are built once."""

    measurements: MeasurementSet
    setup: RunSetup = field(default_factory=RunSetup)

    def __post_init__(self) -> None:
        rows = self.measurements.rows
        self._cluster = self.setup.cluster()
        self._setup = self.setup.setup()
        self._groups: list[tuple[ModelSpec, PlanBatch, np.ndarray]] = []
        rows = rows.assign(_vocab=rows.get("vocab_size", self.setup.vocab_size))
        keys = ["hidden_size", "num_attention_heads", "num_layers", "seq_length", "_vocab"]
        for (h, a, layers, s, vocab), g in rows.groupby(keys, sort=True):
            model = ModelSpec(
                family=self.setup.family,
                num_layers=int(layers),
                hidden_size=int(h),
                num_attention_heads=int(a),
                vocab_size=int(vocab),
                seq_length=int(s),
                name=f"h{h}-a{a}-l{layers}-s{s}",
            )
            batch = PlanBatch(
                tp=g["tp"].to_numpy(),
                pp=g["pp"].to_numpy(),
                dp=g["dp"].to_numpy(),
                mb=g["micro_batch"].to_numpy(),
                gb=g["global_batch"].to_numpy(),
                recompute=(g["recompute"].to_numpy() if "recompute" in g else self.setup.recompute),
                dp_overlap=self.setup.dp_overlap,
            )
            reason = batch.check(model)
            if (reason != 0).any():
                i = int(np.flatnonzero(reason != 0)[0])
                r = g.iloc[i]
                raise ValueError(
                    f"{r['file']} row {r['row']}: the plan is not valid for this setup"
                )
            self._groups.append((model, batch, g.index.to_numpy()))

    @property
    def measured_s(self) -> np.ndarray:
        return self.measurements.measured_s

    def predict(self, profile: Profile) -> np.ndarray:
        """Predicted iteration time of every measured row (s)."""
        return self.predict_columns(profile, ("iteration_time_s",))["iteration_time_s"]

    def predict_columns(self, profile: Profile, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """Any of the simulator's result columns for every measured row."""
        n = len(self.measurements.rows)
        out = {c: np.empty(n) for c in columns}
        for model, batch, index in self._groups:
            ctx = make_context(model, self._cluster, profile, self._setup)
            result = simulate_arrays(ctx, batch)
            for c in columns:
                out[c][index] = result[c]
        return out
