"""Ring attention over the `context` mesh axis (impl "ring" of `dot_product_attention`).

Context parallelism that scales with the sequence: every device keeps its slice of the
queries, keys and values (nothing is all-gathered); the key/value slices travel around the
ring (`lax.ppermute`) for `context` steps while each device folds them into an online softmax
(the flash-attention recurrence). With a causal mask a device skips the slices that lie
entirely in its future (`lax.cond`), so no fully masked block is computed. Segment ids travel
with their keys, so packed samples stay block-diagonal. Each ring step is rematerialised in
the backward pass (the gradient flows back through the reversed permutations).

Numerically this is the same softmax as the XLA reference up to fp32 summation order
(tests/layers/test_ring_attention.py: forward and gradients within 1e-5 on 2 and 4 devices).
Rows of the batch shard over the batch axes and heads over `tensor` exactly as the
logical-axis table places the activations; the sequence must divide by the context size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.layers.attention import _NEG, online_softmax_fold
CONTEXT_AXIS = "context"


def context_size() -> int:
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty or CONTEXT_AXIS not in mesh.axis_names else int(mesh.shape[CONTEXT_AXIS])


def fit(axes, n: int, mesh):
    """`axes` (a mesh axis name, a tuple of them, or None) if they split n evenly, else None."""
    names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
    size = 1
    for a in names:
        size *= int(mesh.shape[a])
    return axes if n % size == 0 else None


def _ring_body(q, k, v, qs, ks, *, causal: bool, scale: float, ring: int):
    b, tl, h, d = q.shape
    g = k.shape[2]
    me = jax.lax.axis_index(CONTEXT_AXIS)
    qg = q.reshape(b, tl, g, h // g, d).transpose(0, 2, 3, 1, 4)  # (b, g, r, tl, d)
    q_idx = me * tl + jnp.arange(tl)
    perm = [(i, (i + 1) % ring) for i in range(ring)]

    @jax.checkpoint
    def step(carry, i):
        o, m, l, k, v, ks = carry
        src = (me - i) % ring  # whose keys this device holds at step i

        def fold(acc):
            s = jnp.einsum("bgrqd,bkgd->bgrqk", qg, k, preferred_element_type=jnp.float32) * scale
            allowed = qs[:, :, None] == ks[:, None, :]
            if causal:
                allowed &= q_idx[None, :, None] >= (src * tl + jnp.arange(tl))[None, None, :]
            return online_softmax_fold(acc, jnp.where(allowed[:, None, None], s, _NEG), v)

        acc = jax.lax.cond(src <= me, fold, lambda a: a, (o, m, l)) if causal else fold((o, m, l))
        k, v, ks = jax.lax.ppermute((k, v, ks), CONTEXT_AXIS, perm)
        return (*acc, k, v, ks), None

    shape = (b, g, h // g, tl)
    init = (jnp.zeros(shape + (v.shape[-1],), jnp.float32), jnp.full(shape, _NEG, jnp.float32),
            jnp.zeros(shape, jnp.float32), k, v, ks)
    (o, _, l, *_), _ = jax.lax.scan(step, init, jnp.arange(ring))
    seen = l > 0
    o = jnp.where(seen[..., None], o / jnp.where(seen, l, 1.0)[..., None], 0.0)
    return o.transpose(0, 3, 1, 2, 4).reshape(b, tl, h, v.shape[-1]).astype(q.dtype)


def ring_attention(q, k, v, q_segment_ids, kv_segment_ids, *, causal: bool, scale: float):
    """q (b, t, h, d), k/v (b, t, kv_heads, d) self-attention split over `context`."""
    from flax import linen as nn

    ring = context_size()
    t = q.shape[1]
    if k.shape[1] != t:
        raise ValueError(f"ring attention is self-attention over one split sequence: got {t} queries and "
                         f"{k.shape[1]} keys (KV-cache decoding uses attention_impl 'xla')")
    if t % ring:
        raise ValueError(f"ring attention: the sequence length {t} does not divide over context={ring} devices: "
                         f"choose a sequence length that is a multiple of {ring} (config.data.seq_len) or another "
                         "config.mesh.context")
    mesh = jax.sharding.get_abstract_mesh()
    batch, _, heads, _ = nn.logical_to_mesh_axes(("activation_batch", "activation_length", "activation_heads",
                                                  "activation_head_dim"))
    kv_heads = nn.logical_to_mesh_axes(("activation_kv_heads",))[0]
    batch = fit(batch, q.shape[0], mesh)  # e.g. the 1-row batch of parameter init: replicated
    heads, kv_heads = fit(heads, q.shape[2], mesh), fit(kv_heads, k.shape[2], mesh)
    q_spec = jax.P(batch, CONTEXT_AXIS, heads, None)
    kv_spec = jax.P(batch, CONTEXT_AXIS, kv_heads, None)
    seg_spec = jax.P(batch, CONTEXT_AXIS)
    body = lambda *a: _ring_body(*a, causal=causal, scale=scale, ring=ring)
    return jax.shard_map(body, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec, seg_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v, q_segment_ids, kv_segment_ids)
