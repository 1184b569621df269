"""Time of each op on one GPU, vectorized: every argument may be an array of shape (N,).

The analytical model combines the GPU's datasheet peaks with the profile's bounded
efficiencies:

* GEMM: the best of a few CTA tile shapes (as cuBLAS picks), each wave of tiles
  costing a full tile, with a main-loop efficiency K/(K + k_half); bounded below by
  the time to stream the operands through HBM. Plus a fixed per-kernel overhead.
* Flash attention: FLOPs at the attention efficiency (causal masking halves the work).
* Memory-bound ops (norms, activations, softmax, dropout, residuals, optimizer):
  bytes moved at the profile's fraction of HBM bandwidth, plus per-kernel overhead.
* Collectives: NCCL's ring volumes (2(n-1)/n of the buffer for all-reduce, (n-1)/n for
  all-gather and reduce-scatter) at the bus bandwidth of the link tier, or, for a group
  spanning k nodes (NVLink domains) with g > 1 members in each, the hierarchical (tree)
  schedule when it is faster: 2(k-1)/k across the adapters plus 2(g-1)/g over NVLink;
  plus a fixed launch cost, a per-step link latency, and the HBM traffic of NCCL's copy
  and reduction kernels (``collective_hbm_passes`` bytes per payload byte, at the
  datasheet HBM bandwidth).

"Node" in the communication model below means an NVLink domain (``ClusterSpec.domain_gpus``):
one node on today's DGX/HGX clusters, a 72-GPU rack on GB200 NVL72. Each GPU keeps its own
share of its node's network adapters (``nic_bytes_per_s_per_gpu``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from vtrain_opt.profiles import GEMM_TILES, Profile
from vtrain_opt.spec.hardware import ClusterSpec
from vtrain_opt.spec.setup import Setup

ArrayLike = np.ndarray | float | int


@dataclass(frozen=True)
class OpModel:
    """Op-time model of one GPU of a cluster, for one setup (dtype)."""

    profile: Profile
    cluster: ClusterSpec
    setup: Setup

    @cached_property
    def measured(self) -> Any:
        """Op tables of a measured profile (``sim/measured.py``), or None for analytical ones."""
        if not self.profile.tables:
            return None
        from vtrain_opt.sim.measured import MeasuredTables

        return MeasuredTables(self.profile.tables, self.profile.name)

    def _override(self, op: str, analytical: np.ndarray, **shape: Any) -> np.ndarray:
        """Measured times where the profile has a table covering the shape, else analytical."""
        if self.measured is None:
            return analytical
        return self.measured.override(op, analytical, dtype=self.setup.compute_dtype, **shape)

    # ---- compute -----------------------------------------------------------------------
    @property
    def peak_flop_per_s(self) -> float:
        """Peak of everything but fp8 GEMMs (bf16 under fp8: attention runs in bf16)."""
        return self.cluster.gpu.peak(self.setup.compute_dtype)

    @property
    def memory_bytes_per_s(self) -> float:
        return self.cluster.gpu.hbm_bytes_per_s * self.profile.memory_efficiency

    def gemm_s(
        self, m: ArrayLike, n: ArrayLike, k: ArrayLike, batch: ArrayLike = 1, fp8: bool = False
    ) -> np.ndarray:
        """Time of ``batch`` GEMMs of (m x k) @ (k x n); ``fp8``: fp8 operands (Transformer
        Engine's GEMMs, bf16 output) at the GPU's fp8 peak.

        An fp8 GEMM keeps the profile's efficiency curve (the bf16 one's, carried over to the
        fp8 peak): analytically, the same tiles and k_half at the fp8 peak; from a measured
        profile, its fp8 GEMM table where it has one, else its bf16 table's time scaled by
        the analytical fp8 / bf16 ratio at that shape.
        """
        m, n, k, batch = (np.asarray(x, dtype=np.float64) for x in (m, n, k, batch))
        a = float(self.setup.act_bytes)
        bf16 = self._gemm_analytical(m, n, k, batch, self.peak_flop_per_s, a)
        scale = self.profile.step_gemm_scale
        if not fp8:
            return self._override("gemm", bf16, m=m, n=n, k=k, batch=batch) * scale
        t8 = self._gemm_analytical(m, n, k, batch, self.cluster.gpu.peak("fp8"), 1.0, a)
        if self.measured is None:
            return t8 * scale
        if "gemm" in self.measured.tables.get("fp8", {}):
            shape = {"m": m, "n": n, "k": k, "batch": batch}
            return self.measured.override("gemm", t8, dtype="fp8", **shape) * scale
        measured = self._override("gemm", bf16, m=m, n=n, k=k, batch=batch)
        return measured * (t8 / bf16) * scale

    def _gemm_analytical(
        self,
        m: np.ndarray,
        n: np.ndarray,
        k: np.ndarray,
        batch: np.ndarray,
        peak_flop_per_s: float,
        in_bytes: float,
        out_bytes: float | None = None,
    ) -> np.ndarray:
        """The analytical GEMM time at ``peak_flop_per_s``, operands of ``in_bytes`` per
        element, output of ``out_bytes`` (default the same)."""
        p = self.profile
        out_bytes = in_bytes if out_bytes is None else out_bytes
        sms = self.cluster.gpu.num_sms
        per_sm_flop_per_s = peak_flop_per_s / sms * p.gemm_efficiency * (k / (k + p.gemm_k_half))
        best = None
        for tile_m, tile_n, tile_eff in GEMM_TILES:
            tiles = np.ceil(m / tile_m) * np.ceil(n / tile_n) * batch
            waves = np.ceil(tiles / sms)
            t = waves * (2.0 * tile_m * tile_n * k) / (per_sm_flop_per_s * tile_eff)
            best = t if best is None else np.minimum(best, t)
        assert best is not None
        if out_bytes == in_bytes:
            traffic = (m * k + k * n + m * n) * batch * in_bytes
        else:
            traffic = ((m * k + k * n) * in_bytes + m * n * out_bytes) * batch
        return np.maximum(best, traffic / self.memory_bytes_per_s) + p.kernel_overhead_s

    def flash_attention_s(
        self, batch_heads: ArrayLike, seq: ArrayLike, head_dim: ArrayLike, backward: bool = False
    ) -> np.ndarray:
        """Fused causal attention over ``batch_heads`` (micro-batch x local heads) sequences."""
        flop = 4.0 * np.asarray(batch_heads, dtype=np.float64) * seq * seq * head_dim * 0.5
        kernels = 1
        if backward:
            flop = flop * 2.5  # dQ, dK, dV GEMMs plus the recomputed scores
            kernels = 3
        t = flop / (self.peak_flop_per_s * self.profile.attention_efficiency) + (
            kernels * self.profile.kernel_overhead_s
        )
        op = "attention_bwd" if backward else "attention_fwd"
        return self._override(op, t, batch_heads=batch_heads, seq=seq, head_dim=head_dim)

    def memory_s(self, nbytes: ArrayLike, kernels: ArrayLike = 1, op: str = "memory") -> np.ndarray:
        """A memory-bound op (or several fused ones) moving ``nbytes`` through HBM.

        ``op`` names the kind (layernorm, rmsnorm, gelu, swiglu, softmax, dropout, residual,
        rotary, embedding, cross_entropy, optimizer, ...) so a measured profile can answer
        with that op's own table.
        """
        t = np.asarray(nbytes, dtype=np.float64) / self.memory_bytes_per_s + (
            np.asarray(kernels, dtype=np.float64) * self.profile.kernel_overhead_s
        )
        return self._override(op, t, nbytes=nbytes, kernels=kernels)

    # ---- communication -------------------------------------------------------------------
    def bus_bytes_per_s(
        self, group: ArrayLike, per_node: ArrayLike, stride: ArrayLike = 1
    ) -> np.ndarray:
        """Bus bandwidth of a group of ``group`` ranks with ``per_node`` of them in each node,
        ``stride`` GPUs apart.

        Inside a node: NVLink, all of it behind an NVSwitch, the share NCCL's rings get of a
        point-to-point mesh otherwise (``ClusterSpec.ring_link_share``). Across nodes, NCCL
        runs one ring per local member, each over that GPU's share of the node's adapters,
        capped by NVLink.
        """
        per_node = np.asarray(per_node, dtype=np.float64)
        return self._bus(group, per_node, self._nvlink_bytes_per_s(per_node, stride))

    def _bus(self, group: ArrayLike, per_node: np.ndarray, nvlink: np.ndarray) -> np.ndarray:
        """``bus_bytes_per_s`` given the group's NVLink bandwidth inside a node."""
        c, p = self.cluster, self.profile
        inter = np.minimum(nvlink, per_node * c.nic_bytes_per_s_per_gpu * p.network_efficiency)
        return np.where(per_node >= np.asarray(group, dtype=np.float64), nvlink, inter)

    def _nvlink_bytes_per_s(self, members: np.ndarray, stride: ArrayLike) -> np.ndarray:
        """Bus bandwidth of a group of ``members`` GPUs inside one node."""
        c = self.cluster
        return (
            c.intra_bytes_per_s * self.profile.nvlink_efficiency * self._link_share(members, stride)
        )

    def _link_share(self, members: np.ndarray, stride: ArrayLike) -> np.ndarray | float:
        """``ClusterSpec.ring_link_share`` of every (members, stride) pair; 1 behind a switch."""
        if self.cluster.nvlink_links is None:
            return 1.0
        return _per_distinct(self.cluster.ring_link_share, members, stride)

    def collective_s(
        self,
        kind: str,
        nbytes: ArrayLike,
        group: ArrayLike,
        per_node: ArrayLike,
        stride: ArrayLike = 1,
    ) -> np.ndarray:
        """Time of an NCCL collective on a buffer of ``nbytes`` (the full, unsharded size).

        ``kind``: all_reduce, all_gather or reduce_scatter. A group of one costs nothing.
        ``stride``: GPUs between neighbouring ranks (1 for tp groups, tp for data-parallel
        ones); it matters only on nodes without an NVSwitch.
        """
        group = np.asarray(group, dtype=np.float64)
        per_node = np.minimum(np.asarray(per_node, dtype=np.float64), group)
        if kind == "all_reduce":
            phases = 2.0  # reduce-scatter, then all-gather
            passes = self.profile.collective_hbm_passes
        elif kind in ("all_gather", "reduce_scatter"):
            phases = 1.0
            passes = 0.5 * self.profile.collective_hbm_passes
        else:
            raise ValueError(f"unknown collective {kind!r}")
        c = self.cluster
        nbytes = np.asarray(nbytes, dtype=np.float64)
        intra = per_node >= group
        # Across nodes NCCL switches to trees/hierarchical rings: log-depth latency.
        steps = np.where(intra, phases * (group - 1), 2.0 * np.ceil(np.log2(np.maximum(group, 2))))
        hop_s = np.where(intra, c.intra_node_latency_s, c.inter_node_latency_s)
        # The flat ring moves phases (n-1)/n of the buffer over the slowest link tier. A group
        # spanning k nodes with g members in each can instead run hierarchically (NCCL's
        # tree: a chain inside each node, a tree across nodes): only phases (k-1)/k of the
        # buffer crosses each node's adapters, plus phases (g-1)/g over NVLink inside the
        # node. NCCL's tuner takes the faster; the two agree for k = 1 or g = 1.
        g = np.maximum(per_node, 1.0)
        k = np.ceil(group / g)
        nvlink = self._nvlink_bytes_per_s(g, stride)
        bus = self._bus(group, g, nvlink)
        ring_s = phases * (group - 1) / np.maximum(group, 1) * nbytes / bus
        tree_s = phases * nbytes * ((k - 1) / k / bus + (g - 1) / g / nvlink)
        t = (
            self.profile.collective_latency_s
            + steps * hop_s
            + np.minimum(ring_s, tree_s)
            # NCCL's copy and reduction kernels, at the datasheet HBM bandwidth (the fitted
            # passes absorb their efficiency, so the collective fit stays independent of the
            # memory efficiency fitted to iteration times)
            + passes * nbytes / c.gpu.hbm_bytes_per_s
        )
        t = self._override(kind, t, nbytes=nbytes, group=group, per_node=per_node)
        return np.where(group > 1, t, 0.0)

    def all_to_all_s(
        self,
        nbytes: ArrayLike,
        group: ArrayLike,
        per_node: ArrayLike,
        stride: ArrayLike = 1,
        inter_scale: ArrayLike = 1.0,
    ) -> np.ndarray:
        """An all-to-all in which every rank sends ``nbytes`` in all, 1/group to each rank
        (its own share stays), as MoE's token dispatch and combine; ``inter_scale`` scales
        the bytes that cross the network (a dispatch deduplicated by node sends less).

        All ranks send at once: the (per_node - 1)/group share to the ranks of its NVLink
        domain over NVLink, the (group - per_node)/group share to other domains over the
        GPU's own share of the node's adapters; the two tiers run concurrently, the slower
        sets the time. Plus NCCL's launch cost, one hop of latency and the HBM traffic of
        copying the buffer in and out (half an all-reduce's ``collective_hbm_passes``).
        """
        group = np.asarray(group, dtype=np.float64)
        per_node = np.minimum(np.asarray(per_node, dtype=np.float64), group)
        nbytes = np.asarray(nbytes, dtype=np.float64)
        c, p = self.cluster, self.profile
        nvlink = self._nvlink_bytes_per_s(np.maximum(per_node, 1.0), stride)
        nic = c.nic_bytes_per_s_per_gpu * p.network_efficiency
        intra_s = nbytes * (per_node - 1.0) / np.maximum(group, 1.0) / nvlink
        inter_s = inter_scale * nbytes * (group - per_node) / np.maximum(group, 1.0) / nic
        hop_s = np.where(per_node >= group, c.intra_node_latency_s, c.inter_node_latency_s)
        t = (
            p.collective_latency_s
            + hop_s
            + np.maximum(intra_s, inter_s)
            + 0.5 * p.collective_hbm_passes * nbytes / c.gpu.hbm_bytes_per_s
        )
        t = self._override("all_to_all", t, nbytes=nbytes, group=group, per_node=per_node)
        return np.where(group > 1, t, 0.0)

    def p2p_s(self, nbytes: ArrayLike, inter_node: ArrayLike, stride: ArrayLike = 0) -> np.ndarray:
        """Point-to-point send/recv between pipeline stages, every GPU of a node sending at once
        to the GPU ``stride`` further on (0: unknown, as behind a switch)."""
        c, p = self.cluster, self.profile
        share = 1.0 if c.nvlink_links is None else _per_distinct(c.pair_link_share, stride)
        bw = np.where(
            inter_node,
            c.nic_bytes_per_s_per_gpu * p.network_efficiency,
            c.intra_bytes_per_s * p.nvlink_efficiency * share,
        )
        lat = np.where(inter_node, c.inter_node_latency_s, c.intra_node_latency_s)
        t = p.collective_latency_s + lat + np.asarray(nbytes, dtype=np.float64) / bw
        return self._override("send_recv", t, nbytes=nbytes, inter_node=inter_node)


