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
