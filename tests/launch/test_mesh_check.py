"""launch/mesh_check.py on a subset of the 20 factorisations of 8 CPU devices in which every
mesh axis is > 1 at least once (per model), including the omni step's data 4 x tensor 2 that
used to stop on XLA CPU's collective rendezvous timeout; the whole table is in the README."""

import pytest

from launch import mesh_check

AXES = ("data", "fsdp", "tensor", "context")
SUBSET = {"backbone": [(2, 2, 2, 1), (1, 2, 1, 4)], "omni": [(4, 1, 2, 1), (1, 2, 1, 4)]}


def test_factorisations():
    assert len(mesh_check.factorisations(8)) == 20
    assert (1, 1, 1, 8) in mesh_check.factorisations(8) and (2, 2, 2, 1) in mesh_check.factorisations(8)


@pytest.mark.parametrize("kind", sorted(SUBSET))
def test_meshes_match_one_device(kind):
    meshes = SUBSET[kind]
    assert all(any(m[a] > 1 for m in meshes) for a in range(4))  # every axis used
    check = mesh_check.Check(kind)
    for m in meshes:
        r = check.compare(dict(zip(AXES, m)))
        print(f"{kind} {m}: |dloss| {r['loss_diff']:.2e}, max|dgrad| {r['grad_diff']:.2e}")
        assert r["loss_diff"] <= 1e-5 and r["grad_diff"] <= 1e-5, r
