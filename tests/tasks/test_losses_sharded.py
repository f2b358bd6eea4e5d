"""The LM-head loss per shard (omni_jax/tasks/losses.py `sharded_lm_head_cross_entropy_sum`).

On the 8-device CPU mesh it equals the plain tiled loss on one device (loss sums, argmax
count, gradients of the hidden states and of the kernel) for meshes that split the kernel's
features (fsdp, fsdp x context), its vocabulary (tensor), or both, with sequence and
vocabulary tiling and z-loss; the compiled gradient reduces the kernel's gradient once
(a reduce-scatter / all-reduce outside the piece loop), never inside it.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from omni_jax import sharding as shd
from omni_jax.tasks.losses import LossChunking, lm_head_cross_entropy_sum, sharded_lm_head_cross_entropy_sum
from tests.tpu_topology import tpu_devices

B, T, D, V = 8, 32, 16, 128


def _inputs(seed=0):
    r = np.random.default_rng(seed)
    h = r.normal(size=(B, T, D)).astype(np.float32)
    kernel = r.normal(size=(D, V)).astype(np.float32)
    targets = r.integers(0, V, size=(B, T)).astype(np.int32)
    targets[0, :4] = V - 1  # the last row of the last vocabulary shard
    weights = (r.random((B, T)) > 0.3).astype(np.float32)
    return h, kernel, targets, weights


def _value_and_grad(fn, chunking):
    def loss(h, kernel, targets, weights):
        nll, correct, z = fn(h, kernel, targets, weights, chunking=chunking)
        return nll + z, (nll, correct, z)

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


@pytest.mark.parametrize("mesh_cfg,chunking", [
    ({"data": 1, "fsdp": 8, "tensor": 1, "context": 1}, LossChunking(8, 0, 0.0)),
    ({"data": 2, "fsdp": 2, "tensor": 1, "context": 2}, LossChunking(4, 32, 1e-2)),  # features over fsdp x context
    ({"data": 1, "fsdp": 2, "tensor": 2, "context": 2}, LossChunking(8, 16, 1e-2)),  # and vocabulary over tensor
    ({"data": 2, "fsdp": 1, "tensor": 4, "context": 1}, LossChunking(0, 0, 0.0)),  # vocabulary only
])
def test_sharded_loss_equals_the_plain_tiled_loss(mesh_cfg, chunking):
    h, kernel, targets, weights = _inputs()
    (_, ref), g_ref = jax.jit(_value_and_grad(lm_head_cross_entropy_sum, chunking))(h, kernel, targets, weights)

    mesh = shd.make_mesh(mesh_cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        tok = NamedSharding(mesh, P(("data", "fsdp"), "context"))
        hs = NamedSharding(mesh, P(("data", "fsdp"), "context", None))
        ks = NamedSharding(mesh, P(("fsdp", "context"), "tensor"))
        fn = jax.jit(_value_and_grad(sharded_lm_head_cross_entropy_sum, chunking),
                     in_shardings=(hs, ks, tok, tok), out_shardings=((None, None), (hs, ks)))
        hlo = fn.lower(h, kernel, targets, weights).compile().as_text()
        (_, got), g = fn(h, kernel, targets, weights)

    rel = [abs(float(a) - float(b)) / max(abs(float(b)), 1.0) for a, b in zip(got[::2], ref[::2])]
    grad = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))
            for a, b in zip(g, g_ref)]
    print(f"{mesh_cfg} {chunking}: nll/z rel diff {rel}, gradient (h, kernel) max abs diff / max {grad}")
    assert max(rel) <= 1e-6 and max(grad) <= 1e-6  # measured <= 3e-7 (fp32 summation order)
    assert float(got[1]) == float(ref[1])  # the argmax count, combined over vocabulary shards
    # the kernel's gradient is reduced once, outside the sequence-piece loop
    assert _kernel_collectives_in_loops(hlo, D, V // mesh_cfg["tensor"]) == []


def _kernel_collectives_in_loops(hlo: str, d: int, v: int) -> list[str]:
    """Collectives on a whole (d, v) or (v, d) f32 value inside a while loop's body."""
    blocks = dict(re.findall(r"^(?:ENTRY )?%?(\S+) .*?\{\n(.*?)\n\}", hlo, re.M | re.S))
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
    shapes = (f"f32[{d},{v}]", f"f32[{v},{d}]")
    return [line.strip()[:120] for name in bodies for line in blocks.get(name, "").splitlines()
            if re.search(r" (all-reduce|reduce-scatter|all-gather)(-start)?\(", line)
            and any(x in line.split("=", 1)[1].split("(")[0] for x in shapes)]


