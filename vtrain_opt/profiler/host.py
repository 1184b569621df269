"""Host dispatch cost, measured on this machine: the wall time per layer to dispatch the
forward (and backward) of a stack of transformer layers at a tiny shape, where the
device's work is negligible and the host's Python, dispatcher, autograd and kernel
launches are what is timed.

* ``torch``: the standard-module layer (``torch_model.py``: nn.LayerNorm, nn.Linear, SDPA,
  GELU), the plain PyTorch op list -> the profile's ``torch_host_layer_s``.
* ``megatron``: the same layer written with the profiler's Megatron-style kernels
  (``model.py``); a lower bound of Megatron's own host cost (its Python modules do more),
  recorded as a note and not written into ``host_layer_s``.

On a GPU the forward is timed by wall clock without synchronizing (the launches queue;
the host's own time) and, for comparison, with a synchronization at its end; the
backward likewise (``backward()`` returns once autograd has dispatched every kernel). On
a CPU by the clock the op tables use (``torch_model.clock``).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from vtrain_opt.profiler import kernels as K
from vtrain_opt.profiler import torch_model as TM
from vtrain_opt.spec.model import ModelSpec

# A layer small enough that the device's kernels take a few microseconds at most.
TINY = {"hidden_size": 64, "num_attention_heads": 2, "seq_length": 32, "vocab_size": 128}
LAYERS = 8


def _stack(torch: Any, framework: str, spec: ModelSpec, device: Any, dtype: Any) -> Any:
    import torch.nn as nn

    if framework == "torch":
        blocks = [TM.build_layer(torch, spec, device, dtype) for _ in range(spec.num_layers)]
    else:
        from vtrain_opt.profiler.model import build

        blocks = [build(torch, spec, device, dtype, whole=False) for _ in range(spec.num_layers)]
    return nn.Sequential(*blocks)


def measure_host(
    torch: Any, device: Any, dtype: str, framework: str, repeats: int = 20, warmup: int = 3
) -> dict[str, Any]:
    """Seconds per layer: forward and backward dispatch, and the same synchronized."""
    spec = ModelSpec(
        family="gpt",
        num_layers=LAYERS,
        hidden_size=TINY["hidden_size"],
        num_attention_heads=TINY["num_attention_heads"],
        seq_length=TINY["seq_length"],
        vocab_size=TINY["vocab_size"],
        name="host-dispatch",
    )
    tdtype = K.torch_dtype(torch, dtype)
    stack = _stack(torch, framework, spec, device, tdtype)
    b, s, h = 1, spec.seq_length, spec.hidden_size
    x = torch.randn(b, s, h, device=device, dtype=tdtype, requires_grad=True)
    dy = torch.randn(b, s, h, device=device, dtype=tdtype)
    samples: dict[str, list[float]] = {"fwd": [], "fwd_sync": [], "bwd": [], "bwd_sync": []}
    now = TM.clock(torch, device)
    for i in range(warmup + repeats):
        TM.sync(torch, device)
        t0 = now()
        y = stack(x)
        t1 = now()
        TM.sync(torch, device)
        t2 = now()
        y.backward(dy)
        t3 = now()
        TM.sync(torch, device)
        t4 = now()
        x.grad = None
        for p in stack.parameters():
            p.grad = None
        if i >= warmup:
            for key, dt in (("fwd", t1 - t0), ("fwd_sync", t2 - t0)):
                samples[key].append(dt)
            for key, dt in (("bwd", t3 - t2), ("bwd_sync", t4 - t2)):
                samples[key].append(dt)
    per_layer = {k: statistics.median(v) / LAYERS for k, v in samples.items()}
    return {
        "framework": framework,
        "fwd_s": per_layer["fwd"],
        "fwd_synchronized_s": per_layer["fwd_sync"],
        "bwd_s": per_layer["bwd"],
        "bwd_synchronized_s": per_layer["bwd_sync"],
        "bwd_over_fwd": per_layer["bwd"] / per_layer["fwd"],
        "shape": {**TINY, "micro_batch": b, "layers": LAYERS},
        "repeats": repeats,
        "clock": "thread CPU time" if now is time.thread_time else "wall clock",
    }


def host_source(result: dict[str, Any], host: str, kind: str) -> str:
    """The source line of ``torch_host_layer_s``."""
    shape = result["shape"]
    text = (
        f"measured on {host}: time per layer to dispatch the forward of "
        f"{shape['layers']} standard-module GPT layers (nn.LayerNorm, nn.Linear, SDPA, GELU; "
        f"hidden {shape['hidden_size']}, seq {shape['seq_length']}), median of "
        f"{result['repeats']}"
    )
    if kind == "cuda":
        text += (
            f", wall clock, not synchronized ({result['fwd_synchronized_s'] * 1e6:.0f} us with "
            "a synchronization at the end)"
        )
    else:
        text += (
            f", {result['clock']} (on a CPU the ops run on the dispatching thread: this "
            "includes their work)"
        )
    return text + f"; backward dispatch {result['bwd_over_fwd']:.2f}x the forward"
