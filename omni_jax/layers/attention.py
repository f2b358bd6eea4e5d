"""The one attention function every branch calls.

    out = dot_product_attention(q, k, v, q_segment_ids=..., kv_segment_ids=..., causal=...)

q (batch, q_len, heads, head_dim); k, v (batch, kv_len, kv_heads, head_dim) with
heads % kv_heads == 0 (grouped-query attention: query head h reads kv head
h // (heads // kv_heads), transformers' `repeat_kv` order).

Masking is built from two ingredients only:
  * segment ids: a query attends to a key iff their segment ids are equal. Packed
    samples get ids 1, 2, 3, ...; padding gets 0 (it then only sees other padding, and
    its loss is masked by the caller). Images/frames packed into one vision sequence or
    clips into one audio batch use the same mechanism (block-diagonal attention).
  * causal ordering by *index*, not by rotary position: key index <= query index.
    Indices default to arange; a KV-cache step passes `q_offset` = the cache fill level.
Extra structure (chunk-causal masks of the flow-matching U-Net, ...) goes in `mask`.

Implementations (`impl`):
  "xla"    materialises the (q_len, kv_len) scores; softmax in fp32. Exact reference.
  "blockwise"  online-softmax over key blocks with a custom VJP that recomputes scores
           blockwise (flash-attention algorithm in plain JAX): memory O(q_len * block)
           instead of O(q_len * kv_len). Use it for long sequences.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows give no NaN


def make_attention_mask(
    q_len: int,
    kv_len: int,
    *,
    batch: int,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    causal: bool = False,
    q_offset: jax.Array | int = 0,
    mask: jax.Array | None = None,
) -> jax.Array | None:
    """Boolean mask (batch, 1, q_len, kv_len), True = attend; None when nothing is masked."""
    out = None
    if q_segment_ids is not None or kv_segment_ids is not None:
        qs = q_segment_ids if q_segment_ids is not None else jnp.ones((batch, q_len), jnp.int32)
        ks = kv_segment_ids if kv_segment_ids is not None else jnp.ones((batch, kv_len), jnp.int32)
        out = qs[:, None, :, None] == ks[:, None, None, :]
    if causal:
        q_idx = jnp.arange(q_len)[None, :] + jnp.reshape(jnp.asarray(q_offset), (-1, 1))
        c = q_idx[:, None, :, None] >= jnp.arange(kv_len)[None, None, None, :]
        out = c if out is None else out & c
    if mask is not None:
        m = mask if mask.ndim == 4 else mask[:, None]
        out = m if out is None else out & m
    return out


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    causal: bool = False,
    q_offset: jax.Array | int = 0,
    mask: jax.Array | None = None,
    scale: float | None = None,
    impl: str = "xla",
    block_size: int = 512,
) -> jax.Array:
    """Returns (batch, q_len, heads, head_dim) in q's dtype. See the module docstring."""
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    if h % kvh:
        raise ValueError(f"attention: {h} query heads is not a multiple of {kvh} kv heads")
    scale = d ** -0.5 if scale is None else scale
    if impl == "xla":
        m = make_attention_mask(
            t, s, batch=b, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
            causal=causal, q_offset=q_offset, mask=mask,
        )
        return _xla_attention(q, k, v, m, scale)
    if impl == "blockwise":
        if mask is not None:
            raise ValueError("attention impl 'blockwise' takes segment ids and causal only, not `mask`")
        qs = q_segment_ids if q_segment_ids is not None else jnp.ones((b, t), jnp.int32)
        ks = kv_segment_ids if kv_segment_ids is not None else jnp.ones((b, s), jnp.int32)
        q_idx = jnp.broadcast_to(jnp.arange(t)[None] + jnp.reshape(jnp.asarray(q_offset), (-1, 1)), (b, t))
        return _blockwise(q, k, v, qs, ks, q_idx, causal, scale, min(block_size, s))
    raise ValueError(f"unknown attention impl {impl!r}; use 'xla' or 'blockwise'")


