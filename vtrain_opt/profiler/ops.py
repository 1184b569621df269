"""Op benchmarks: time every op the simulator models, on this device, over a grid.

Each memory-bound op is measured on a tensor of E elements and filed under the bytes
that ``sim/costs.py`` (or ``sim/step.py`` for the optimizer) counts for that shape
(``sim_bytes_per_element``), so the simulator reads it back by the same key. The ``_bwd`` tables time the op's backward
as autograd runs it (``torch.autograd.grad`` on the op's graph).

Each framework's ops as it launches them: Megatron's fused bias-GELU and bias-dropout-add
and its mixed-precision Adam (``optimizer``); plain PyTorch's GELU without a bias (the
bias is in the GEMM's epilogue), the column sum of a Linear's output gradient into its
bias gradient (``bias_grad``) and ``torch.optim.AdamW`` over parameters in the compute
dtype (``adam``). nn.Linear with its bias is timed at the in-step layers' shapes as a note
beside the ``gemm`` table (which times ``F.linear`` without one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from vtrain_opt.profiler import kernels as K
from vtrain_opt.profiler import torch_model as TM
from vtrain_opt.profiler.grid import FRAMEWORKS, Grid, memory_ops_for
from vtrain_opt.profiler.timing import Timer, Timing
from vtrain_opt.sim.convention import sim_bytes_per_element

OnStep = Callable[[str], None]
# Inner widths of the measured tensors: hidden-like, ffn-like, attention scores, vocabulary.
WIDTHS = {
    "cpu": {"hidden": 1024, "ffn": 4096, "seq": 1024, "vocab": 8192, "rows": 8192},
    "cuda": {"hidden": 4096, "ffn": 16384, "seq": 4096, "vocab": 32768, "rows": 32768},
}
ROTARY_HEAD_DIM = 128


@dataclass
class Cell:
    """Measured times of one table, filled cell by cell."""

    time_s: np.ndarray
    spread: np.ndarray
    failures: list[str]

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> Cell:
        return cls(np.full(shape, np.nan), np.full(shape, np.nan), [])

    def put(self, idx: tuple[int, ...], t: Timing | None, what: str = "") -> None:
        if t is None:
            self.failures.append(what)
            return
        self.time_s[idx] = t.median_s
        self.spread[idx] = t.spread


def _is_oom(torch: Any, e: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return (oom and isinstance(e, oom)) or "out of memory" in str(e).lower()


class OpBench:
    """Runs the op benchmarks of one device and dtype."""

    def __init__(
        self,
        torch: Any,
        device: Any,
        dtype: str,
        grid: Grid,
        on_step: OnStep,
        frameworks: tuple[str, ...] = FRAMEWORKS,
    ):
        import torch.nn.functional as F

        self.torch, self.F, self.device, self.grid = torch, F, device, grid
        self.dtype_name = dtype
        self.dtype = K.torch_dtype(torch, dtype)
        self.kind = "cuda" if device.type == "cuda" else "cpu"
        self.widths = WIDTHS[self.kind]
        self.timer = Timer(torch, device, grid.warmup, grid.repeats, grid.min_sample_s)
        self.on_step = on_step
        self.frameworks = frameworks
        self.optimizer_impl = ""
        self.adam_impl = ""

    # ---- helpers ------------------------------------------------------------------------------
    def _t(self, *shape: int, grad: bool = False, dtype: Any = None) -> Any:
        x = self.torch.randn(*shape, device=self.device, dtype=dtype or self.dtype)
        return x.requires_grad_(grad)

    def _time(self, fn: Callable[[], Any], what: str) -> Timing | None:
        try:
            return self.timer.time(fn)
        except RuntimeError as e:
            if not _is_oom(self.torch, e):
                raise
            if self.kind == "cuda":
                self.torch.cuda.empty_cache()
            return None
        finally:
            self.on_step(what)

    def _backward(
        self, y: Any, inputs: tuple[Any, ...], dy: Any | None = None
    ) -> Callable[[], Any]:
        dy = self.torch.randn_like(y) if dy is None else dy
        return lambda: self.torch.autograd.grad(y, inputs, dy, retain_graph=True)

    # ---- GEMM and attention ------------------------------------------------------------------------
    def gemm(self) -> dict[str, Any]:
        g = self.grid.gemm
        cell = Cell.empty((len(g),) * 3)
        for i, m in enumerate(g):
            for k_i, k in enumerate(g):
                a = self._t(m, k)
                for j, n in enumerate(g):
                    w = self._t(n, k, grad=True)  # a weight: autograd records the op
                    t = self._time(lambda a=a, w=w: self.F.linear(a, w), f"gemm {m}x{n}x{k}")
                    cell.put((i, j, k_i), t, f"{m}x{n}x{k}")
                    del w
                del a
        return _table(("m", "n", "k"), (g, g, g), cell, {"impl": "torch.nn.functional.linear"})

    def gemm_bias(self) -> dict[str, Any]:
        """nn.Linear as plain PyTorch launches it (``F.linear(x, w, b)``: the bias in the
        GEMM's epilogue) against ``F.linear(x, w)``, at the Linears of the in-step layers."""
        rows = []
        for h, _, s, b in self.grid.step_layers:
            tokens, f = b * s, 4 * h
            for n, k in ((3 * h, h), (h, h), (f, h), (h, f)):
                x = self._t(tokens, k)
                w, bias = self._t(n, k, grad=True), self._t(n, grad=True)
                what = f"gemm+bias {tokens}x{n}x{k}"
                with_bias = self._time(lambda x=x, w=w, bias=bias: self.F.linear(x, w, bias), what)
                plain = self._time(lambda x=x, w=w: self.F.linear(x, w), what)
                if with_bias is not None and plain is not None:
                    rows.append(
                        {
                            "m": tokens,
                            "n": n,
                            "k": k,
                            "bias_s": with_bias.median_s,
                            "no_bias_s": plain.median_s,
                            "ratio": with_bias.median_s / plain.median_s,
                        }
                    )
                del x, w, bias
        ratios = [r["ratio"] for r in rows]
        return {
            "impl": "torch.nn.functional.linear(x, w, b) / torch.nn.functional.linear(x, w)",
            "median_ratio": float(np.median(ratios)) if ratios else None,
            "shapes": rows,
        }

    def attention(self) -> tuple[dict[str, Any], dict[str, Any]]:
        gr = self.grid
        axes = (gr.attention_batch_heads, gr.attention_seq, gr.attention_head_dim)
        shape = tuple(len(a) for a in axes)
        fwd, bwd = Cell.empty(shape), Cell.empty(shape)
        for i, bh in enumerate(axes[0]):
            for j, s in enumerate(axes[1]):
                for k, d in enumerate(axes[2]):
                    idx, what = (i, j, k), f"attention {bh}x{s}x{d}"
                    try:
                        # (batch, seq, heads, d) transposed to (batch, heads, seq, d), the
                        # strides of q, k, v split from a fused QKV projection
                        bases = [self._t(1, s, bh, d, grad=True) for _ in range(3)]
                    except RuntimeError as e:
                        if not _is_oom(self.torch, e):
                            raise
                        fwd.put(idx, None, what)
                        bwd.put(idx, None, what)
                        self.on_step(what)
                        self.on_step(what)
                        continue
                    qkv = tuple(b.transpose(1, 2) for b in bases)
                    fwd.put(idx, self._time(partial(K.attention, self.F, *qkv), what), what)
                    out = K.attention(self.F, *qkv)
                    bwd.put(idx, self._time(self._backward(out, tuple(bases)), what + " bwd"), what)
                    bases = qkv = out = None  # free before the next, larger cell
        names = ("batch_heads", "seq", "head_dim")
        info = {"impl": "torch.nn.functional.scaled_dot_product_attention(is_causal=True)"}
        return _table(names, axes, fwd, info), _table(names, axes, bwd, info)

    # ---- memory-bound ops --------------------------------------------------------------------------
    def memory_ops(self) -> dict[str, dict[str, Any]]:
        """Each op on E elements, filed under the bytes the simulator counts for E."""
        tables: dict[str, dict[str, Any]] = {}
        elements = self.grid.elements
        factors = sim_bytes_per_element(self.dtype_name)
        wanted = set(memory_ops_for(self.frameworks))
        for name, (build, width_key) in self._memory_builders().items():
            if name not in wanted:
                continue
            if self.kind == "cuda":
                self.torch.cuda.empty_cache()  # each op's largest cell needs room
            fwd = Cell.empty((len(elements),))
            bwd = Cell.empty((len(elements),))
            has_bwd = False
            for i, e in enumerate(elements):
                width = min(self.widths[width_key], e)
                fwd_fn, bwd_fn = build(e // width, width)
                fwd.put((i,), self._time(fwd_fn, f"{name} {e}"), str(e))
                if bwd_fn is not None and f"{name}_bwd" in wanted:
                    has_bwd = True
                    bwd.put((i,), self._time(bwd_fn, f"{name}_bwd {e}"), str(e))
            for op, cell in ((name, fwd), (f"{name}_bwd", bwd) if has_bwd else (None, None)):
                if op is None:
                    continue
                info = {
                    "elements": list(elements),
                    "width": self.widths[width_key],
                    "bytes_per_element": factors[op],
                }
                keys = [factors[op] * e for e in elements]
                tables[op] = _table(("nbytes",), (keys,), cell, info)
        if "optimizer" in wanted:
            tables["optimizer"] = self.optimizer(factors["optimizer"])
        if "adam" in wanted:
            tables["adam"] = self.adam(factors["adam"])
        return tables

    def _memory_builders(self) -> dict[str, tuple[Callable[[int, int], tuple[Any, ...]], str]]:
        torch, F = self.torch, self.F
        t = self._t

        def norm(kind: str) -> Callable[[int, int], tuple[Any, ...]]:
            def build(r: int, w: int) -> tuple[Any, ...]:
                x, weight, bias = t(r, w, grad=True), t(w, grad=True), t(w, grad=True)
                if kind == "layernorm":
                    f = lambda: K.layer_norm(F, x, weight, bias)  # noqa: E731
                    inputs = (x, weight, bias)
                else:
                    f = lambda: K.rms_norm(F, x, weight)  # noqa: E731
                    inputs = (x, weight)
                return f, self._backward(f(), inputs)

            return build

        def bias_dropout_add(r: int, w: int) -> tuple[Any, ...]:
            x, bias, res = t(r, w, grad=True), t(w, grad=True), t(r, w, grad=True)
            f = lambda: K.bias_dropout_add(F, x, bias, res)  # noqa: E731
            return f, self._backward(f(), (x, bias, res))

        def residual_add(r: int, w: int) -> tuple[Any, ...]:
            x, res = t(r, w, grad=True), t(r, w, grad=True)
            # backward: the residual stream's gradient is the sum of the two branches'
            dy, db = t(r, w), t(r, w)
            return lambda: x + res, lambda: dy + db

        def gelu(r: int, w: int) -> tuple[Any, ...]:
            x = t(r, w, grad=True)
            f = lambda: F.gelu(x, approximate="tanh")  # noqa: E731
            return f, self._backward(f(), (x,))

        def bias_grad(r: int, w: int) -> tuple[Any, ...]:
            dy = t(r, w)  # a Linear's output gradient; autograd sums it over the tokens
            return lambda: dy.sum(0), None

        def bias_gelu(r: int, w: int) -> tuple[Any, ...]:
            x, bias = t(r, w, grad=True), t(w, grad=True)
            f = lambda: K.bias_gelu(F, x, bias)  # noqa: E731
            return f, self._backward(f(), (x, bias))

        def swiglu(r: int, w: int) -> tuple[Any, ...]:
            x = t(r, 2 * w, grad=True)  # fused gate|up; w = output width
            f = lambda: K.swiglu(F, x)  # noqa: E731
            return f, self._backward(f(), (x,))

        def rotary(r: int, w: int) -> tuple[Any, ...]:
            d = min(ROTARY_HEAD_DIM, w)
            x = t(r, w // d, d, grad=True)
            cos, sin = t(r, 1, d), t(r, 1, d)
            f = lambda: K.rotary(torch, x, cos, sin)  # noqa: E731
            return f, self._backward(f(), (x,))

        def softmax(r: int, w: int) -> tuple[Any, ...]:
            x = t(r, w, grad=True)
            f = lambda: torch.softmax(x, dim=-1)  # noqa: E731
            return f, self._backward(f(), (x,))

        def dropout(r: int, w: int) -> tuple[Any, ...]:
            x = t(r * w, grad=True)
            f = lambda: F.dropout(x, K.DROPOUT_P, True)  # noqa: E731
            return f, self._backward(f(), (x,))

        def embedding(r: int, w: int) -> tuple[Any, ...]:
            vocab = self.widths["rows"]
            table = t(vocab, w, grad=True)
            ids = torch.randint(0, vocab, (r,), device=self.device)
            dy = t(r, w)
            grad = torch.zeros(vocab, w, device=self.device, dtype=torch.float32)
            # backward: scatter-add into the fp32 gradient of the table
            bwd = lambda: grad.index_add_(0, ids, dy.float())  # noqa: E731
            return lambda: F.embedding(ids, table), bwd

        def cross_entropy(r: int, w: int) -> tuple[Any, ...]:
            logits = t(r, w, grad=True)
            target = torch.randint(0, w, (r,), device=self.device)
            f = lambda: K.cross_entropy(F, logits, target)  # noqa: E731
            loss = f()
            dloss = torch.ones((), device=self.device)
            bwd = lambda: torch.autograd.grad(loss, (logits,), dloss, retain_graph=True)  # noqa: E731
            return f, bwd

        def copy(r: int, w: int) -> tuple[Any, ...]:
            src, dst = t(r * w), t(r * w)
            return lambda: dst.copy_(src), None

        return {
            "layernorm": (norm("layernorm"), "hidden"),
            "rmsnorm": (norm("rmsnorm"), "hidden"),
            "bias_dropout_add": (bias_dropout_add, "hidden"),
            "residual_add": (residual_add, "hidden"),
            "bias_gelu": (bias_gelu, "ffn"),
            "gelu": (gelu, "ffn"),
            "bias_grad": (bias_grad, "hidden"),
            "swiglu": (swiglu, "ffn"),
            "rotary": (rotary, "hidden"),
            "softmax": (softmax, "seq"),
            "dropout": (dropout, "hidden"),
            "embedding": (embedding, "hidden"),
            "cross_entropy": (cross_entropy, "vocab"),
            "memory": (copy, "hidden"),
        }

    def optimizer(self, bytes_per_param: float) -> dict[str, Any]:
        """Mixed-precision Adam over P parameters, filed under the bytes ``sim/step.py``
        counts for P parameters."""
        sizes = self.grid.optimizer_params
        cell = Cell.empty((len(sizes),))
        for i, p in enumerate(sizes):
            param = self._t(p, grad=True)
            grad = self._t(p)
            opt = K.MixedAdam(self.torch, [param])
            self.optimizer_impl = opt.impl

            def step(param: Any = param, grad: Any = grad, opt: K.MixedAdam = opt) -> None:
                param.grad = grad
                opt.step()

            cell.put((i,), self._time(step, f"optimizer {p}"), str(p))
        info = {
            "elements": list(sizes),
            "bytes_per_element": bytes_per_param,
            "impl": f"AdamW ({self.optimizer_impl}), fp32 master weights and states",
        }
        return _table(("nbytes",), ([p * bytes_per_param for p in sizes],), cell, info)

    def adam(self, bytes_per_param: float) -> dict[str, Any]:
        """``torch.optim.AdamW`` (fused where available, else foreach) stepping P parameters
        in the compute dtype, states in it too (no master copy), filed under the bytes
        ``sim/costs_torch.py`` counts for P parameters."""
        sizes = self.grid.optimizer_params
        cell = Cell.empty((len(sizes),))
        for i, p in enumerate(sizes):
            param = self._t(p, grad=True)
            param.grad = self._t(p)
            opt, self.adam_impl = TM.adamw(self.torch, [param])
            cell.put((i,), self._time(opt.step, f"adam {p}"), str(p))
            del param, opt
        info = {
            "elements": list(sizes),
            "bytes_per_element": bytes_per_param,
            "impl": f"torch.optim.AdamW ({self.adam_impl}), parameters and states in "
            f"{self.dtype_name}",
        }
        return _table(("nbytes",), ([p * bytes_per_param for p in sizes],), cell, info)


def bandwidth(bench: OpBench) -> dict[str, float]:
    """Device memory bandwidth: one copy of a buffer larger than the caches."""
    n = bench.grid.bandwidth_bytes // 4
    src = bench.torch.empty(n, dtype=bench.torch.float32, device=bench.device).uniform_()
    dst = bench.torch.empty_like(src)
    t = bench._time(partial(dst.copy_, src), f"bandwidth {n * 4 / 2**20:.0f} MiB")
    if t is None:
        raise ValueError("the memory-bandwidth copy ran out of memory")
    return {
        "bytes_per_s": 2.0 * n * 4 / t.median_s,
        "buffer_bytes": float(n * 4),
        "spread": t.spread,
    }


def _table(
    axes: tuple[str, ...], grid: tuple[Any, ...], cell: Cell, info: dict[str, Any]
) -> dict[str, Any]:
    """A table in the profile's JSON layout (``profile_tables.py``)."""

    def nested(a: np.ndarray) -> Any:
        return np.where(np.isfinite(a), a, None).tolist()  # null = not measured

    out: dict[str, Any] = {
        "axes": list(axes),
        "grid": {name: [float(v) for v in values] for name, values in zip(axes, grid, strict=True)},
        "time_s": nested(cell.time_s),
        "spread": nested(cell.spread),
        "shape": info,
    }
    if cell.failures:
        out["not_measured"] = cell.failures
    return out


def measure_fp8_gemm(
    torch: Any, device: Any, grid: Grid, on_step: OnStep
) -> tuple[dict[str, Any] | None, str]:
    """The fp8 GEMM table (``tables.fp8.gemm``: ``torch._scaled_mm`` of E4M3 operands, unit
    scales, bf16 output, over the GEMM grid), or None with the reason where this torch or
    device has no fp8 GEMM (before Hopper; an old torch)."""
    fp8 = getattr(torch, "float8_e4m3fn", None)
    scaled_mm = getattr(torch, "_scaled_mm", None)
    if fp8 is None or scaled_mm is None:
        return None, f"torch {torch.__version__} has no float8_e4m3fn / _scaled_mm"
    bench = OpBench(torch, device, "bf16", grid, on_step, ("megatron",))
    one = torch.ones((), device=device, dtype=torch.float32)

    def operand(rows: int, cols: int) -> Any:
        return bench._t(rows, cols).to(fp8)

    def mm(a: Any, w: Any) -> Any:  # w is (n, k) row-major: w.t() is the column-major B
        return scaled_mm(a, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    try:
        g0 = grid.gemm[0]
        mm(operand(g0, g0), operand(g0, g0))
    except (RuntimeError, NotImplementedError, TypeError) as e:
        return None, f"torch._scaled_mm is not supported here: {str(e).splitlines()[0][:160]}"
    g = grid.gemm
    cell = Cell.empty((len(g),) * 3)
    for i, m in enumerate(g):
        for k_i, k in enumerate(g):
            a = operand(m, k)
            for j, n in enumerate(g):
                w = operand(n, k)
                t = bench._time(lambda a=a, w=w: mm(a, w), f"fp8 gemm {m}x{n}x{k}")
                cell.put((i, j, k_i), t, f"{m}x{n}x{k}")
    impl = "torch._scaled_mm (float8_e4m3fn operands, unit scales, bf16 output)"
    return _table(("m", "n", "k"), (g, g, g), cell, {"impl": impl}), impl


def measure_ops(
    torch: Any,
    device: Any,
    dtype: str,
    grid: Grid,
    on_step: OnStep,
    frameworks: tuple[str, ...] = FRAMEWORKS,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """All op tables of one dtype that the frameworks need, and notes on how they were
    measured."""
    bench = OpBench(torch, device, dtype, grid, on_step, frameworks)
    copy = bandwidth(bench)
    tables: dict[str, Any] = {"gemm": bench.gemm()}
    tables["attention_fwd"], tables["attention_bwd"] = bench.attention()
    tables.update(bench.memory_ops())
    notes: dict[str, Any] = {"frameworks": list(frameworks)}
    if "torch" in frameworks:
        notes["gemm_bias"] = bench.gemm_bias()
        notes["adam"] = bench.adam_impl
    notes |= {
        "optimizer": bench.optimizer_impl,
        "timing": f"{bench.timer.clock_name} around back-to-back calls after warm-up; median "
        f"of {grid.repeats} samples, spread = relative interquartile range",
        "threads": torch.get_num_threads() if bench.kind == "cpu" else None,
        "memory_bandwidth": copy,
    }
    return tables, notes
