"""A plain PyTorch GPT written with standard modules (the ``framework='torch'`` op list),
independent of the kernels the profiler benchmarks one by one (``kernels.py``).

Exactly the implementation of the shared Hopper runs (``../shared/data/README.md``,
hopper/): learned token and position embeddings, the output head tied to the token
embedding; per layer ``nn.LayerNorm`` -> ``nn.Linear(h, 3h)`` with bias ->
``F.scaled_dot_product_attention(is_causal=True)`` -> ``nn.Linear(h, h)`` -> residual add ->
``nn.LayerNorm`` -> ``nn.Linear(h, 4h)`` -> GELU (tanh) -> ``nn.Linear(4h, h)`` -> residual
add; final LayerNorm, logits in the compute dtype, cross-entropy on the logits cast to
fp32; no dropout; parameters in the compute dtype and ``torch.optim.AdamW(fused=True)``
on them (no master copy). Full recomputation = ``torch.utils.checkpoint`` around each
layer. A LLaMA-family spec gets RMSNorm, bias-free Linears, a fused gate|up projection
with SwiGLU, rotary embeddings and an untied head, as ``sim/costs_torch.py`` counts them.

Used by the self-check (``check.py``), the host-dispatch and in-step GEMM measurements
(``host.py``, ``instep.py``) and real training steps (``steps.py``). torch is passed in.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from vtrain_opt.spec.model import ModelSpec

NORM_EPS = 1e-5


def build_layer(torch: Any, spec: ModelSpec, device: Any, dtype: Any) -> Any:
    """One transformer layer: ``forward(x)`` on (batch, seq, hidden)."""
    import torch.nn as nn
    import torch.nn.functional as F

    h, f, heads, d = spec.hidden_size, spec.ffn, spec.num_attention_heads, spec.head_dim
    kvh, gpt = spec.kv_hidden_size, spec.family == "gpt"
    kw = {"device": device, "dtype": dtype}

    def norm() -> Any:
        return nn.LayerNorm(h, eps=NORM_EPS, **kw) if gpt else nn.RMSNorm(h, eps=NORM_EPS, **kw)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.ln_2 = norm(), norm()
            self.c_attn = nn.Linear(h, h + 2 * kvh, bias=gpt, **kw)
            self.c_proj = nn.Linear(h, h, bias=gpt, **kw)
            self.c_fc = nn.Linear(h, (1 if gpt else 2) * f, bias=gpt, **kw)
            self.mlp_proj = nn.Linear(f, h, bias=gpt, **kw)
            self.rope = None if gpt else _rope_tables(torch, spec, device, dtype)

        def forward(self, x: Any) -> Any:
            b, s, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split((h, kvh, kvh), dim=2)
            q = q.view(b, s, heads, d)
            k, v = k.view(b, s, kvh // d, d), v.view(b, s, kvh // d, d)
            if self.rope is not None:
                cos, sin = (t[:s] for t in self.rope)
                q, k = _rotary(torch, q, cos, sin), _rotary(torch, k, cos, sin)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            if kvh != h:  # grouped-query attention
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, s, h))
            u = self.c_fc(self.ln_2(x))
            if gpt:
                a = F.gelu(u, approximate="tanh")
            else:
                gate, up = u.chunk(2, dim=-1)
                a = F.silu(gate) * up
            return x + self.mlp_proj(a)

    return Block()


def _rope_tables(torch: Any, spec: ModelSpec, device: Any, dtype: Any) -> tuple[Any, Any]:
    d = spec.head_dim
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=device).float() / d))
    ang = torch.outer(torch.arange(spec.seq_length, device=device).float(), inv)
    ang = torch.cat((ang, ang), dim=-1)[:, None, :]  # (s, 1, d): broadcast over heads
    return ang.cos().to(dtype), ang.sin().to(dtype)


def _rotary(torch: Any, x: Any, cos: Any, sin: Any) -> Any:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def build_model(
    torch: Any, spec: ModelSpec, device: Any, dtype: Any, recompute: bool = False
) -> Any:
    """The whole model: ``forward(ids, targets)`` -> the fp32 loss."""
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    h, gpt = spec.hidden_size, spec.family == "gpt"
    kw = {"device": device, "dtype": dtype}

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(spec.vocab_size, h, **kw)
            self.wpe = nn.Embedding(spec.seq_length, h, **kw) if gpt else None
            self.h = nn.ModuleList(
                build_layer(torch, spec, device, dtype) for _ in range(spec.num_layers)
            )
            self.ln_f = (
                nn.LayerNorm(h, eps=NORM_EPS, **kw) if gpt else nn.RMSNorm(h, eps=NORM_EPS, **kw)
            )
            self.lm_head = (
                None if spec.tied_embeddings else nn.Linear(h, spec.vocab_size, False, **kw)
            )

        def forward(self, ids: Any, targets: Any) -> Any:
            b, s = ids.shape
            x = self.wte(ids)
            if self.wpe is not None:
                x = x + self.wpe(torch.arange(s, device=ids.device))
            for block in self.h:
                x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            x = self.ln_f(x)
            head = self.wte.weight if self.lm_head is None else self.lm_head.weight
            logits = F.linear(x, head)
            return F.cross_entropy(logits.float().view(b * s, -1), targets.view(b * s))

    return GPT()


def counted_params(model: Any) -> int:
    """Parameters, the position embedding excepted (as the shared runs count them)."""
    skip = {id(model.wpe.weight)} if getattr(model, "wpe", None) is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def adamw(torch: Any, params: list[Any], lr: float = 1e-4) -> tuple[Any, str]:
    """``torch.optim.AdamW`` on the parameters in their own dtype: fused where torch has the
    kernel for the device and dtype, else foreach. Returns (optimizer, implementation)."""
    try:
        opt = torch.optim.AdamW(params, lr=lr, fused=True)
        return opt, "fused"
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=lr, foreach=True), "foreach"


def sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_iteration(
    torch: Any,
    model: Any,
    opt: Any,
    spec: ModelSpec,
    micro_batch: int,
    accumulation: int,
    device: Any,
) -> Callable[[], None]:
    """One iteration: ``accumulation`` micro-batches of forward + backward, the optimizer
    step, ``zero_grad`` (set to None)."""
    shape = (micro_batch, spec.seq_length)
    ids = torch.randint(0, spec.vocab_size, shape, device=device)
    targets = torch.randint(0, spec.vocab_size, shape, device=device)

    def step() -> None:
        for _ in range(accumulation):
            model(ids, targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def clock(torch: Any, device: Any) -> Callable[[], float]:
    """Wall clock; on a CPU where torch runs on one thread, that thread's CPU time (what the
    op tables were timed with: see ``timing.py``; autograd runs CPU work on the calling
    thread), unaffected by other processes taking the core away."""
    if device.type != "cuda" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


def time_calls(
    torch: Any, device: Any, fn: Callable[[], Any], warmup: int, repeats: int
) -> list[float]:
    """Seconds of ``repeats`` calls after ``warmup``, each synchronized (``clock``)."""
    now = clock(torch, device)
    for _ in range(warmup):
        fn()
    sync(torch, device)
    out = []
    for _ in range(repeats):
        t0 = now()
        fn()
        sync(torch, device)
        out.append(now() - t0)
    return out


def median(samples: list[float]) -> float:
    return float(statistics.median(samples))
