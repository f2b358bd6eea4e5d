"""omni_jax/layers/attention_kernels.py: the TPU splash kernel (through the Pallas interpreter
here) equals the XLA reference forward and backward, also sharded; it compiles for a real TPU
topology (libtpu); platform and shape errors name the fix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from omni_jax import sharding as shd
from omni_jax.layers.attention import dot_product_attention

B, T, H, KVH, D = 2, 256, 4, 2, 64
SEG = np.array([[1] * 100 + [2] * 120 + [0] * 36, [1] * 256], np.int32)  # packed + padding


def _qkv(seed=0):
    r = np.random.RandomState(seed)
    f = lambda *s: jnp.asarray(r.randn(*s).astype(np.float32))
    return f(B, T, H, D), f(B, T, KVH, D), f(B, T, KVH, D), f(B, T, H, D)


def _loss(impl, q, k, v, w):
    o = dot_product_attention(q, k, v, q_segment_ids=SEG, kv_segment_ids=SEG, causal=True, impl=impl,
                              block_size=128)
    return (o * w).sum(), o


def _out_and_grads(fn):
    (_, o), g = jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True)(*_qkv())
    return (o, *g)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b))


def test_splash_kernel_matches_xla_forward_and_gradient():
    d = _max_diff(_out_and_grads(lambda *a: _loss("xla", *a)), _out_and_grads(lambda *a: _loss("splash_interpret", *a)))
    print(f"splash (interpreted) vs xla, output and q/k/v gradients: max abs diff {d:.3e}")
    assert d <= 1e-5


def test_splash_kernel_sharded_over_batch_and_heads_matches_xla():
    mesh = shd.make_mesh(dict(data=2, tensor=2), jax.devices()[:4])

    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        sharded = _out_and_grads(jax.jit(lambda *a: _loss("splash_interpret", *a)))
    d = _max_diff(_out_and_grads(lambda *a: _loss("xla", *a)), sharded)
    print(f"splash (interpreted, data 2 x tensor 2 shard_map) vs xla: max abs diff {d:.3e}")
    assert d <= 1e-5


def test_kernels_on_the_wrong_platform_and_bad_blocks_name_the_fix():
    q, k, v, _ = _qkv()
    with pytest.raises(ValueError, match="'splash' is a TPU kernel and the target platform is 'cpu'"):
        dot_product_attention(q, k, v, causal=True, impl="splash")
    with pytest.raises(ValueError, match="'cudnn' needs an NVIDIA GPU"):
        dot_product_attention(q, k, v, causal=True, impl="cudnn")
    with pytest.raises(ValueError, match=r"attention_block_size=96 does not divide the query length 256"):
        dot_product_attention(q, k, v, causal=True, impl="splash_interpret", block_size=96)
    mesh = shd.make_mesh(dict(data=2, context=2), jax.devices()[:4])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        with pytest.raises(ValueError, match="does not split the sequence.*use attention_impl='blockwise'"):
            jax.jit(lambda q, k, v: dot_product_attention(q, k, v, causal=True, impl="splash_interpret",
                                                          block_size=128)).lower(q, k, v)


def test_splash_compiles_for_a_tpu_topology():
    """The real TPU compiler (libtpu, the `tpu` extra) builds the sharded splash forward+backward."""
    from tests.tpu_topology import tpu_devices

    devices = tpu_devices("v5e:2x2")
    mesh = shd.make_mesh(dict(data=2, tensor=2), devices)
    bf = jnp.bfloat16
    # the suite's "highest" matmul precision asks Mosaic for fp32 contractions of bf16 operands,
    # which it rejects; training runs use the default precision
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES), jax.default_matmul_precision("default"):
        spec = lambda shape, axes: jax.ShapeDtypeStruct(shape, bf, sharding=jax.NamedSharding(
            mesh, nn.logical_to_mesh_axes(axes)))
        q = spec((4, 1024, 8, 128), ("activation_batch", None, "activation_heads", None))
        kv = spec((4, 1024, 4, 128), ("activation_batch", None, "activation_kv_heads", None))
        seg = jax.ShapeDtypeStruct((4, 1024), jnp.int32, sharding=jax.NamedSharding(
            mesh, nn.logical_to_mesh_axes(("activation_batch", None))))

        def loss(q, k, v, s):
            o = dot_product_attention(q, k, v, q_segment_ids=s, kv_segment_ids=s, causal=True, impl="splash",
                                      block_size=512)
            return o.astype(jnp.float32).sum()

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, seg).compile()
    text = compiled.as_text()
    assert "tpu_custom_call" in text or "mosaic" in text.lower()
