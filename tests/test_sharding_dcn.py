"""omni_jax/sharding.py multi-slice / multi-node meshes: config.mesh.dcn_* axes, hybrid device order."""

from dataclasses import dataclass

import numpy as np
import pytest

from omni_jax import sharding as shd


@dataclass(frozen=True)
class FakeDevice:
    """What create_hybrid_device_mesh reads from a device (a GPU node's devices, here without GPUs)."""
    id: int
    process_index: int
    platform: str = "gpu"
    device_kind: str = "fake-gpu"


def _gpu_cluster(nodes, per_node, shuffle=True):
    devs = [FakeDevice(p * per_node + i, p) for p in range(nodes) for i in range(per_node)]
    if shuffle:  # the order jax.devices() gives is not relied upon
        devs = [devs[i] for i in np.random.default_rng(0).permutation(len(devs))]
    return devs


def test_dcn_sizes_multiply_the_per_slice_sizes_and_minus_one_fills_a_slice():
    assert shd.mesh_shape_from_config({"data": 1, "fsdp": -1, "dcn_data": 2}, 8) == \
        {"data": 2, "fsdp": 4, "tensor": 1, "context": 1}
    assert shd.mesh_shape_from_config({"data": -1, "tensor": 2, "dcn_data": 2, "dcn_fsdp": 2}, 32) == \
        {"data": 8, "fsdp": 2, "tensor": 2, "context": 1}
    with pytest.raises(ValueError, match="make 3 slices/nodes, which does not divide the 8 devices"):
        shd.mesh_shape_from_config({"data": -1, "dcn_data": 3}, 8)
    with pytest.raises(ValueError, match="dcn_fsdp"):
        shd.mesh_shape_from_config({"data": -1, "dcn_fsdp": 0}, 8)
    with pytest.raises(ValueError, match=r"unknown axes \['dcn_pipe'\].*dcn_data"):
        shd.mesh_shape_from_config({"data": -1, "dcn_pipe": 2}, 8)


def test_gpu_nodes_are_the_dcn_granules_in_process_major_order():
    devs = _gpu_cluster(nodes=2, per_node=4)
    arr = shd.device_array({"data": 1, "fsdp": 2, "tensor": 2, "dcn_data": 2}, devs)
    assert arr.shape == (2, 2, 2, 1)
    proc = np.vectorize(lambda d: d.process_index)(arr)
    assert (proc[0] == 0).all() and (proc[1] == 1).all()  # data crosses nodes, fsdp x tensor stay in a node
    # without dcn_*: still process-major, so the inner axes (tensor) never leave a node
    arr = shd.device_array({"data": -1, "tensor": 4}, devs)
    assert [[d.process_index for d in row] for row in arr[:, 0, :, 0]] == [[0] * 4, [1] * 4]
    assert [d.id for d in arr.reshape(-1)] == list(range(8))


def test_dcn_product_must_equal_the_node_count():
    with pytest.raises(ValueError, match=r"need 4 processes \(nodes\), but the 8 devices belong to 2.*dcn_data=2"):
        shd.device_array({"data": -1, "dcn_data": 4}, _gpu_cluster(nodes=2, per_node=4))
