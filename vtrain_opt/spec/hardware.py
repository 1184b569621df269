"""GPUSpec (one device's datasheet) and ClusterSpec (nodes, links and price)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from vtrain_opt.resources import data_dir
from vtrain_opt.spec._check import non_negative_number, positive_int, positive_number

# Bytes per element of each dtype a GPU's datasheet gives a peak for. The simulator's compute
# dtypes are spec.setup.DTYPES (fp8: Transformer Engine's GEMMs); fp4 peaks are catalog data.
DTYPE_BYTES = {"fp4": 0.5, "fp8": 1, "fp16": 2, "bf16": 2, "tf32": 4, "fp32": 4}


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet figures of one GPU (dense FLOP/s per dtype, HBM size and bandwidth)."""

    name: str
    peak_flop_per_s: dict[str, float]
    hbm_bytes: float
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float  # per GPU, per direction
    num_sms: int
    flash_attention: bool = True  # FlashAttention kernels exist (Ampere and newer)
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        owner = f"gpu {self.name!r}"
        if not self.peak_flop_per_s:
            raise ValueError(f"{owner}.peak_flop_per_s: needs at least one dtype")
        for dtype, v in self.peak_flop_per_s.items():
            if dtype not in DTYPE_BYTES:
                raise ValueError(
                    f"{owner}.peak_flop_per_s: unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}"
                )
            positive_number(owner, f"peak_flop_per_s[{dtype}]", v)
        positive_number(owner, "hbm_bytes", self.hbm_bytes)
        positive_number(owner, "hbm_bytes_per_s", self.hbm_bytes_per_s)
        positive_number(owner, "nvlink_bytes_per_s", self.nvlink_bytes_per_s)
        positive_int(owner, "num_sms", self.num_sms)

    @classmethod
    def from_dict(cls, data: Any, name: str, owner: str | None = None) -> GPUSpec:
        """A GPU from a mapping with the catalog's keys, e.g. a measured profile's ``device``
        block; other keys (descriptions, sources) are ignored. A bad key raises ValueError."""
        where = owner or f"gpu {name!r}"
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object with the GPU catalog's keys")
        for key in (
            "peak_flop_per_s",
            "hbm_bytes",
            "hbm_bytes_per_s",
            "nvlink_bytes_per_s",
            "num_sms",
        ):
            if key not in data:
                raise ValueError(f"{where}: missing key {key!r}")
        peaks = data["peak_flop_per_s"]
        if not isinstance(peaks, dict):
            raise ValueError(f"{where}: key 'peak_flop_per_s' must be an object of dtype -> FLOP/s")
        try:
            return cls(
                name=name,
                peak_flop_per_s={
                    str(k): _number(v, f"peak_flop_per_s.{k}") for k, v in peaks.items()
                },
                hbm_bytes=_number(data["hbm_bytes"], "hbm_bytes"),
                hbm_bytes_per_s=_number(data["hbm_bytes_per_s"], "hbm_bytes_per_s"),
                nvlink_bytes_per_s=_number(data["nvlink_bytes_per_s"], "nvlink_bytes_per_s"),
                num_sms=int(_number(data["num_sms"], "num_sms")),
                flash_attention=bool(data.get("flash_attention", True)),
                source=str(data.get("source", "")),
            )
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def peak(self, dtype: str) -> float:
        if dtype not in self.peak_flop_per_s:
            raise ValueError(
                f"gpu {self.name!r} has no {dtype} peak; it supports {', '.join(self.peak_flop_per_s)}"
            )
        return self.peak_flop_per_s[dtype]


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster of identical nodes: the GPU, node size, network tiers and price.

    ``nvlink_domain``: GPUs that reach each other over NVLink, whole nodes (8 on a DGX/HGX
    node, 72 on a GB200 NVL72 rack of 4-GPU trays; None: one node). The collective model
    treats a domain as its "node": a group that fits in one runs at NVLink bandwidth, one
    that spans several crosses the network adapters (``nic_bytes_per_s_per_gpu`` each).
    GPU counts, prices and node stragglers stay per node (``gpus_per_node``).
    """

    gpu: GPUSpec
    gpus_per_node: int = 8
    intra_node_bytes_per_s: float | None = None  # per GPU per direction; None: the GPU's NVLink
    intra_node_latency_s: float = 8e-6
    inter_node_bytes_per_s: float = 200e9  # per node, per direction (all adapters together)
    inter_node_latency_s: float = 10e-6
    price_per_gpu_hour_usd: float = 2.0
    name: str = ""
    # NVLinks between each pair of a node's GPUs, for nodes without an NVSwitch (DGX-1's
    # hybrid cube-mesh); None: every GPU reaches every other over all its links (a switch)
    nvlink_links: tuple[tuple[int, ...], ...] | None = None
    nvlink_domain: int | None = None  # GPUs per NVLink domain, whole nodes; None: one node

    def __post_init__(self) -> None:
        owner = f"cluster {self.name or self.gpu.name!r}"
        if not self.name:
            object.__setattr__(self, "name", self.gpu.name)
        if self.nvlink_domain is None:
            object.__setattr__(self, "nvlink_domain", self.gpus_per_node)
        if self.intra_node_bytes_per_s is None:
            object.__setattr__(self, "intra_node_bytes_per_s", self.gpu.nvlink_bytes_per_s)
        if self.nvlink_links is not None:
            object.__setattr__(self, "nvlink_links", _link_matrix(owner, self.nvlink_links))
            if len(self.nvlink_links) != self.gpus_per_node:
                raise ValueError(
                    f"{owner}.nvlink_links: {len(self.nvlink_links)} rows for "
                    f"{self.gpus_per_node} GPUs per node; give one row and column per GPU"
                )
        positive_int(owner, "gpus_per_node", self.gpus_per_node)
        positive_int(owner, "nvlink_domain", self.nvlink_domain)
        if self.domain_gpus % self.gpus_per_node:
            raise ValueError(
                f"{owner}.nvlink_domain: {self.domain_gpus} is not a multiple of gpus_per_node "
                f"({self.gpus_per_node}); an NVLink domain is one or more whole nodes"
            )
        if self.nvlink_links is not None and self.domain_gpus != self.gpus_per_node:
            raise ValueError(
                f"{owner}.nvlink_domain: {self.domain_gpus} with a point-to-point NVLink mesh "
                f"(nvlink_links); a mesh spans one node: give {self.gpus_per_node}"
            )
        positive_number(owner, "intra_node_bytes_per_s", self.intra_node_bytes_per_s)
        positive_number(owner, "inter_node_bytes_per_s", self.inter_node_bytes_per_s)
        non_negative_number(owner, "intra_node_latency_s", self.intra_node_latency_s)
        non_negative_number(owner, "inter_node_latency_s", self.inter_node_latency_s)
        non_negative_number(owner, "price_per_gpu_hour_usd", self.price_per_gpu_hour_usd)

    @property
    def domain_gpus(self) -> int:
        """GPUs per NVLink domain (``nvlink_domain``, resolved)."""
        assert self.nvlink_domain is not None
        return self.nvlink_domain

    @property
    def intra_bytes_per_s(self) -> float:
        assert self.intra_node_bytes_per_s is not None
        return self.intra_node_bytes_per_s

    def ring_link_share(self, members: int, stride: int = 1) -> float:
        """Share of a GPU's NVLink bandwidth that NCCL's rings get in a group of ``members``
        GPUs of one node, ``stride`` apart (Megatron's layout: tp groups stride 1,
        data-parallel groups stride tp). When the groups tile the node, all of them run at
        once and the worst one binds; otherwise the group starts at GPU 0 (nccl-tests).

        Behind a switch every link serves the group: 1. On a point-to-point mesh (DGX-1's
        hybrid cube-mesh) each of NCCL's rings enters a member over one direct link and
        leaves it over a link to another member; a link carries one ring each way. A member
        with d links to the group, m of them to its best-connected peer, passes at most
        min(d, 2 (d - m)) rings; two GPUs, the links between them. Where no direct ring
        exists NCCL relays through a peer: one link's worth. On DGX-1V this gives 1, 2, 4, 1,
        2, 4 and 6 of the 6 links for GPUs 0 to 1 ... 0 to 7; nccl-tests measure 1.0, 2.0,
        3.8, 1.6, 2.0, 3.9 and 6.0.
        """
        links = self.nvlink_links
        if links is None or members <= 1:
            return 1.0
        n, span = len(links), members * stride
        if span > n:
            return 1.0  # the group does not fit in the node's matrix: keep the switch figure
        starts = [b + o for b in range(0, n, span) for o in range(stride)] if n % span == 0 else [0]
        groups = [[s + k * stride for k in range(members)] for s in starts]
        worst = min(self._rings(links, ids) for ids in groups)
        return worst / max(sum(row) for row in links)

    @staticmethod
    def _rings(links: tuple[tuple[int, ...], ...], ids: list[int]) -> int:
        """NCCL rings through the GPUs ``ids`` over direct links (at least one, relayed)."""
        if len(ids) == 2:
            rings = links[ids[0]][ids[1]]
        else:
            rings = min(
                min(d, 2 * (d - m))
                for d, m in (
                    (sum(links[i][j] for j in ids), max(links[i][j] for j in ids)) for i in ids
                )
            )
        return max(rings, 1)

    def pair_link_share(self, stride: int) -> float:
        """Share of a GPU's NVLink bandwidth for sends to the GPU ``stride`` further on, when
        every GPU of the node sends at once (pipeline neighbours, tp*dp apart): 1 behind a
        switch; on a mesh, the pair with the fewest direct links binds (one link's worth
        where NCCL relays through a peer)."""
        links = self.nvlink_links
        if links is None or stride < 1 or stride >= len(links):
            return 1.0
        per_gpu = max(sum(row) for row in links)
        fewest = min(links[g][g + stride] for g in range(len(links) - stride))
        return max(fewest, 1) / per_gpu

    @property
    def nic_bytes_per_s_per_gpu(self) -> float:
        """Inter-node bandwidth available to one GPU when every GPU of a node sends at once."""
        return self.inter_node_bytes_per_s / self.gpus_per_node

    def with_overrides(
        self,
        *,
        gpus_per_node: int | None = None,
        inter_node_gbps: float | None = None,
        price_per_gpu_hour_usd: float | None = None,
        intra_node_bytes_per_s: float | None = None,
        nvlink_domain: int | None = None,
    ) -> ClusterSpec:
        """A copy with user overrides (the CLI's --gpus-per-node, --nvlink-domain,
        --inter-node-gbps, --price...). Another node size keeps a multi-node NVLink domain
        (a GB200 NVL72 rack) and moves a one-node domain with it."""
        changes: dict[str, Any] = {}
        if gpus_per_node is not None:
            changes["gpus_per_node"] = gpus_per_node
            if self.nvlink_links is not None and gpus_per_node != len(self.nvlink_links):
                changes["nvlink_links"] = None  # another node: its links are not known
            if self.domain_gpus == self.gpus_per_node:
                changes["nvlink_domain"] = None  # one node, whatever its size
        if nvlink_domain is not None:
            positive_int("cluster", "nvlink_domain", nvlink_domain)
            changes["nvlink_domain"] = nvlink_domain
        if inter_node_gbps is not None:
            positive_number("cluster", "inter_node_gbps", inter_node_gbps)
            changes["inter_node_bytes_per_s"] = inter_node_gbps * 1e9 / 8
        if price_per_gpu_hour_usd is not None:
            changes["price_per_gpu_hour_usd"] = price_per_gpu_hour_usd
        if intra_node_bytes_per_s is not None:
            changes["intra_node_bytes_per_s"] = intra_node_bytes_per_s
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gpu": self.gpu.name,
            "gpus_per_node": self.gpus_per_node,
            "intra_node_bytes_per_s": self.intra_bytes_per_s,
            "intra_node_latency_s": self.intra_node_latency_s,
            "inter_node_bytes_per_s": self.inter_node_bytes_per_s,
            "inter_node_latency_s": self.inter_node_latency_s,
            "price_per_gpu_hour_usd": self.price_per_gpu_hour_usd,
            "nvlink_links": [list(r) for r in self.nvlink_links] if self.nvlink_links else None,
            # only where it is not one node, so the spaces of one-node clusters keep their
            # identity (study names)
            **(
                {"nvlink_domain": self.domain_gpus}
                if self.domain_gpus != self.gpus_per_node
                else {}
            ),
        }


def _link_matrix(owner: str, value: Any) -> tuple[tuple[int, ...], ...]:
    """A symmetric matrix of non-negative whole link counts with a zero diagonal."""
    try:
        rows = tuple(tuple(int(x) for x in row) for row in value)
        ok = all(
            len(row) == len(rows) and all(float(x) == y for x, y in zip(raw, row, strict=True))
            for raw, row in zip(value, rows, strict=True)
        )
    except (TypeError, ValueError):
        ok = False
    if ok:
        n = len(rows)
        ok = n > 0 and all(
            rows[i][j] >= 0 and rows[i][j] == rows[j][i] and (i != j or rows[i][j] == 0)
            for i in range(n)
            for j in range(n)
        )
    if not ok:
        raise ValueError(
            f"{owner}.nvlink_links: must be a square, symmetric matrix of whole link counts "
            "(0 or more) with zeros on the diagonal"
        )
    return rows


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"key {key!r} must be a number, got {value!r}")
    return float(value)


_RAW: dict[str, Any] | None = None


def _raw() -> dict[str, Any]:
    global _RAW
    if _RAW is None:
        _RAW = yaml.safe_load((data_dir("search_spaces") / "gpus.yaml").read_text())
    return _RAW


def gpu_names() -> list[str]:
    return sorted(_raw()["gpus"])


def get_gpu(name: str) -> GPUSpec:
    """A GPU of the catalog (``search_spaces/gpus.yaml``) by its CLI name."""
    key = name.strip().lower()
    gpus = _raw()["gpus"]
    if key not in gpus:
        raise ValueError(f"unknown GPU {name!r}; known GPUs: {', '.join(sorted(gpus))}")
    d = dict(gpus[key])
    return GPUSpec(
        name=key,
        peak_flop_per_s={k: float(v) for k, v in d["peak_flop_per_s"].items()},
        hbm_bytes=float(d["hbm_bytes"]),
        hbm_bytes_per_s=float(d["hbm_bytes_per_s"]),
        nvlink_bytes_per_s=float(d["nvlink_bytes_per_s"]),
        num_sms=int(d["num_sms"]),
        flash_attention=bool(d.get("flash_attention", True)),
        source=str(d.get("source", "")),
    )


def get_cluster(gpu_name: str) -> ClusterSpec:
    """The default cluster of a GPU: the vendor's reference node (and NVLink domain) and a
    list price."""
    gpu = get_gpu(gpu_name)
    c = _raw()["clusters"][gpu.name]
    return ClusterSpec(
        gpu=gpu,
        gpus_per_node=int(c["gpus_per_node"]),
        intra_node_latency_s=float(c["intra_node_latency_s"]),
        inter_node_bytes_per_s=float(c["inter_node_gbps"]) * 1e9 / 8,
        inter_node_latency_s=float(c["inter_node_latency_s"]),
        price_per_gpu_hour_usd=float(c["price_per_gpu_hour_usd"]),
        name=gpu.name,
        nvlink_links=c.get("nvlink_links"),
        nvlink_domain=None if c.get("nvlink_domain") is None else int(c["nvlink_domain"]),
    )


def cluster_for_profile(profile: Any) -> ClusterSpec:
    """The default cluster of a profile's GPU: the catalog's, or, for a device outside the
    catalog (a measured profile of a CPU or another GPU), one built from the profile's
    ``device`` block with the ClusterSpec defaults for what it does not say."""
    name = str(profile.gpu)
    if name.strip().lower() in _raw()["gpus"]:
        return get_cluster(name)
    device = getattr(profile, "device", None)
    if not device:
        raise ValueError(
            f"profile {profile.name!r}: GPU {name!r} is not in the catalog and the profile has "
            f"no 'device' block; known GPUs: {', '.join(gpu_names())}"
        )
    gpu = GPUSpec.from_dict(device, name=name, owner=f"profile {profile.name!r}: key 'device'")
    per_node = device.get("devices_per_node", 1)
    if isinstance(per_node, bool) or not isinstance(per_node, int) or per_node < 1:
        raise ValueError(
            f"profile {profile.name!r}: key 'device.devices_per_node' must be a positive integer"
        )
    return ClusterSpec(gpu=gpu, gpus_per_node=per_node, name=name)
