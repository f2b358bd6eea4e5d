"""launch/aot.py on a 2-slice TPU topology (libtpu, no TPU needed): data over DCN, fsdp within a slice.

Runs in a subprocess (libtpu is initialised there, with ALLOW_MULTIPLE_LIBTPU_LOAD so it does not
contend for the lock of other libtpu users on this machine). The mesh check is quick; the full
ahead-of-time compile of the tiny backbone on the same topology is the command in the README
(`python -m launch.aot ... --topology=v5e:2x2 --num_slices=2`), ~35 s here, not run in CI.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from launch.aot import collectives

SCRIPT = r"""
import json, numpy as np
from launch.aot import topology_devices
from omni_jax import sharding as shd
devices, kind = topology_devices("v5e:2x2", num_slices=2)
out = {"n": len(devices), "slices": sorted({d.slice_index for d in devices})}
for name, cfg in {"dcn_data": {"data": 1, "fsdp": -1, "dcn_data": 2},
                  "dcn_fsdp": {"data": -1, "fsdp": 2, "dcn_fsdp": 2}}.items():
    mesh = shd.make_mesh(cfg, devices)
    sl = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    out[name] = {"mesh": dict(mesh.shape),
                 "crossing": [a for i, a in enumerate(shd.MESH_AXES) if (np.diff(sl, axis=i) != 0).any()],
                 "slices_by_data_row": [sorted(set(sl[i].reshape(-1).tolist())) for i in range(sl.shape[0])]}
try:
    shd.make_mesh({"data": -1, "dcn_data": 4}, devices)
except ValueError as e:
    out["error"] = str(e)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs the tpu extra (libtpu)")
def test_two_slice_mesh_puts_data_over_dcn_and_fsdp_within_a_slice():
    env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1", JAX_PLATFORMS="cpu")
    try:
        p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("describing the 2-slice v5e:2x2 topology took over 240 s")
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, f"no result (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    r = json.loads(line[len("RESULT "):])
    print(r)
    assert r["n"] == 8 and r["slices"] == [0, 1]
    d = r["dcn_data"]
    assert d["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1, "context": 1}
    assert d["crossing"] == ["data"]  # only data goes over DCN ...
    assert d["slices_by_data_row"] == [[0], [1]]  # ... each fsdp group is one slice
    f = r["dcn_fsdp"]
    assert f["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1, "context": 1} and f["crossing"] == ["fsdp"]
    assert "need 4 TPU slices, but the 8 devices belong to 2" in r["error"] and "dcn_data=2" in r["error"]


def test_collectives_are_counted_within_a_slice_and_over_dcn():
    hlo = """
  %all-gather.1 = f32[8]{0} all-gather(f32[2]{0} %p), channel_id=1, replica_groups={{0,1,2,3}}, dimensions={0}
  %ag-start = (f32[2], f32[8]) all-gather-start(f32[2]{0} %q), replica_groups=[1,4]<=[4]
  %all-reduce.2 = f32[8]{0} all-reduce(f32[8]{0} %g), replica_groups={{0,1,2,3}}, to_apply=%add
  %after-all = token[] after-all(), frontend_attributes={MegascaleRendezvousKeyName="all-reduce.13_0"}
  %after-all.1 = token[] after-all(), frontend_attributes={MegascaleRendezvousKeyName="all-reduce.54_0"}
"""
    assert collectives(hlo) == {"in_slice": {"all-gather": 2, "all-reduce": 1}, "over_dcn": {"all-reduce": 2}}
