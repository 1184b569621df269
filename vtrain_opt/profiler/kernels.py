"""The torch ops of a Megatron-style transformer, written once and used both by the op
benchmarks (``ops.py``) and by the self-check model (``model.py``), so the check times
exactly the kernels the profile measured.

Megatron's layout: linear layers without their bias (skip-bias-add); the bias is added
inside the following memory-bound op (bias-GeLU, bias-dropout-add). Call these with
torch tensors; torch is imported by the caller.
"""

from __future__ import annotations

from typing import Any

DROPOUT_P = 0.1  # GPT's hidden and embedding dropout
NORM_EPS = 1e-5


def torch_dtype(torch: Any, name: str) -> Any:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def layer_norm(F: Any, x: Any, weight: Any, bias: Any) -> Any:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, NORM_EPS)


def rms_norm(F: Any, x: Any, weight: Any) -> Any:
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), weight, NORM_EPS)
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * (variance + NORM_EPS).rsqrt()).to(x.dtype) * weight


def bias_dropout_add(F: Any, x: Any, bias: Any, residual: Any, training: bool = True) -> Any:
    return residual + F.dropout(x + bias, DROPOUT_P, training)


def bias_gelu(F: Any, x: Any, bias: Any) -> Any:
    return F.gelu(x + bias, approximate="tanh")


def swiglu(F: Any, x: Any) -> Any:
    """SwiGLU on the fused gate|up projection: silu(gate) * up."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def rotary(torch: Any, x: Any, cos: Any, sin: Any) -> Any:
    """Rotary position embedding on x (..., heads, head_dim); cos/sin broadcast over heads."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def attention(F: Any, q: Any, k: Any, v: Any) -> Any:
    """Causal attention, (batch, heads, seq, head_dim): torch's SDPA picks flash where it can."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def cross_entropy(F: Any, logits: Any, target: Any) -> Any:
    """Loss in fp32, as Megatron computes it."""
    return F.cross_entropy(logits.float(), target)


class MixedAdam:
    """Adam(W) as Megatron runs it: fp32 master weights and states, model weights in the
    compute dtype. Fused where torch has a fused kernel for the device, else foreach.

    ``step()`` converts the gradients to fp32 (mixed precision), steps, copies the master
    weights back into the model's and drops the gradients.
    """

    def __init__(self, torch: Any, params: list[Any], lr: float = 1e-4):
        self.torch = torch
        self.params = list(params)
        self.mixed = any(p.dtype != torch.float32 for p in self.params)
        if self.mixed:
            self.master = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        else:
            self.master = self.params
        try:
            self.opt = torch.optim.AdamW(self.master, lr=lr, fused=True)
            self.impl = "fused"
        except (RuntimeError, ValueError, TypeError):
            self.opt = torch.optim.AdamW(self.master, lr=lr, foreach=True)
            self.impl = "foreach"

    def step(self) -> None:
        torch = self.torch
        if self.mixed:
            for p, m in zip(self.params, self.master, strict=True):
                m.grad = None if p.grad is None else p.grad.float()
        self.opt.step()
        if self.mixed:
            with torch.no_grad():
                copy = getattr(torch, "_foreach_copy_", None)
                if copy is not None:
                    copy(self.params, self.master)
                else:
                    for p, m in zip(self.params, self.master, strict=True):
                        p.copy_(m)
            for m in self.master:
                m.grad = None
        for p in self.params:
            p.grad = None
