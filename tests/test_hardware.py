"""Node topology: NVLink rings behind a switch and on DGX-1's hybrid cube-mesh."""

from dataclasses import replace

import numpy as np
import pytest

from vtrain_opt.profiles import load_profile
from vtrain_opt.sim.ops import OpModel
from vtrain_opt.spec.hardware import ClusterSpec, get_cluster, get_gpu
from vtrain_opt.spec.setup import Setup


def test_switched_nodes_give_every_group_all_links():
    a100 = get_cluster("a100-80gb")
    assert a100.nvlink_links is None
    assert all(a100.ring_link_share(n, s) == 1.0 for n in (2, 4, 8) for s in (1, 2))


def test_dgx1_rings_are_bounded_by_the_links_inside_the_group():
    v100 = get_cluster("v100-32gb")
    # consecutive GPUs (tp groups, nccl-tests' default devices): of 6 links per GPU
    shares = [v100.ring_link_share(n) * 6 for n in range(2, 9)]
    assert shares == pytest.approx([1, 2, 4, 1, 2, 4, 6])
    # data-parallel groups tp apart, all at once: GPUs 0, 2, 4, 6 (and 1, 3, 5, 7) get 2;
    # pairs 4 apart: 0-4 and 1-5 have two links, 2-6 and 3-7 one, and the worst binds
    assert v100.ring_link_share(4, 2) * 6 == pytest.approx(2)
    assert v100.ring_link_share(2, 4) * 6 == pytest.approx(1)
    # a group that does not tile the node starts at GPU 0, as nccl-tests' does
    assert v100.ring_link_share(3) * 6 == pytest.approx(2)


def test_collectives_use_the_ring_share_and_the_stride():
    v100 = get_cluster("v100-32gb")
    ops = OpModel(load_profile("v100-32gb"), v100, Setup(dtype="fp16", attention="unfused"))
    flat = OpModel(ops.profile, replace(v100, nvlink_links=None), ops.setup)
    size = np.array([2, 4, 8])
    bw = ops.bus_bytes_per_s(size, size)
    np.testing.assert_allclose(bw / flat.bus_bytes_per_s(size, size), [1 / 6, 4 / 6, 1.0])
    # a data-parallel group of 4 GPUs, 2 apart, gets 2 links where 4 neighbours get 4
    assert ops.bus_bytes_per_s(4, 4, 2) == pytest.approx(bw[1] / 2)
    big = 1 << 30
    assert ops.collective_s("all_reduce", big, 2, 2) > 4 * flat.collective_s(
        "all_reduce", big, 2, 2
    )


def test_bad_link_matrices_are_refused_with_the_rule():
    gpu = get_gpu("v100-32gb")
    for bad in ([[0, 1], [2, 0]], [[1, 0], [0, 0]], [[0, -1], [-1, 0]], [[0, 1.5], [1.5, 0]]):
        with pytest.raises(ValueError, match="symmetric matrix of whole link counts"):
            ClusterSpec(gpu=gpu, gpus_per_node=2, nvlink_links=bad)
    with pytest.raises(ValueError, match="2 rows for 8 GPUs per node"):
        ClusterSpec(gpu=gpu, gpus_per_node=8, nvlink_links=[[0, 1], [1, 0]])


def test_another_node_size_drops_the_link_matrix():
    v100 = get_cluster("v100-32gb")
    assert v100.with_overrides(gpus_per_node=4).nvlink_links is None
    assert v100.with_overrides(gpus_per_node=8).nvlink_links == v100.nvlink_links
    assert v100.to_dict()["nvlink_links"][0] == [0, 1, 1, 2, 2, 0, 0, 0]


def test_pipeline_sends_on_dgx1_get_the_fewest_direct_links():
    v100 = get_cluster("v100-32gb")
    # neighbours one GPU apart: GPUs 3 and 4 share no link (NCCL relays: one link's worth);
    # four apart: GPUs 2-6 and 3-7 share one
    assert v100.pair_link_share(1) * 6 == pytest.approx(1)
    assert v100.pair_link_share(4) * 6 == pytest.approx(1)
    assert get_cluster("a100-80gb").pair_link_share(4) == 1.0
    ops = OpModel(load_profile("v100-32gb"), v100, Setup(dtype="fp16", attention="unfused"))
    flat = OpModel(ops.profile, replace(v100, nvlink_links=None), ops.setup)
    big = float(1 << 30)
    ratio = ops.p2p_s(big, False, 2) / flat.p2p_s(big, False, 2)
    assert ratio == pytest.approx(6.0, rel=0.01)
    assert ops.p2p_s(big, True, 8) == flat.p2p_s(big, True, 8)  # across nodes: the adapters


