"""Reference event-driven simulator of one plan, and its Chrome/Perfetto trace.

It replays Megatron-LM's pipeline schedules (1F1B, and interleaved 1F1B with virtual
stages) as a task graph: one compute stream per stage, one stream per directed link
between stages (transfers on a link serialize), and the data-parallel gradient
reduction and optimizer step of each stage after its last backward. It uses exactly
the op costs of the vectorized core (``sim/step.py``), so the two can be compared:
the core's closed forms must agree with this replay (the contract test).

With context parallelism each layer's ring attention is replayed step by step (``CpRing``):
cp attention steps on the stage's compute stream, the K,V (backward: K,V and dK,dV) sends
on its ring stream, each step waiting for the block it needs; the rest of a chunk's work
(and the recomputed forward's ring, in its backward) runs as one task after the rings.
A MoE model's exposed token dispatch and combine (``sim/moe.py``) of a chunk's layers run
as an ``all-to-all`` task (category ``ep_a2a``) after the chunk's compute, on its stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vtrain_opt.sim.context import SimContext
from vtrain_opt.sim.plan_costs import PlanCosts, chunk_layer_grid, plan_costs, stage_chunk_times
from vtrain_opt.sim.taskgraph import TaskGraph
from vtrain_opt.spec.plan import ParallelPlan, PlanBatch


def schedule_order(p: int, v: int, m: int, stage: int) -> list[tuple[str, int, int]]:
    """Megatron's op order on one stage: ('F' or 'B', micro-batch, model chunk)."""
    if v == 1:
        warmup = min(p - stage - 1, m)
        order: list[tuple[str, int, int]] = [("F", k, 0) for k in range(warmup)]
        for k in range(m - warmup):
            order.append(("F", warmup + k, 0))
            order.append(("B", k, 0))
        order.extend(("B", k, 0) for k in range(m - warmup, m))
        return order
    total = m * v
    warmup = min((p - stage - 1) * 2 + (v - 1) * p, total)

    def fwd(k: int) -> tuple[str, int, int]:
        return ("F", (k // (p * v)) * p + k % p, (k // p) % v)

    def bwd(k: int) -> tuple[str, int, int]:
        return ("B", (k // (p * v)) * p + k % p, v - 1 - (k // p) % v)

    order = [fwd(k) for k in range(warmup)]
    for k in range(total - warmup):
        order.append(fwd(warmup + k))
        order.append(bwd(k))
    order.extend(bwd(k) for k in range(total - warmup, total))
    return order


def _op(kind: str, stage: int, mb: int, chunk: int) -> str:
    return f"{kind} s{stage} mb{mb} c{chunk}"


@dataclass
class CpRing:
    """Context parallelism's ring attention of one plan, for the replay (``sim/costs.py``)."""

    cp: int
    layers: np.ndarray  # (p, v): layers of model chunk j on stage i
    attn_fwd_s: np.ndarray  # (p, v): one ring step's attention at that chunk's pace
    attn_bwd_s: np.ndarray
    send_fwd_s: float  # one step's K,V send
    send_bwd_s: float  # one step's K,V + dK,dV send
    home_s: float  # the last dK,dV back to its owner

    def layer_s(self, kind: str, i: int, j: int) -> float:
        """One layer's ring in chunk j of stage i: the closed form the replay reproduces."""
        a = float((self.attn_fwd_s if kind == "F" else self.attn_bwd_s)[i, j])
        send = self.send_fwd_s if kind == "F" else self.send_bwd_s
        home = 0.0 if kind == "F" else self.home_s
        return a + (self.cp - 1) * max(a, send) + home

    def add(self, graph: TaskGraph, kind: str, base: str, i: int, j: int, deps: list[str]) -> str:
        """Add the rings of chunk j's layers before task ``base``; return the task it waits
        for (the last attention step, or the last dK,dV sent home)."""
        compute, ring = f"stage{i}/compute", f"stage{i}/cp ring"
        a = float((self.attn_fwd_s if kind == "F" else self.attn_bwd_s)[i, j])
        send = self.send_fwd_s if kind == "F" else self.send_bwd_s
        after = list(deps)
        for layer in range(round(float(self.layers[i, j]))):
            name = f"{base} L{layer}"
            prev = graph.last_on(compute)
            start = after + ([prev] if prev else [])
            att = graph.add(f"{name} attn0", compute, a, after, "attention", step=0)
            snd = graph.add(f"{name} ring0", ring, send, start, "cp_ring", step=0)
            for k in range(1, self.cp):
                before = att
                att = graph.add(f"{name} attn{k}", compute, a, [snd], "attention", step=k)
                if k < self.cp - 1:  # the backward sends the dK,dV of the step before
                    deps_k = [before] if kind == "B" else []
                    snd = graph.add(f"{name} ring{k}", ring, send, deps_k, "cp_ring", step=k)
            after = [att]
            if kind == "B":
                after = [graph.add(f"{name} dkv home", ring, self.home_s, [att], "cp_ring")]
        return after[0]


def build_pipeline(
    graph: TaskGraph,
    fwd_s: np.ndarray,
    bwd_s: np.ndarray,
    p2p_s: float,
    num_microbatches: int,
    ring: CpRing | None = None,
    a2a_s: np.ndarray | None = None,
) -> list[str]:
    """Add the pipeline's tasks; return the name of each stage's last compute task.

    ``fwd_s[i, j]``/``bwd_s[i, j]``: time of model chunk j on stage i for one micro-batch
    (with ``ring``: its layers' ring attention included, replayed step by step; with
    ``a2a_s`` (2, p, v): the exposed MoE all-to-all of the chunk's layers, forward and
    backward, included, replayed as its own task after the chunk's compute).
    """
    p, v = fwd_s.shape
    m = num_microbatches
    last: list[str] = []
    for i in range(p):
        stream = f"stage{i}/compute"
        for kind, mb, j in schedule_order(p, v, m, i):
            deps: list[str] = []
            if kind == "F":
                if i > 0:
                    deps.append(f"send {_op('F', i - 1, mb, j)}")
                elif j > 0:
                    deps.append(f"send {_op('F', p - 1, mb, j - 1)}")
                dur = fwd_s[i, j]
                if ring is not None:
                    deps.append(ring.add(graph, "F", _op("F", i, mb, j), i, j, deps))
                    dur = max(dur - ring.layers[i, j] * ring.layer_s("F", i, j), 0.0)
                a2a = 0.0 if a2a_s is None else float(a2a_s[0, i, j])
                name = graph.add(
                    _op("F", i, mb, j), stream, dur - a2a, deps, "forward", microbatch=mb, chunk=j
                )
                end = _all_to_all(graph, name, stream, a2a, mb, j)
                if i < p - 1 or j < v - 1:
                    dst = i + 1 if i < p - 1 else 0
                    graph.add(
                        f"send {name}",
                        f"p2p/fwd {i}->{dst}",
                        p2p_s,
                        [end],
                        "p2p",
                        microbatch=mb,
                        chunk=j,
                    )
            else:
                deps.append(_op("F", i, mb, j))
                if i < p - 1:
                    deps.append(f"send {_op('B', i + 1, mb, j)}")
                elif j < v - 1:
                    deps.append(f"send {_op('B', 0, mb, j + 1)}")
                dur = bwd_s[i, j]
                if ring is not None:
                    deps.append(ring.add(graph, "B", _op("B", i, mb, j), i, j, deps))
                    dur = max(dur - ring.layers[i, j] * ring.layer_s("B", i, j), 0.0)
                a2a = 0.0 if a2a_s is None else float(a2a_s[1, i, j])
                name = graph.add(
                    _op("B", i, mb, j),
                    stream,
                    dur - a2a,
                    deps,
                    "backward",
                    microbatch=mb,
                    chunk=j,
                )
                end = _all_to_all(graph, name, stream, a2a, mb, j)
                if i > 0 or j > 0:
                    dst = i - 1 if i > 0 else p - 1
                    graph.add(
                        f"send {name}",
                        f"p2p/bwd {i}->{dst}",
                        p2p_s,
                        [end],
                        "p2p",
                        microbatch=mb,
                        chunk=j,
                    )
        last.append(end)
    return last


def _all_to_all(graph: TaskGraph, after: str, stream: str, a2a_s: float, mb: int, j: int) -> str:
    """The exposed MoE token dispatch and combine of a chunk's layers after task ``after``
    (on the compute stream it holds up); return the task the chunk ends with."""
    if a2a_s <= 0:
        return after
    return graph.add(
        f"all-to-all {after}", stream, a2a_s, [after], "ep_a2a", microbatch=mb, chunk=j
    )


@dataclass
class ReferenceResult:
    """The reference replay of one plan."""

    iteration_time_s: float
    pipeline_s: float  # from the first forward to the end of the last backward
    stage_pipeline_end_s: list[float]
    graph: TaskGraph

    def chrome_trace(self) -> dict[str, object]:
        """The timeline as a Chrome/Perfetto trace (a JSON object); the caller writes it
        (``simulate --trace FILE``): the simulator writes no files."""
        return self.graph.chrome_trace()


def run_reference(
    fwd_s: np.ndarray,
    bwd_s: np.ndarray,
    p2p_s: float,
    num_microbatches: int,
    stage_tail_s: list[tuple[float, float]],
    iteration_overhead_s: float,
    embedding_sync_s: float = 0.0,
    ring: CpRing | None = None,
    a2a_s: np.ndarray | None = None,
) -> ReferenceResult:
    """Replay a plan: the pipeline, then per stage its gradient reduction and optimizer step.

    ``stage_tail_s[i]`` = (exposed data-parallel communication, optimizer step) of stage i.
    ``embedding_sync_s``: the all-reduce of tied embedding gradients between the first
    and the last stage, after both have finished their backward passes.
    """
    graph = TaskGraph()
    last = build_pipeline(graph, fwd_s, bwd_s, p2p_s, num_microbatches, ring, a2a_s)
    p = fwd_s.shape[0]
    sync = None
    if embedding_sync_s > 0 and p > 1:
        sync = graph.add(
            "embedding grad sync", "p2p/embedding", embedding_sync_s, [last[0], last[-1]], "dp_comm"
        )
    for i, (dp_s, opt_s) in enumerate(stage_tail_s):
        deps = [last[i]] + ([sync] if sync and i in (0, p - 1) else [])
        comm = graph.add(f"dp reduce s{i}", f"stage{i}/dp", dp_s, deps, "dp_comm")
        graph.add(f"optimizer s{i}", f"stage{i}/compute", opt_s, [comm], "optimizer")
    makespan = graph.run()
    pipe_end = [graph.tasks[n].end_s for n in last]
    return ReferenceResult(
        iteration_time_s=makespan + iteration_overhead_s,
        pipeline_s=max(pipe_end),
        stage_pipeline_end_s=pipe_end,
        graph=graph,
    )


def reference(ctx: SimContext, plan: ParallelPlan) -> ReferenceResult:
    """Replay one plan with the same op costs as the vectorized core."""
    plan.validate(ctx.model)
    batch = PlanBatch.from_plans([plan])
    with np.errstate(all="ignore"):
        k = plan_costs(ctx, batch)
    p, v, m = plan.pp, plan.vpp, plan.num_microbatches
    # Node stragglers: the last stage runs at the slowest node's pace, the others at the mean
    # speed. Its extra time per micro-batch is carried by its last model chunk, as the core's
    # closed forms carry it (spread over the v chunks instead, the makespan of an interleaved
    # schedule differs by a few 1e-5).
    fwd = np.full((p, v), float(k.chunk_fwd_mean_s[0]))
    bwd = np.full((p, v), float(k.chunk_bwd_mean_s[0]))
    fwd[p - 1, v - 1] += v * float(k.chunk_fwd_s[0] - k.chunk_fwd_mean_s[0])
    bwd[p - 1, v - 1] += v * float(k.chunk_bwd_s[0] - k.chunk_bwd_mean_s[0])
    fwd[0, 0] += float(k.first_fwd_s[0])
    bwd[0, 0] += float(k.first_bwd_s[0])
    fwd[p - 1, v - 1] += float(k.last_fwd_s[0])
    bwd[p - 1, v - 1] += float(k.last_bwd_s[0])
    if plan.first_stage_layers or plan.last_stage_layers:  # uneven stages: chunk by chunk
        f3, b3 = stage_chunk_times(k, batch, ctx.model.num_layers, np.array([0]), p, v)
        fwd, bwd = f3[:, :, 0], b3[:, :, 0]
    first_tail = (float(k.dp_first_s[0]), float(k.optimizer_first_s[0]))
    last_tail = (float(k.dp_last_s[0]), float(k.optimizer_last_s[0]))
    # Middle stages hold fewer parameters than the first; their tails never bind, but they
    # are replayed with the first stage's tail as an upper bound of their own.
    tails = [first_tail] + [first_tail] * (p - 2) + ([last_tail] if p > 1 else [])
    if p == 1:
        tails = [first_tail]
    return run_reference(
        fwd,
        bwd,
        float(k.p2p_s[0]),
        m,
        tails,
        iteration_overhead_s=ctx.profile.iteration_overhead_s,
        embedding_sync_s=float(k.embedding_sync_s[0]),
        ring=_cp_ring(k, batch, ctx.model.num_layers) if plan.cp > 1 else None,
        a2a_s=_moe_a2a(k, batch, ctx.model.num_layers) if k.moe is not None else None,
    )


def _moe_a2a(k: PlanCosts, batch: PlanBatch, num_layers: int) -> np.ndarray:
    """The exposed all-to-all of each chunk of plan 0, forward and backward (with the
    recomputed forward's), array (2, p, v)."""
    assert k.moe is not None
    p, v = int(batch.pp[0]), int(batch.vpp[0])
    layers = chunk_layer_grid(batch, num_layers, np.array([0]), p, v)[:, :, 0]
    fwd = float(k.moe.a2a_fwd_s[0])
    bwd = float(k.moe.a2a_bwd_s[0] + k.moe.recompute_a2a_s[0])
    return np.stack([layers * fwd, layers * bwd])


def _cp_ring(k: PlanCosts, batch: PlanBatch, num_layers: int) -> CpRing:
    """The ring of plan 0 of ``batch``: the stages at the mean speed, the last stage's last
    chunk (which carries the slowest node's extra time) at the slowest node's pace."""
    p, v = int(batch.pp[0]), int(batch.vpp[0])
    fwd = np.full((p, v), float(k.ring_attn_fwd_mean_s[0]))
    bwd = np.full((p, v), float(k.ring_attn_bwd_mean_s[0]))
    fwd[p - 1, v - 1], bwd[p - 1, v - 1] = k.ring_attn_fwd_s[0], k.ring_attn_bwd_s[0]
    return CpRing(
        cp=int(batch.cp[0]),
        layers=chunk_layer_grid(batch, num_layers, np.array([0]), p, v)[:, :, 0],
        attn_fwd_s=fwd,
        attn_bwd_s=bwd,
        send_fwd_s=float(k.ring_send_fwd_s[0]),
        send_bwd_s=float(k.ring_send_bwd_s[0]),
        home_s=float(k.ring_home_s[0]),
    )
