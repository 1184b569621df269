"""The simulator's byte convention for memory-bound ops, read off its own code.

Memory-bound ops are measured on tensors of E elements and looked up by the bytes the
simulator counts for them. That count (bytes per element of the op's main tensor) is the
simulator's convention, which may change: a table records the elements it measured and the
bytes per element it was written with, and ``sim/measured.py`` re-keys it with the current
simulator's count, found here by running ``sim/costs.py``, ``sim/costs_torch.py`` and
``sim/step.py`` themselves with an op model that records what it is asked. So an older
profile keeps answering for the same shapes, and the profiler writes tables by the key the
simulator will read them back with.

The op model reads measured tables, and this module runs the op model: the one import of
it (``sim/measured.py``, inside a function) closes a circle inside ``sim/`` on purpose (see
``tests/test_structure.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vtrain_opt.profiles import load_profile
from vtrain_opt.sim.costs import edge_costs, layer_costs
from vtrain_opt.sim.costs_torch import torch_layer_costs
from vtrain_opt.sim.memory import stage_params
from vtrain_opt.sim.ops import OpModel
from vtrain_opt.sim.step import SimContext, simulate_arrays
from vtrain_opt.spec.hardware import get_cluster
from vtrain_opt.spec.model import ModelSpec
from vtrain_opt.spec.plan import ParallelPlan, PlanBatch
from vtrain_opt.spec.setup import Setup

_FACTORS: dict[str, dict[str, float]] = {}


def sim_bytes_per_element(dtype: str) -> dict[str, float]:
    """Bytes ``sim/costs.py`` and ``sim/step.py`` count per element of each memory-bound op's
    main tensor (per parameter for the optimizer), at this dtype.

    Found by running the cost functions on two small reference models (GPT and LLaMA,
    unfused attention, one GPU) with an op model that records what it is asked. The
    embedding follows the LLaMA model (a plain row lookup, as the profiler measures it).
    """
    if dtype in _FACTORS:
        return _FACTORS[dtype]

    @dataclass(frozen=True)
    class Recorder(OpModel):
        calls: list[tuple[str, float]] = field(default_factory=list)

        def memory_s(self, nbytes: Any, kernels: Any = 1, op: str = "memory") -> np.ndarray:
            self.calls.append((op, float(np.ravel(nbytes)[0])))
            return np.zeros(np.shape(nbytes))

    cluster = get_cluster("a100-80gb")
    setup = Setup(dtype=dtype, attention="unfused")
    s, h, heads, vocab = 128, 256, 4, 1024
    shape = dict(num_layers=1, hidden_size=h, num_attention_heads=heads, vocab_size=vocab)
    gpt = ModelSpec(family="gpt", seq_length=s, **shape)
    llama = ModelSpec(family="llama", seq_length=s, **shape)
    one, no = np.array([1]), np.array([False])
    seen: dict[str, list[float]] = {}
    for spec in (gpt, llama):
        rec = Recorder(load_profile("a100-80gb"), cluster, setup)
        layer_costs(spec, rec, one, one, no, np.array([0]))
        edge_costs(spec, rec, one, one, no)
        ctx = SimContext(spec, cluster, rec.profile, setup)
        ctx.__dict__["ops"] = rec  # the cached op model, replaced by the recorder
        plan = ParallelPlan(tp=1, pp=1, dp=1, micro_batch=1, global_batch=1)
        simulate_arrays(ctx, PlanBatch.from_plans([plan]))
        t, f = float(s), float(spec.ffn)
        # elements of each op's main tensor in this model (what the profiler's E counts)
        per_op = {
            "layernorm": t * h, "rmsnorm": t * h, "bias_dropout_add": t * h,
            "residual_add": t * h, "bias_gelu": t * f, "swiglu": t * f,
            "rotary": t * (h + spec.kv_hidden_size), "softmax": heads * t * t,
            "dropout": heads * t * t, "cross_entropy": t * spec.padded_vocab(1),
        }  # fmt: skip
        if spec is llama:  # GPT's embedding adds positions and dropout to the lookup
            per_op["embedding"] = t * h
        elements = {**per_op, **{f"{op}_bwd": n for op, n in per_op.items()}}
        elements["optimizer"] = float(stage_params(spec, one, one).first[0])
        for op, nbytes in rec.calls:
            if op in elements:
                seen.setdefault(op, []).append(nbytes / elements[op])
    factors = {op: float(np.median(v)) for op, v in seen.items()}
    factors["memory"] = 2.0 * setup.act_bytes  # a copy: read and write
    factors.update(_torch_bytes_per_element(dtype, Recorder, cluster, gpt))
    _FACTORS[dtype] = factors
    return factors


def _torch_bytes_per_element(dtype: str, recorder: Any, cluster: Any, gpt: Any) -> dict[str, float]:
    """The factors of the ops only the plain-PyTorch op list (``sim/costs_torch.py`` and its
    optimizer in ``sim/step.py``) asks for: GELU without a bias, an nn.Linear's bias
    gradient, AdamW over parameters in their own dtype. Read off that code as above, on the
    GPT reference model (dropout on, so every op is seen; no master weights, as the profiler
    times AdamW)."""
    setup = Setup(
        dtype=dtype, attention="flash", framework="torch", dropout=0.1, master_weights="none"
    )
    rec = recorder(load_profile("a100-80gb"), cluster, setup)
    one = np.array([1])
    torch_layer_costs(gpt, rec, one, np.array([0]))
    layer_calls = list(rec.calls)
    ctx = SimContext(gpt, cluster, rec.profile, setup)
    ctx.__dict__["ops"] = rec
    plan = ParallelPlan(tp=1, pp=1, dp=1, micro_batch=1, global_batch=1)
    simulate_arrays(ctx, PlanBatch.from_plans([plan]))
    t, h, f = float(gpt.seq_length), float(gpt.hidden_size), float(gpt.ffn)
    # main tensor: GELU's (tokens x ffn) input; a Linear's (tokens x width) output gradient,
    # one width per Linear (QKV, attention output, MLP up, MLP down); the parameters
    candidates = {
        "gelu": [t * f],
        "gelu_bwd": [t * f],
        "bias_grad": [t * (h + 2 * gpt.kv_hidden_size), t * h, t * f],
    }
    out: dict[str, float] = {}
    for op, elements in candidates.items():
        nbytes = [b for name, b in layer_calls if name == op]
        if not nbytes:
            continue
        # the one factor by which every call's bytes are some Linear's elements
        common = set.intersection(*({round(b / e, 9) for e in elements} for b in nbytes))
        out[op] = float(min(common)) if common else float(np.median(nbytes) / elements[0])
    params = float(stage_params(gpt, one, one).first[0])
    adam = [b / params for name, b in rec.calls if name == "adam"]
    out["adam"] = float(np.median(adam))
    return out