def test_groups_spanning_nodes_take_the_faster_of_ring_and_hierarchy():
    # four 200 Gbit/s adapters per node (vTrain's cluster): the adapters bind, not NVLink
    a100 = get_cluster("a100-80gb").with_overrides(inter_node_gbps=800)
    ops = OpModel(load_profile("a100-80gb"), a100, Setup(dtype="fp16", attention="unfused"))
    p = ops.profile
    big = float(1 << 30)
    nic = a100.nic_bytes_per_s_per_gpu * p.network_efficiency
    nvlink = a100.intra_bytes_per_s * p.nvlink_efficiency

    def wire_s(group: int, per_node: int) -> float:
        fixed = ops.collective_s("all_reduce", 0.0, group, per_node)
        return float(ops.collective_s("all_reduce", big, group, per_node) - fixed)

    copy_s = p.collective_hbm_passes * big / a100.gpu.hbm_bytes_per_s
    # 16 GPUs on 2 nodes (tp 16): the flat ring moves 2 * 15/16 of the buffer over the
    # adapters, the hierarchy 2 * 1/2 over them plus 2 * 7/8 over NVLink, and is faster
    ring = 2 * 15 / 16 * big / (8 * nic)
    tree = 2 * big * (1 / 2 / (8 * nic) + 7 / 8 / nvlink)
    assert tree < ring
    assert wire_s(16, 8) == pytest.approx(tree + copy_s, rel=1e-12)
    # one GPU per node (a data-parallel group tp=8 apart): the ring is the hierarchy
    assert wire_s(64, 1) == pytest.approx(2 * 63 / 64 * big / nic + copy_s, rel=1e-12)
    # inside a node nothing changes: the ring over NVLink
    assert wire_s(8, 8) == pytest.approx(2 * 7 / 8 * big / nvlink + copy_s, rel=1e-12)
    # with eight adapters per node the ring's 200 GB/s beats the hierarchy's NVLink leg
    fast = OpModel(p, get_cluster("a100-80gb").with_overrides(inter_node_gbps=1600), ops.setup)
    fixed = fast.collective_s("all_reduce", 0.0, 16, 8)
    ring = 2 * 15 / 16 * big / (16 * nic)
    assert fast.collective_s("all_reduce", big, 16, 8) - fixed == pytest.approx(ring + copy_s)


# ---- NVLink domains and today's GPUs -------------------------------------------------------
def test_the_nvlink_domain_is_one_node_unless_the_cluster_says_otherwise():
    for name in ("a100-80gb", "h100-sxm", "h800", "b200", "v100-32gb"):
        c = get_cluster(name)
        assert c.domain_gpus == c.gpus_per_node == 8
        assert "nvlink_domain" not in c.to_dict()  # the identity of one-node spaces is kept
    nvl = get_cluster("gb200-nvl72")
    assert (nvl.gpus_per_node, nvl.domain_gpus, nvl.to_dict()["nvlink_domain"]) == (4, 72, 72)
    # another node size moves a one-node domain with it and keeps a rack
    assert get_cluster("h100-sxm").with_overrides(gpus_per_node=4).domain_gpus == 4
    assert nvl.with_overrides(gpus_per_node=8).domain_gpus == 72
    assert get_cluster("h100-sxm").with_overrides(nvlink_domain=256).domain_gpus == 256


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("h100-sxm", {"nvlink_domain": 0}, "nvlink_domain: must be a positive integer, got 0"),
        ("h100-sxm", {"nvlink_domain": 12}, "nvlink_domain: 12 is not a multiple of gpus_per_node"),
        ("h100-sxm", {"nvlink_domain": 4}, "nvlink_domain: 4 is not a multiple of gpus_per_node"),
        ("gb200-nvl72", {"gpus_per_node": 16}, "72 is not a multiple of gpus_per_node (16)"),
        ("v100-32gb", {"nvlink_domain": 16}, "a mesh spans one node: give 8"),
    ],
)
def test_bad_nvlink_domains_are_refused_with_the_rule(name, overrides, message):
    with pytest.raises(ValueError) as e:
        get_cluster(name).with_overrides(**overrides)
    assert message in str(e.value)