def _group(q: jax.Array, kvh: int) -> jax.Array:
    """(b, t, h, d) -> (b, kv_heads, h // kv_heads * t, d): the query heads that share a
    kv head become one row block, so each score matmul is a plain batched 2-D matmul
    (XLA CPU runs that ~3x faster than a matmul with two free dims; TPU is indifferent)."""
    b, t, h, d = q.shape
    return q.reshape(b, t, kvh, h // kvh, d).transpose(0, 2, 3, 1, 4).reshape(b, kvh, (h // kvh) * t, d)


def _ungroup(o: jax.Array, t: int) -> jax.Array:
    """(b, g, r * t, d) -> (b, t, g * r, d)."""
    b, g, rt, d = o.shape
    r = rt // t
    return o.reshape(b, g, r, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, g * r, d)


def _masked(logits: jax.Array, mask: jax.Array | None, t: int) -> jax.Array:
    """Applies a (b, 1, t, s) mask to grouped logits (b, g, r * t, s)."""
    if mask is None:
        return logits
    b, g, rt, s = logits.shape
    l = logits.reshape(b, g, rt // t, t, s)
    return jnp.where(mask[:, :, None], l, _NEG).reshape(b, g, rt, s)


def _xla_attention(q, k, v, mask, scale):
    t = q.shape[1]
    qg = _group(q, k.shape[2])
    logits = jnp.einsum("bgqd,bsgd->bgqs", qg, k, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(_masked(logits, mask, t), axis=-1).astype(v.dtype)
    out = jnp.einsum("bgqs,bsgd->bgqd", probs, v, preferred_element_type=jnp.float32)
    return _ungroup(out, t).astype(q.dtype)


# ---------------------------------------------------------------------------------
# Blockwise (flash) attention in plain JAX with a recomputing custom VJP.
# ---------------------------------------------------------------------------------


def _block_mask(qs, ks_blk, q_idx, kv_idx_blk, causal):
    m = qs[:, :, None] == ks_blk[:, None, :]  # (b, t, blk)
    if causal:
        m &= q_idx[:, :, None] >= kv_idx_blk[None, None, :]
    return m[:, None]  # (b, 1, t, blk)


def _split_blocks(x, blk):
    """(b, s, ...) -> (n, b, blk, ...), padding s to a multiple of blk."""
    s = x.shape[1]
    n = -(-s // blk)
    pad = n * blk - s
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(x.shape[0], n, blk, *x.shape[2:]), 1, 0)


def _kv_blocks(k, v, ks, blk):
    s = k.shape[1]
    kb, vb = _split_blocks(k, blk), _split_blocks(v, blk)
    # padded keys get segment id -1: never equal to a real (>= 0) query segment
    ksb = _split_blocks(jnp.pad(ks, [(0, 0), (0, (-s) % blk)], constant_values=-1), blk)
    kvidx = jnp.arange(kb.shape[0] * blk).reshape(kb.shape[0], blk)
    return kb, vb, ksb, kvidx


def _blockwise_fwd_impl(q, k, v, qs, ks, q_idx, causal, scale, blk):
    b, t, h, d = q.shape
    kvh = k.shape[2]
    qg = _group(q, kvh)  # (b, g, r*t, d)
    rt = qg.shape[2]

    def body(carry, xs):
        o, m_prev, l_prev = carry
        kj, vj, ksj, idxj = xs
        logits = jnp.einsum("bgqd,bsgd->bgqs", qg, kj, preferred_element_type=jnp.float32) * scale
        logits = _masked(logits, _block_mask(qs, ksj, q_idx, idxj, causal), t)
        m_new = jnp.maximum(m_prev, logits.max(-1))
        p = jnp.exp(logits - m_new[..., None])
        corr = jnp.exp(m_prev - m_new)
        l_new = l_prev * corr + p.sum(-1)
        o = o * corr[..., None] + jnp.einsum("bgqs,bsgd->bgqd", p.astype(v.dtype), vj,
                                             preferred_element_type=jnp.float32)
        return (o, m_new, l_new), None

    init = (
        jnp.zeros((b, kvh, rt, v.shape[-1]), jnp.float32),
        jnp.full((b, kvh, rt), _NEG, jnp.float32),
        jnp.zeros((b, kvh, rt), jnp.float32),
    )
    (o, m, l), _ = jax.lax.scan(body, init, _kv_blocks(k, v, ks, blk))
    o = o / l[..., None]
    lse = m + jnp.log(l)
    return _ungroup(o, t).astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _blockwise(q, k, v, qs, ks, q_idx, causal, scale, blk):
    return _blockwise_fwd_impl(q, k, v, qs, ks, q_idx, causal, scale, blk)[0]


def _blockwise_fwd(q, k, v, qs, ks, q_idx, causal, scale, blk):
    out, lse = _blockwise_fwd_impl(q, k, v, qs, ks, q_idx, causal, scale, blk)
    return out, (q, k, v, qs, ks, q_idx, out, lse)


def _blockwise_bwd(causal, scale, blk, res, dout):
    q, k, v, qs, ks, q_idx, out, lse = res
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    qg = _group(q, kvh)
    dog = _group(dout, kvh).astype(jnp.float32)
    delta = jnp.sum(dog * _group(out, kvh).astype(jnp.float32), axis=-1)  # rowsum(dO * O)

    def body(dq, xs):
        kj, vj, ksj, idxj = xs
        logits = jnp.einsum("bgqd,bsgd->bgqs", qg, kj, preferred_element_type=jnp.float32) * scale
        msk = _block_mask(qs, ksj, q_idx, idxj, causal)
        # masked scores are _NEG, so exp(. - lse) is exactly 0 there (and matches the
        # forward's uniform weights on fully masked padding rows)
        p = jnp.exp(_masked(logits, msk, t) - lse[..., None])
        dv = jnp.einsum("bgqs,bgqd->bsgd", p, dog)
        dp = jnp.einsum("bgqd,bsgd->bgqs", dog, vj.astype(jnp.float32))
        ds = p * (dp - delta[..., None]) * scale
        dq = dq + jnp.einsum("bgqs,bsgd->bgqd", ds, kj.astype(jnp.float32))
        dk = jnp.einsum("bgqs,bgqd->bsgd", ds, qg.astype(jnp.float32))
        return dq, (dk, dv)

    dq0 = jnp.zeros(qg.shape, jnp.float32)
    dq, (dkb, dvb) = jax.lax.scan(body, dq0, _kv_blocks(k, v, ks, blk))
    dk = jnp.moveaxis(dkb, 0, 1).reshape(b, -1, kvh, d)[:, :s]
    dv = jnp.moveaxis(dvb, 0, 1).reshape(b, -1, kvh, v.shape[-1])[:, :s]
    return (_ungroup(dq, t).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None)


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)