def _per_distinct(fn: Callable[..., float], *args: ArrayLike) -> np.ndarray:
    """``fn`` of integer arguments, evaluated once per distinct combination of them."""
    cols = np.broadcast_arrays(*(np.asarray(a, dtype=np.int64) for a in args))
    keys, inverse = np.unique(np.stack([c.ravel() for c in cols]), axis=1, return_inverse=True)
    values = np.array([fn(*(int(x) for x in key)) for key in keys.T])
    return values[inverse.ravel()].reshape(cols[0].shape)


def members_per_domain(group: np.ndarray, stride: np.ndarray, domain_gpus: int) -> np.ndarray:
    """How many ranks of a group (``group`` ranks, ``stride`` apart) share one NVLink domain
    (``ClusterSpec.domain_gpus``: a node, or a rack of nodes such as GB200 NVL72).

    Ranks are laid out tp innermost, then dp, then pp (Megatron's order), so a tp group
    has stride 1, a dp group stride tp, and pipeline neighbours stride tp*dp. A group that
    fits in a domain is placed inside one (a domain of 72 holds four tp groups of 16).
    """
    group = np.asarray(group)
    stride = np.asarray(stride)
    fit = np.maximum(domain_gpus // np.maximum(stride, 1), 1)
    return np.minimum(group, np.where(stride < domain_gpus, fit, 1))