def test_left_to_the_partitioner_the_kernel_is_gathered_and_reduced_in_every_piece():
    """What the per-shard loss avoids, seen on the CPU compile of the plain tiled loss (and the
    check above can fail): an all-gather of the kernel and an all-reduce of its gradient per piece."""
    h, kernel, targets, weights = _inputs()
    mesh = shd.make_mesh({"data": 1, "fsdp": 8, "tensor": 1, "context": 1})
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        tok = NamedSharding(mesh, P(("data", "fsdp"), "context"))
        fn = jax.jit(_value_and_grad(lm_head_cross_entropy_sum, LossChunking(8, 0)),
                     in_shardings=(NamedSharding(mesh, P(("data", "fsdp"), "context", None)),
                                   NamedSharding(mesh, P(("fsdp", "context"), "tensor")), tok, tok))
        hlo = fn.lower(h, kernel, targets, weights).compile().as_text()
    found = _kernel_collectives_in_loops(hlo, D, V)
    assert any("all-reduce" in x for x in found), found


def test_without_a_mesh_it_is_the_plain_tiled_loss():
    h, kernel, targets, weights = _inputs(1)
    ch = LossChunking(8, 32, 1e-3)
    a = sharded_lm_head_cross_entropy_sum(h, kernel, targets, weights, chunking=ch)
    b = lm_head_cross_entropy_sum(h, kernel, targets, weights, chunking=ch)
    assert [float(x) for x in a] == [float(x) for x in b]


def test_chunks_that_do_not_divide_a_shard_name_the_key():
    h, kernel, targets, weights = _inputs()
    mesh = shd.make_mesh({"data": 1, "fsdp": 2, "tensor": 2, "context": 2})
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        with pytest.raises(ValueError, match=r"loss_token_chunk=8 does not divide the 12 positions each device "
                                             r"holds \(sequence 24 over the mesh's `context` axis\)"):
            jax.eval_shape(lambda *a: sharded_lm_head_cross_entropy_sum(*a, chunking=LossChunking(8, 0)),
                           h[:, :24], kernel, targets[:, :24], weights[:, :24])
        with pytest.raises(ValueError, match=r"loss_vocab_chunk=32 does not divide the 48 vocabulary rows each "
                                             r"device holds"):
            jax.eval_shape(lambda *a: sharded_lm_head_cross_entropy_sum(*a, chunking=LossChunking(0, 32)),
                           h, kernel[:, :96], targets % 96, weights)


@pytest.mark.parametrize("per_shard", [False, True])
def test_tpu_compile_of_the_7b_loss_reduces_the_kernel_gradient_once(per_shard):
    """v5p-64 (4x4x4), fsdp 8 x context 8, the 7B LM head (3584 x 152064 fp32 kernel, bf16
    compute), 8 rows x 32k tokens in 512-token pieces. Measured (libtpu 0.0.42.1, launch/hlo_cost.py
    loop-aware counts per chip): left to the partitioner, two whole-kernel bf16 all-reduces run in
    every piece (64 pieces) and the matmul flops are 1.07e14, 8x the tokens' work (each piece's
    tokens are gathered over the 64 chips); per shard, none in a piece and 1.34e13 flops = 3 matmuls
    x 2 x 4096 local tokens x 3584 x 152064."""
    from launch.hlo_cost import costs

    devices = tpu_devices("v5p:4x4x4")
    d, v, rows, seq = 3584, 152064, 8, 32768
    fn = sharded_lm_head_cross_entropy_sum if per_shard else lm_head_cross_entropy_sum
    args = (jax.ShapeDtypeStruct((rows, seq, d), jnp.bfloat16), jax.ShapeDtypeStruct((d, v), jnp.float32),
            jax.ShapeDtypeStruct((rows, seq), jnp.int32), jax.ShapeDtypeStruct((rows, seq), jnp.float32))
    mesh = jax.sharding.Mesh(np.asarray(devices).reshape(1, 8, 1, 8), shd.MESH_AXES)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        tok = NamedSharding(mesh, P(("data", "fsdp"), "context"))
        hs, ks = NamedSharding(mesh, P(("data", "fsdp"), "context", None)), NamedSharding(mesh, P(("fsdp", "context"), "tensor"))
        grad = jax.grad(lambda *a: fn(*a, dtype=jnp.bfloat16, chunking=LossChunking(512, 0))[0], argnums=(0, 1))
        hlo = jax.jit(grad, in_shardings=(hs, ks, tok, tok), out_shardings=(hs, ks)).lower(*args).compile().as_text()
    in_loops = _kernel_collectives_in_loops(hlo.replace("bf16[", "f32["), d, v)
    flops = costs(hlo)["flops"]
    local_work = 3 * 2 * (rows * seq // 64) * d * v
    print(f"per shard {per_shard}: {len(in_loops)} whole-kernel collectives in loops, matmul flops per chip "
          f"{flops:.3e} = {flops / local_work:.2f} x the local tokens' work")
    if per_shard:
        assert in_loops == [] and flops == pytest.approx(local_work, rel=0.01)
    else:  # the partitioner's choice the per-shard loss exists to avoid; if this fails, XLA fixed it
        assert in_loops and flops > 4 * local_work
