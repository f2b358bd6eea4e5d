"""launch/aot.py: the planner compiles a sharded step ahead of time and reports memory/flops.

Here it targets the 8 simulated CPU devices; with the `tpu` extra the same code compiles
for TPU topologies (e.g. v5p:4x4x4, recorded in the README)."""

import pytest

from configs import backbone_tiny
from launch.aot import plan


def test_plan_on_a_cpu_mesh_reports_memory_and_flops():
    c = backbone_tiny.get_config("runlocal")
    c.mesh.update(data=2, fsdp=2, tensor=2)
    r = plan(c, "cpu")
    assert r["devices"] == 8 and r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2, "context": 1}
    m = r["per_device_bytes"]
    assert m["arguments"] > 0 and m["total"] >= m["arguments"] - m["aliased"]
    assert m["aliased"] > 0  # the state is donated: inputs alias outputs
    assert r["compiler_flops_per_device"] > 0 and r["analytic_flops_per_step"] > 0


def test_unknown_topology_is_a_clear_error():
    c = backbone_tiny.get_config("runlocal")
    with pytest.raises(SystemExit, match="cannot describe TPU topology 'v9z:1x1'"):
        plan(c, "v9z:1x1")
