"""A real transformer in torch, Megatron-style, for the self-check: one layer, or a small
whole model (embedding, layers, final norm, logits, fp32 cross-entropy).

It is written with the same kernels the profiler measures (``kernels.py``) and follows
the op sequence of ``sim/costs.py``, so the check compares the simulator's sum of
measured ops with the real thing: what the real thing does beyond those ops (tensor
views and copies, autograd bookkeeping, the QKV bias in the GEMM) is the error.
"""

from __future__ import annotations

from typing import Any

from vtrain_opt.profiler import kernels as K
from vtrain_opt.spec.model import ModelSpec


def build(torch: Any, spec: ModelSpec, device: Any, dtype: Any, whole: bool) -> Any:
    """One transformer layer (``whole=False``) or the whole model, as an nn.Module."""
    import torch.nn as nn
    import torch.nn.functional as F

    h, f, heads, d = spec.hidden_size, spec.ffn, spec.num_attention_heads, spec.head_dim
    kvh = spec.kv_hidden_size
    gpt = spec.family == "gpt"

    def param(*shape: int, value: float | None = None) -> Any:
        t = torch.empty(*shape, device=device, dtype=dtype)
        if value is None:
            t.normal_(0.0, 0.02)
        else:
            t.fill_(value)
        return nn.Parameter(t)

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1_w, self.norm2_w = param(h, value=1.0), param(h, value=1.0)
            self.qkv_w = param(h + 2 * kvh, h)
            self.out_w = param(h, h)
            self.up_w = param((1 if gpt else 2) * f, h)
            self.down_w = param(h, f)
            if gpt:
                self.norm1_b, self.norm2_b = param(h, value=0.0), param(h, value=0.0)
                self.qkv_b, self.out_b = param(h + 2 * kvh, value=0.0), param(h, value=0.0)
                self.up_b, self.down_b = param(f, value=0.0), param(h, value=0.0)

        def norm(self, x: Any, i: int) -> Any:
            w = getattr(self, f"norm{i}_w")
            if gpt:
                return K.layer_norm(F, x, w, getattr(self, f"norm{i}_b"))
            return K.rms_norm(F, x, w)

        def forward(self, x: Any, rope: Any = None) -> Any:
            b, s, _ = x.shape
            x = x.reshape(b * s, h)
            qkv = F.linear(self.norm(x, 1), self.qkv_w, self.qkv_b if gpt else None)
            q = qkv[:, :h].view(b, s, heads, d)
            k = qkv[:, h : h + kvh].view(b, s, kvh // d, d)
            v = qkv[:, h + kvh :].view(b, s, kvh // d, d)
            if rope is not None:
                q, k = K.rotary(torch, q, *rope), K.rotary(torch, k, *rope)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            if kvh != h:  # grouped-query attention: share each kv head among its queries
                k = k.repeat_interleave(h // kvh, dim=1)
                v = v.repeat_interleave(h // kvh, dim=1)
            ctx = K.attention(F, q, k, v).transpose(1, 2).reshape(b * s, h)
            o = F.linear(ctx, self.out_w)
            x = K.bias_dropout_add(F, o, self.out_b, x) if gpt else x + o
            u = F.linear(self.norm(x, 2), self.up_w)
            a = K.bias_gelu(F, u, self.up_b) if gpt else K.swiglu(F, u)
            dn = F.linear(a, self.down_w)
            x = K.bias_dropout_add(F, dn, self.down_b, x) if gpt else x + dn
            return x.view(b, s, h)

    def rope_tables(s: int) -> tuple[Any, Any]:
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=device).float() / d))
        ang = torch.outer(torch.arange(s, device=device).float(), inv)
        ang = torch.cat((ang, ang), dim=-1)[:, None, :]  # (s, 1, d)
        return ang.cos().to(dtype), ang.sin().to(dtype)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            vocab = spec.padded_vocab(1)
            self.embed_w = param(vocab, h)
            if gpt:
                self.pos_w = param(spec.seq_length, h)
            else:
                self.head_w = param(vocab, h)
            self.layers = nn.ModuleList(Layer() for _ in range(spec.num_layers))
            self.final_w = param(h, value=1.0)
            if gpt:
                self.final_b = param(h, value=0.0)
            self.rope = None if gpt else rope_tables(spec.seq_length)

        def forward(self, ids: Any, target: Any) -> Any:
            b, s = ids.shape
            x = F.embedding(ids, self.embed_w)
            if gpt:
                x = F.dropout(x + self.pos_w[:s], K.DROPOUT_P, True)
            for layer in self.layers:
                x = layer(x, self.rope)
            x = x.reshape(b * s, h)
            if gpt:
                y = K.layer_norm(F, x, self.final_w, self.final_b)
            else:
                y = K.rms_norm(F, x, self.final_w)
            logits = F.linear(y, self.embed_w if gpt else self.head_w)
            return K.cross_entropy(F, logits, target.reshape(b * s))

    class OneLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = Layer()
            self.rope = None if gpt else rope_tables(spec.seq_length)

        def forward(self, x: Any) -> Any:
            return self.layer(x, self.rope)

    return Model() if whole else OneLayer()