def test_tp16_crosses_the_network_on_h100_and_stays_on_nvlink_on_gb200_nvl72():
    from vtrain_opt.sim.ops import members_per_domain

    act = float(1 << 28)
    for name, inside in (("h100-sxm", False), ("gb200-nvl72", True)):
        cluster = get_cluster(name)
        ops = OpModel(load_profile(name), cluster, Setup())
        per_domain = members_per_domain(16, 1, cluster.domain_gpus)
        assert (per_domain >= 16) == inside
        nvlink = cluster.intra_bytes_per_s * ops.profile.nvlink_efficiency
        # NVLink bus bandwidth only when the whole group is in one domain
        assert (ops.bus_bytes_per_s(16, per_domain) == pytest.approx(nvlink)) == inside
        if inside:  # the flat ring over NVLink, as inside a DGX node
            fixed = ops.collective_s("all_reduce", 0.0, 16, per_domain)
            wire = ops.collective_s("all_reduce", act, 16, per_domain) - fixed
            copy = ops.profile.collective_hbm_passes * act / cluster.gpu.hbm_bytes_per_s
            assert wire == pytest.approx(2 * 15 / 16 * act / nvlink + copy, rel=1e-12)
    # the same rack cut into one-tray domains puts tp=16 across trays
    split = get_cluster("gb200-nvl72").with_overrides(nvlink_domain=4)
    assert members_per_domain(16, 1, split.domain_gpus) == 4
    # data-parallel groups tp=16 apart: four per 72-GPU domain
    assert members_per_domain(16, 16, 72) == 4 and members_per_domain(16, 8, 72) == 9


def test_iteration_time_follows_the_nvlink_domain():
    from vtrain_opt.sim.step import make_context, simulate_arrays
    from vtrain_opt.spec import ParallelPlan, PlanBatch, get_model

    model = get_model("gpt3-175b")
    plans = [
        ParallelPlan(tp=16, pp=8, dp=2, micro_batch=1, global_batch=64, recompute="full"),
        ParallelPlan(tp=8, pp=8, dp=4, micro_batch=1, global_batch=64, recompute="full"),
    ]
    batch = PlanBatch.from_plans(plans)

    def run(cluster):
        return simulate_arrays(make_context(model, cluster), batch)

    rack = run(get_cluster("gb200-nvl72"))
    trays = run(get_cluster("gb200-nvl72").with_overrides(nvlink_domain=4))
    # tp=16 all-reduces over NVLink in the rack, over the adapters between 4-GPU trays
    assert rack["tp_comm_s"][0] < 0.6 * trays["tp_comm_s"][0]
    assert rack["iteration_time_s"][0] < trays["iteration_time_s"][0]
    # an H100 cluster whose NVLink spans two nodes (a 16-GPU domain) speeds tp=16 up and
    # leaves tp=8 (one node) as it was
    h100 = run(get_cluster("h100-sxm"))
    wide = run(get_cluster("h100-sxm").with_overrides(nvlink_domain=16))
    assert wide["tp_comm_s"][0] < h100["tp_comm_s"][0]
    assert wide["tp_comm_s"][1] == h100["tp_comm_s"][1]


def test_h800_is_h100_silicon_with_less_nvlink():
    h100, h800 = get_gpu("h100-sxm"), get_gpu("h800")
    assert h800.peak_flop_per_s == h100.peak_flop_per_s
    assert (h800.hbm_bytes, h800.hbm_bytes_per_s, h800.num_sms) == (
        h100.hbm_bytes,
        h100.hbm_bytes_per_s,
        h100.num_sms,
    )
    assert h800.nvlink_bytes_per_s == 200e9  # 400 GB/s total, per direction
    c = get_cluster("h800")
    assert c.gpus_per_node == 8 and c.inter_node_bytes_per_s == 8 * 400e9 / 8
    assert "H800" in h800.source


def test_blackwell_peaks_per_dtype_and_no_fp4_compute_yet():
    from vtrain_opt.spec.setup import DTYPES

    b200, gb200 = get_gpu("b200"), get_gpu("gb200-nvl72")
    for gpu, bf16 in ((b200, 2250e12), (gb200, 2500e12)):
        peaks = gpu.peak_flop_per_s
        assert peaks["bf16"] == bf16
        assert peaks["fp8"] == 2 * bf16 and peaks["fp4"] == 4 * bf16  # dense, datasheet
    assert gb200.nvlink_bytes_per_s == 900e9 and "GB200 NVL72 datasheet" in gb200.source
    # fp8 is a training dtype (Transformer Engine, sim/fp8.py); the fp4 peak is data only
    assert "fp8" in DTYPES and "fp4" not in DTYPES
    with pytest.raises(ValueError, match=r"setup\.dtype: 'fp4' is not one of"):
        Setup(dtype="fp4")


def test_every_catalog_gpu_and_cluster_carries_its_source():
    from vtrain_opt.spec.hardware import _raw, gpu_names

    for name in gpu_names():
        assert get_gpu(name).source
        assert _raw()["clusters"][name]["source"]
    assert "DeepSeek-V3" in _raw()["clusters"]["h800"]["source"]


def test_derived_profiles_of_the_new_gpus():
    for name, base in (("h800", "h100-sxm"), ("gb200-nvl72", "b200")):
        p, b = load_profile(name), load_profile(base)
        assert (p.gpu, p.kind) == (name, "derived")
        assert p.provenance["derived_from"] == b.id
        assert p.params == b.params  # the efficiency model kept; peaks from the catalog
