"""Ring attention over the `context` mesh axis (impl "ring" of `dot_product_attention`), and the
all-gather variant that impl "blockwise" uses under that axis (`gathered_attention`).

Context parallelism that scales with the sequence: every device keeps its slice of the
queries, keys and values (nothing is all-gathered); the key/value slices travel around the
ring (`lax.ppermute`) for `context` steps while each device folds them into an online softmax
(the flash-attention recurrence). With a causal mask a device skips the slices that lie
entirely in its future (`lax.cond`), so no fully masked block is computed. Segment ids travel
with their keys, so packed samples stay block-diagonal. Each ring step is rematerialised in
the backward pass (the gradient flows back through the reversed permutations).

Inside a ring step the local attention is blockwise too (`attention.blockwise_attention_lse`:
(block x block) score tiles, an online softmax, a recomputing backward, fully masked tiles
skipped), and the steps' partial results merge through their log-sum-exps. So a device never
holds a (local length x local length) score matrix: at 64k tokens over context 4 that matrix
alone was 16k x 16k x 28 heads, about 28 GiB per row in fp32.

Numerically this is the same softmax as the XLA reference up to fp32 summation order
(tests/layers/test_ring_attention.py: forward and gradients within 1e-5 on 2 and 4 devices).
Rows of the batch shard over the batch axes and heads over `tensor` exactly as the
logical-axis table places the activations; the sequence must divide by the context size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax import sharding as shd
from omni_jax.layers.attention import _NEG, blockwise_attention_lse, merge_partials

CONTEXT_AXIS = "context"


def context_size() -> int:
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty or CONTEXT_AXIS not in mesh.axis_names else int(mesh.shape[CONTEXT_AXIS])


def fit(axes, n: int, mesh):
    """`axes` (a mesh axis name, a tuple of them, or None) if they split n evenly, else None."""
    return axes if n % shd.axes_size(axes, mesh) == 0 else None


def _ring_body(q, k, v, qs, ks, *, causal: bool, scale: float, ring: int, block: int, skip: bool):
    b, tl, h, d = q.shape
    me = jax.lax.axis_index(CONTEXT_AXIS)
    q_pos = jnp.broadcast_to(me * tl + jnp.arange(tl), (b, tl))
    perm = [(i, (i + 1) % ring) for i in range(ring)]
    bq = bk = min(block, tl)

    @jax.checkpoint
    def step(carry, i):
        o, lse, k, v, ks = carry
        src = (me - i) % ring  # whose keys this device holds at step i

        def fold(acc):  # the held slice's keys are positions src * tl + 0..tl-1
            part = blockwise_attention_lse(q, k, v, qs, ks, q_pos - src * tl, causal, scale, bq, bk, skip)
            return merge_partials(acc, part)

        acc = jax.lax.cond(src <= me, fold, lambda a: a, (o, lse)) if causal else fold((o, lse))
        k, v, ks = jax.lax.ppermute((k, v, ks), CONTEXT_AXIS, perm)
        return (*acc, k, v, ks), None

    init = (jnp.zeros((b, tl, h, v.shape[-1]), jnp.float32), jnp.full((b, tl, h), _NEG, jnp.float32), k, v, ks)
    (o, lse, *_), _ = jax.lax.scan(step, init, jnp.arange(ring))
    return jnp.where((lse > 0.5 * _NEG)[..., None], o, 0.0).astype(q.dtype)


def _gathered_body(q, k, v, qs, ks, *, causal: bool, scale: float, block: int, skip: bool):
    from omni_jax.layers.attention import _blockwise

    b, tl = q.shape[:2]
    k, v, ks = (jax.lax.all_gather(x, CONTEXT_AXIS, axis=1, tiled=True) for x in (k, v, ks))
    q_idx = jnp.broadcast_to(jax.lax.axis_index(CONTEXT_AXIS) * tl + jnp.arange(tl), (b, tl))
    return _blockwise(q, k, v, qs, ks, q_idx, causal, scale, min(block, tl), min(block, k.shape[1]), skip)


def gathered_attention(q, k, v, q_segment_ids, kv_segment_ids, *, causal: bool, scale: float, block: int = 512,
                       skip: bool = True):
    """Blockwise self-attention split over `context` by gathering keys/values once (MaxText's
    all-gather context parallelism; impl "blockwise" under a context axis): every device keeps
    its query slice, all-gathers the keys, values and their segment ids inside `jax.shard_map`,
    and runs the blockwise kernel with its global query positions; the gather's transpose
    reduce-scatters the key/value gradients once. Left to the SPMD partitioner, the TPU compile
    of the 64k plan re-gathered keys/values inside the backward's block loops (8.7e14 all-gather
    bytes per chip, benchmarks/README.md)."""
    return ring_attention(q, k, v, q_segment_ids, kv_segment_ids, causal=causal, scale=scale, block=block,
                          skip=skip, body=_gathered_body)


def ring_attention(q, k, v, q_segment_ids, kv_segment_ids, *, causal: bool, scale: float, block: int = 512,
                   skip: bool = True, body=None):
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
    if body is None:
        fn = lambda *a: _ring_body(*a, causal=causal, scale=scale, ring=ring, block=block, skip=skip)
    else:
        fn = lambda *a: body(*a, causal=causal, scale=scale, block=block, skip=skip)
    return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec, seg_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v, q_segment_ids, kv_segment_ids)
