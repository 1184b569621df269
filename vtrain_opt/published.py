"""Published throughput of real training runs, to check the simulator on data it never saw.

Nothing here is fitted: the shipped profile predicts each run and the figures are compared.

Megatron-LM's weak-scaling table (Narayanan et al., "Efficient Large-Scale Language Model
Training on GPU Clusters Using Megatron-LM", SC 2021, Table 1): GPT models of 1.7B to 1T
parameters on 32 to 3,072 A100-80GB GPUs of NVIDIA's Selene (DGX A100 nodes: NVSwitch,
eight 200 Gbit/s HDR InfiniBand adapters per node), mixed precision, sequence length 2048,
vocabulary 51,200, full activation recomputation. The achieved teraFLOP/s per GPU count
the recomputation, i.e. they are hardware FLOPs (``hw_tflops_per_gpu``). The table gives
tp, pp, the GPU count and the global batch, not the micro-batch: its runs were tuned, so
each is predicted at the micro-batch the model finds fastest among those that fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from vtrain_opt.profiles import Profile
from vtrain_opt.sim.step import simulate
from vtrain_opt.spec.hardware import get_cluster
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import ParallelPlan
from vtrain_opt.spec.setup import Setup


@dataclass(frozen=True)
class PublishedRun:
    """One published run: the model, the plan and the throughput its authors measured."""

    params_billion: float
    heads: int
    hidden_size: int
    num_layers: int
    tp: int
    pp: int
    num_gpus: int
    global_batch: int
    tflops_per_gpu: float  # hardware FLOPs (recomputation counted), as published

    def model(self) -> ModelSpec:
        return ModelSpec(
            family="gpt",
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.heads,
            vocab_size=51200,
            seq_length=2048,
            name=f"gpt-{self.params_billion:g}b",
        )


# Narayanan et al. (SC 2021), Table 1.
MEGATRON_2021 = (
    PublishedRun(1.7, 24, 2304, 24, 1, 1, 32, 512, 137),
    PublishedRun(3.6, 32, 3072, 30, 2, 1, 64, 512, 138),
    PublishedRun(7.5, 32, 4096, 36, 4, 1, 128, 512, 142),
    PublishedRun(18.4, 48, 6144, 40, 8, 1, 256, 1024, 135),
    PublishedRun(39.1, 64, 8192, 48, 8, 2, 512, 1536, 138),
    PublishedRun(76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140),
    PublishedRun(145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148),
    PublishedRun(310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155),
    PublishedRun(529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163),
    PublishedRun(1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163),
)
# Selene's nodes: eight 200 Gbit/s adapters
SELENE_INTER_NODE_GBPS = 1600.0
MICRO_BATCHES = (1, 2, 4, 8)


def predict_published(
    profile: Profile | str | None = None,
    runs: tuple[PublishedRun, ...] = MEGATRON_2021,
    *,
    dp_overlap: bool = False,
    max_vpp: int = 1,
) -> pd.DataFrame:
    """Each run's predicted hardware TFLOP/s per GPU at its fastest micro-batch that fits.

    One row per run: the run's columns, ``micro_batch`` (the one chosen), ``predicted_tflops``,
    ``ratio`` (predicted / published) and ``by_micro_batch`` ({mb: TFLOP/s} of every
    micro-batch that divides the batch and fits). With ``max_vpp`` > 1 a pipelined run may
    also use the interleaved schedule (1 to ``max_vpp`` model chunks per stage, where the
    layers divide): the fastest of each micro-batch, and the one chosen in ``vpp``.
    """
    cluster = get_cluster("a100-80gb").with_overrides(inter_node_gbps=SELENE_INTER_NODE_GBPS)
    setup = Setup(dtype="fp16", attention="unfused")
    rows = []
    for run in runs:
        dp = run.num_gpus // (run.tp * run.pp)
        chunks = [v for v in range(1, max_vpp + 1) if v == 1 or _interleaves(run, v)]
        plans = [
            ParallelPlan(
                tp=run.tp,
                pp=run.pp,
                dp=dp,
                micro_batch=mb,
                global_batch=run.global_batch,
                recompute="full",
                dp_overlap=dp_overlap,
                vpp=v,
            )
            for v in chunks
            for mb in MICRO_BATCHES
            if run.global_batch % (dp * mb) == 0
        ]
        df = simulate(run.model(), cluster, plans, profile=profile, setup=setup)
        df = df[df["feasible"]]
        # the fastest schedule of each micro-batch (the first, vpp 1, on a tie)
        df = df.sort_values("hw_tflops_per_gpu", ascending=False, kind="stable")
        df = df.drop_duplicates("micro_batch")
        by_mb = dict(zip(df["micro_batch"].astype(int), df["hw_tflops_per_gpu"], strict=True))
        vpp = dict(zip(df["micro_batch"].astype(int), df["vpp"].astype(int), strict=True))
        best = max(by_mb, key=by_mb.__getitem__) if by_mb else None
        predicted = by_mb[best] if best is not None else float("nan")
        rows.append(
            {
                **asdict(run),
                "micro_batch": best,
                "vpp": vpp[best] if best is not None else None,
                "predicted_tflops": predicted,
                "ratio": predicted / run.tflops_per_gpu,
                "by_micro_batch": dict(sorted(by_mb.items())),
            }
        )
    return pd.DataFrame(rows)


def _interleaves(run: PublishedRun, vpp: int) -> bool:
    """Whether the run's stages can each hold ``vpp`` model chunks (interleaved 1F1B)."""
    return run.pp > 1 and run.num_layers % (run.pp * vpp) == 0
