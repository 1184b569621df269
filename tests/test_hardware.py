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
