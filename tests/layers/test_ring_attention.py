"""omni_jax/layers/ring_attention.py: ring attention over context 2 and 4 equals the
single-device reference, forward and gradients, for packed segments with causal masks; and
the whole tiny backbone step with context parallelism equals the single-device step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from omni_jax import sharding as shd
from omni_jax.layers.attention import dot_product_attention

B, T, H, KVH, D = 2, 32, 4, 2, 8
SEG = np.array([[1] * 5 + [2] * 14 + [3] * 9 + [0] * 4, [1] * 32], np.int32)


def _inputs():
    r = np.random.RandomState(0)
    f = lambda *s: jnp.asarray(r.randn(*s).astype(np.float32))
    return f(B, T, H, D), f(B, T, KVH, D), f(B, T, KVH, D), f(B, T, H, D)


def _out_and_grads(impl, causal, block=512):
    q, k, v, w = _inputs()

    def loss(q, k, v):
        o = dot_product_attention(q, k, v, q_segment_ids=SEG, kv_segment_ids=SEG, causal=causal, impl=impl,
                                  block_size=block)
        return (o * w).sum(), o

    (_, o), g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return (o, *g)


@pytest.mark.parametrize("mesh_cfg,causal,block", [(dict(context=2), True, 512), (dict(context=4), True, 512),
                                                   (dict(context=4), False, 512),
                                                   (dict(data=2, context=2, tensor=2), True, 512),
                                                   (dict(context=2), True, 4), (dict(context=4), False, 3)])
def test_ring_attention_matches_the_single_device_reference(mesh_cfg, causal, block):
    """block < the local length (16 or 8): every ring step folds several (block x block) tiles, and a
    block that does not divide it (3) pads the last tile."""
    ref = _out_and_grads("xla", causal)
    n = int(np.prod(list(mesh_cfg.values())))
    mesh = shd.make_mesh(mesh_cfg, jax.devices()[:n])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        ring = _out_and_grads("ring", causal, block)
    d = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(ring, ref))
    print(f"ring attention {mesh_cfg} causal={causal} block={block} vs single device: output+grads max abs diff {d:.3e}")
    assert d <= 1e-5


@pytest.mark.parametrize("mesh_cfg,causal,block", [(dict(context=2), True, 512), (dict(context=4), True, 4),
                                                   (dict(data=2, context=2, tensor=2), False, 3)])
def test_blockwise_attention_over_context_gathers_once_and_matches_the_reference(mesh_cfg, causal, block):
    """impl "blockwise" under a context axis: keys/values all-gathered once per call inside
    shard_map (ring_attention.gathered_attention), the gradients reduce-scattered back; no
    all-gather sits inside a loop of the compiled gradient."""
    import re

    ref = _out_and_grads("xla", causal)
    n = int(np.prod(list(mesh_cfg.values())))
    mesh = shd.make_mesh(mesh_cfg, jax.devices()[:n])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        got = _out_and_grads("blockwise", causal, block)
        q, k, v, w = _inputs()
        hlo = jax.jit(jax.grad(lambda q, k, v: (dot_product_attention(
            q, k, v, q_segment_ids=SEG, kv_segment_ids=SEG, causal=causal, impl="blockwise",
            block_size=block) * w).sum(), argnums=(0, 1, 2))).lower(q, k, v).compile().as_text()
    d = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(got, ref))
    print(f"gathered blockwise {mesh_cfg} causal={causal} block={block} vs single device: max abs diff {d:.3e}")
    assert d <= 1e-5
    blocks = dict(re.findall(r"^(?:ENTRY )?%?(\S+) .*?\{\n(.*?)\n\}", hlo, re.M | re.S))
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
    assert not [n for n in bodies if " all-gather(" in blocks.get(n, "")]
    assert " all-gather(" in hlo


def test_ring_attention_sequence_that_does_not_divide_names_the_key():
    q, k, v, _ = _inputs()
    mesh = shd.make_mesh(dict(context=4), jax.devices()[:4])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        with pytest.raises(ValueError, match=r"sequence length 30 does not divide over context=4.*config.data.seq_len"):
            jax.jit(lambda q, k, v: dot_product_attention(q, k, v, causal=True, impl="ring")).lower(
                q[:, :30], k[:, :30], v[:, :30])
