"""Platform attention kernels behind `dot_product_attention` (omni_jax/layers/attention.py).

  "splash"  TPU Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention):
            causal and segment-id masks, grouped-query heads, never materialises the scores and
            skips fully masked blocks. Under a mesh it runs per shard (`jax.shard_map`: rows over
            the batch axes, heads over `tensor`, as the logical-axis table places the
            activations); the sequence must not be split (`context` = 1).
            "splash_interpret" runs the same kernel through the Pallas interpreter on any
            backend: slow, for checking the kernel's numerics on CPU (the tests do).
  "cudnn"   NVIDIA cuDNN flash attention through `jax.nn.dot_product_attention(...,
            implementation="cudnn")`, segment ids as a boolean mask plus `is_causal`.

Each raises a ValueError naming the fix when the platform lacks the kernel or the shapes do
not fit its blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SPLASH_QKV_AXES = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
SPLASH_KV_AXES = ("activation_batch", "activation_kv_length", "activation_kv_heads", "activation_head_dim")


def target_platform() -> str:
    """The platform being compiled for: the mesh in context (AOT for TPU topologies traces on a
    CPU host), else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return getattr(device, "platform", None) or jax.default_backend()


def check_platform(impl: str) -> None:
    platform = target_platform()
    if impl == "splash" and platform != "tpu":
        raise ValueError(f"attention impl 'splash' is a TPU kernel and the target platform is {platform!r}: "
                         "use attention_impl='blockwise' (or 'xla') here, 'splash_interpret' to check its numerics")
    if impl == "cudnn" and platform not in ("gpu", "cuda"):
        raise ValueError(f"attention impl 'cudnn' needs an NVIDIA GPU and the target platform is {platform!r}: "
                         "use attention_impl='blockwise' (or 'xla'; 'splash' on TPU)")


def _splash_local(q, k, v, qs, ks, *, causal: bool, block: int, interpret: bool):
    """Per-device splash attention; q (b, t, h, d) already scaled, k/v (b, s, kv_heads, d)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    t, h, s = q.shape[1], q.shape[2], k.shape[1]
    head_mask = sm.CausalMask((t, s)) if causal else sm.FullMask((t, s))
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = sk.make_splash_mha(sm.MultiHeadMask([head_mask] * h), block_sizes=sizes, head_shards=1,
                                q_seq_shards=1, interpret=interpret)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)
    out = jax.vmap(kernel, in_axes=(0, 0, 0, sk.SegmentIds(0, 0)))(
        heads_first(q), heads_first(k), heads_first(v), sk.SegmentIds(qs, ks))
    return heads_first(out)


def splash_attention(q, k, v, q_segment_ids, kv_segment_ids, *, causal: bool, scale: float, block: int,
                     interpret: bool = False):
    """q (b, t, h, d), k/v (b, s, kv_heads, d), segment ids (b, t) / (b, s) -> (b, t, h, d)."""
    from flax import linen as nn

    t, s = q.shape[1], k.shape[1]
    for what, n in (("query", t), ("key", s)):
        if n % block:
            raise ValueError(f"splash attention: attention_block_size={block} does not divide the {what} length "
                             f"{n}: choose a divisor of {n} (a multiple of 128 on TPU)")
    body = lambda q, k, v, qs, ks: _splash_local(q, k, v, qs, ks, causal=causal, block=block, interpret=interpret)
    q = (q * scale).astype(q.dtype)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return body(q, k, v, q_segment_ids, kv_segment_ids)
    q_spec = nn.logical_to_mesh_axes(SPLASH_QKV_AXES)
    kv_spec = nn.logical_to_mesh_axes(SPLASH_KV_AXES)
    from omni_jax import sharding as shd

    split = shd.spec_axes(q_spec[1])
    if any(mesh.shape[a] > 1 for a in split):
        raise ValueError(f"splash attention does not split the sequence, but the mesh splits it over {split}: "
                         "use attention_impl='blockwise' with a context axis, or set the context axis to 1")
    from omni_jax.layers.ring_attention import fit

    batch = fit(q_spec[0], q.shape[0], mesh)  # e.g. the 1-row batch of parameter init: replicated
    q_spec = jax.P(batch, None, fit(q_spec[2], q.shape[2], mesh), None)
    kv_spec = jax.P(batch, None, fit(kv_spec[2], k.shape[2], mesh), None)
    seg_spec = jax.P(q_spec[0], None)
    return jax.shard_map(body, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec, seg_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v, q_segment_ids, kv_segment_ids)


def cudnn_attention(q, k, v, mask, *, causal: bool, scale: float):
    """cuDNN flash attention; `mask` (b, 1, t, s) boolean from the segment ids, or None."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, scale=scale, implementation="cudnn")
