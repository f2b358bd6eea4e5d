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
  "blockwise"  online-softmax over (query block, key block) pairs with a custom VJP that
           recomputes scores blockwise (flash-attention algorithm in plain JAX): memory
           O(block^2) per step instead of O(q_len * kv_len), and block pairs that the causal or
           segment mask removes entirely are skipped (`lax.cond`), forward and backward; on CPU
           each query block's loop runs only over the range of key blocks that holds all of its
           active ones (and each key block's over its query-block range in the backward), so the
           skipped pairs outside it cost no loop step either (same arithmetic, same bits). Use it
           for long sequences on CPU/XLA. Under a `context` mesh axis that splits the sequence it
           all-gathers keys/values once per call (`ring_attention.gathered_attention`).
  "splash" / "splash_interpret" / "cudnn"  the TPU Pallas and GPU cuDNN kernels
           (omni_jax/layers/attention_kernels.py); segment ids and causal only.
  "ring"   context parallelism: keys/values circulate over the `context` mesh axis
           (omni_jax/layers/ring_attention.py); "blockwise" when context = 1.
"""

from __future__ import annotations

import functools

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
    block_skip: bool = True,
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
        if isinstance(q_offset, int) and q_offset == 0 and t == s:
            from omni_jax.layers.ring_attention import context_size, gathered_attention

            ring = context_size()
            if ring > 1 and t % ring == 0:  # keys/values gathered once over `context`, per shard
                return gathered_attention(q, k, v, qs, ks, causal=causal, scale=scale, block=block_size,
                                          skip=block_skip)
        q_idx = jnp.broadcast_to(jnp.arange(t)[None] + jnp.reshape(jnp.asarray(q_offset), (-1, 1)), (b, t))
        return _blockwise(q, k, v, qs, ks, q_idx, causal, scale, min(block_size, t), min(block_size, s), block_skip)
    if impl == "ring":
        from omni_jax.layers.ring_attention import context_size, ring_attention

        if mask is not None:
            raise ValueError("attention impl 'ring' takes segment ids and causal only, not `mask`")
        decoding = not (isinstance(q_offset, int) and q_offset == 0)
        if decoding or context_size() == 1:
            return dot_product_attention(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                                         causal=causal, q_offset=q_offset, scale=scale,
                                         impl="xla" if decoding else "blockwise", block_size=block_size)
        qs = q_segment_ids if q_segment_ids is not None else jnp.ones((b, t), jnp.int32)
        ks = kv_segment_ids if kv_segment_ids is not None else jnp.ones((b, s), jnp.int32)
        return ring_attention(q, k, v, qs, ks, causal=causal, scale=scale, block=block_size, skip=block_skip)
    if impl in ("splash", "splash_interpret", "cudnn"):
        from omni_jax.layers import attention_kernels as kernels

        if mask is not None:
            raise ValueError(f"attention impl {impl!r} takes segment ids and causal only, not `mask`")
        if not (isinstance(q_offset, int) and q_offset == 0):  # KV-cache decoding: the exact XLA path
            return dot_product_attention(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                                         causal=causal, q_offset=q_offset, scale=scale)
        if impl != "splash_interpret":
            kernels.check_platform(impl)
        qs = q_segment_ids if q_segment_ids is not None else jnp.ones((b, t), jnp.int32)
        ks = kv_segment_ids if kv_segment_ids is not None else jnp.ones((b, s), jnp.int32)
        if impl == "cudnn":
            seg = make_attention_mask(t, s, batch=b, q_segment_ids=qs, kv_segment_ids=ks)
            return kernels.cudnn_attention(q, k, v, seg, causal=causal, scale=scale)
        return kernels.splash_attention(q, k, v, qs, ks, causal=causal, scale=scale, block=block_size,
                                        interpret=impl == "splash_interpret")
    raise ValueError(f"unknown attention impl {impl!r}; use 'xla', 'blockwise', 'splash' (TPU), "
                     "'splash_interpret', 'cudnn' (GPU) or 'ring' (context parallelism)")


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


def _split_blocks(x, blk, fill=0):
    """(b, s, ...) -> (n, b, blk, ...), padding s to a multiple of blk with `fill`."""
    s = x.shape[1]
    n = -(-s // blk)
    pad = n * blk - s
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    return jnp.moveaxis(x.reshape(x.shape[0], n, blk, *x.shape[2:]), 1, 0)


_BIG = jnp.iinfo(jnp.int32).max


def _seg_range(seg, pad_id):
    """Per block (..., blk) -> (min, max) segment id over the entries that are neither the block
    padding `pad_id` nor segment 0, and whether segment 0 is there. Segment 0 (the data's
    padding) is kept apart: in a range it would make the last, partly padded block of a packed
    row overlap every other block."""
    real = (seg != pad_id) & (seg != 0)
    return jnp.where(real, seg, _BIG).min(-1), jnp.where(real, seg, -_BIG).max(-1), (seg == 0).any(-1)


def _blocks(q, k, v, qs, ks, q_idx, bq, bk):
    """Query and key/value blocks plus the per-block facts that decide which pairs to skip.

    q (b, t, h, d) -> (nq, b, g, r, bq, d) (query heads grouped by kv head); keys (nk, b, bk, g, d).
    Padded queries get segment id -2 and padded keys -1, so they never meet a real entry.

    The barrier ties the segment ids and positions to q, k and v. Without it the per-pair masks
    depend only on values that are constant across a scanned layer stack, and differentiating
    the layer scan hoists them out of it: JAX's scan partial evaluation computes loop-invariant
    values once, before the loop, which here stacks every (query block, key block) mask and
    score fill, a (nq, nk, b, heads, bq, bk) array (18 GiB f32 per chip for the 7B vision
    tower in sft_1_8k_v5p64; tests/layers/test_attention.py pins its absence)."""
    q, k, v, qs, ks, q_idx = jax.lax.optimization_barrier((q, k, v, qs, ks, q_idx))
    b, t, h, d = q.shape
    g = k.shape[2]
    qg = q.reshape(b, t, g, h // g, d)
    qb = jnp.moveaxis(_split_blocks(qg, bq), 2, -2)  # (nq, b, g, r, bq, d)
    qsb = _split_blocks(qs, bq, fill=-2)
    qib = _split_blocks(q_idx, bq, fill=-1)
    kb, vb = _split_blocks(k, bk), _split_blocks(v, bk)
    ksb = _split_blocks(ks, bk, fill=-1)
    kvidx = jnp.arange(kb.shape[0] * bk).reshape(kb.shape[0], bk)
    return (qb, qsb, qib), (kb, vb, ksb, kvidx)


def _active(qsi, qii, ksj, idxj, causal, skip=True):
    """Whether any (query, key) pair of the two blocks may attend: both hold segment 0, or the
    ranges of their other segment ids overlap (segment ids are equal only then), and, if causal,
    some key index <= some query index. Over the whole batch (one decision per block pair). A
    pair it lets through may still be fully masked (its scores then add exactly nothing).
    skip=False: always True (every pair computed; benchmarks/attention.py measures what skipping
    saves)."""
    if not skip:
        return jnp.bool_(True)
    qmin, qmax, q0 = _seg_range(qsi, -2)
    kmin, kmax, k0 = _seg_range(ksj, -1)
    ok = jnp.any(((qmin <= kmax) & (kmin <= qmax)) | (q0 & k0))
    if causal:
        ok &= idxj[0] <= qii.max()
    return ok


def _ranged(skip: bool) -> bool:
    """Whether the block loops run over the range of active blocks (`_active_range`) instead of
    every block: on CPU, where a loop step costs about as much as a small block pair. Elsewhere
    the loops keep their static trip counts, which the AOT plans' cost counts read
    (launch/hlo_cost.py), and TPU/GPU runs use their kernels."""
    from omni_jax.layers.attention_kernels import target_platform

    return skip and target_platform() == "cpu"


def _active_range(active):
    """(n,) bool -> (first, end): the smallest index range [first, end) holding every True
    ((0, 0) if none). The loop over it still reads `active` per step, so any layout is exact;
    for contiguous packed segments and causal masks the range holds no inactive block at all."""
    n = active.shape[0]
    first = jnp.argmax(active).astype(jnp.int32)
    end = (n - jnp.argmax(active[::-1])).astype(jnp.int32)
    found = active.any()
    return jnp.where(found, first, 0), jnp.where(found, end, 0)


def _take(xs, i):
    """Entry i of every array of `xs` along its leading (block) axis."""
    return tuple(jax.lax.dynamic_index_in_dim(x, i, keepdims=False) for x in xs)


def _pair_mask(qsi, qii, ksj, idxj, causal):
    m = qsi[:, :, None] == ksj[:, None, :]  # (b, bq, bk)
    if causal:
        m &= qii[:, :, None] >= idxj[None, None, :]
    return m[:, None, None]  # (b, 1, 1, bq, bk)


def _scores(qi, kj, scale):
    return jnp.einsum("bgrqd,bkgd->bgrqk", qi, kj, preferred_element_type=jnp.float32) * scale


def online_softmax_fold(acc, logits, v):
    """One step of the flash recurrence: fold masked scores `logits` (b, g, r, q, k) of a key block
    with values v (b, k, g, d) into the running (output sum, max, normaliser) `acc`. Shared by the
    blockwise path and ring attention (omni_jax/layers/ring_attention.py)."""
    o, m_prev, l_prev = acc
    m_new = jnp.maximum(m_prev, logits.max(-1))
    p = jnp.exp(logits - m_new[..., None])
    corr = jnp.exp(m_prev - m_new)
    o = o * corr[..., None] + jnp.einsum("bgrqk,bkgd->bgrqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o, m_new, l_prev * corr + p.sum(-1)


def _blockwise_fwd_impl(q, k, v, qs, ks, q_idx, causal, scale, bq, bk, skip):
    b, t, h, d = q.shape
    g = k.shape[2]
    (qb, qsb, qib), kvb = _blocks(q, k, v, qs, ks, q_idx, bq, bk)
    ranged = _ranged(skip)

    def one_q_block(xs):
        qi, qsi, qii = xs

        def body(carry, kv, live):
            kj, vj, ksj, idxj = kv

            def compute(carry):
                logits = jnp.where(_pair_mask(qsi, qii, ksj, idxj, causal), _scores(qi, kj, scale), _NEG)
                return online_softmax_fold(carry, logits, vj)

            return jax.lax.cond(live, compute, lambda c: c, carry)

        init = (jnp.zeros(qi.shape[:-1] + (v.shape[-1],), jnp.float32),
                jnp.full(qi.shape[:-1], _NEG, jnp.float32), jnp.zeros(qi.shape[:-1], jnp.float32))
        if ranged:  # only the key blocks from the first to the last active one
            active = jax.vmap(lambda ksj, idxj: _active(qsi, qii, ksj, idxj, causal))(kvb[2], kvb[3])
            lo, hi = _active_range(active)
            o, m, l = jax.lax.fori_loop(lo, hi, lambda j, c: body(c, _take(kvb, j), active[j]), init)
        else:
            (o, m, l), _ = jax.lax.scan(
                lambda c, kv: (body(c, kv, _active(qsi, qii, kv[2], kv[3], causal, skip)), None), init, kvb)
        seen = l > 0  # rows with no key at all (every block skipped) give 0, never NaN
        o = jnp.where(seen[..., None], o / jnp.where(seen, l, 1.0)[..., None], 0.0)
        return o, jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0), seen

    # (nq, b, g, r, bq, d), (nq, b, g, r, bq) twice; lse is 0 on unseen rows (the backward's
    # exp(score - lse) is then exp(_NEG) = 0 on their masked scores)
    o, lse, seen = jax.lax.map(one_q_block, (qb, qsb, qib))
    o = jnp.moveaxis(o, 0, 3).reshape(b, g, h // g, -1, v.shape[-1])[:, :, :, :t]
    return o.transpose(0, 3, 1, 2, 4).reshape(b, t, h, v.shape[-1]).astype(q.dtype), lse, seen


def _unblock_rows(x, t):
    """Per-row stats (nq, b, g, r, bq) -> (b, t, heads)."""
    nq, b, g, r, bq = x.shape
    return jnp.moveaxis(x, 0, 3).reshape(b, g, r, nq * bq)[..., :t].transpose(0, 3, 1, 2).reshape(b, t, g * r)


def _block_rows(x, g, bq):
    """(b, t, heads) -> (nq, b, g, r, bq), the inverse of `_unblock_rows` (padding rows give 0)."""
    b, t, h = x.shape
    return jnp.moveaxis(_split_blocks(x.reshape(b, t, g, h // g), bq), 2, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _blockwise(q, k, v, qs, ks, q_idx, causal, scale, bq, bk, skip):
    return _blockwise_fwd_impl(q, k, v, qs, ks, q_idx, causal, scale, bq, bk, skip)[0]


def _blockwise_fwd(q, k, v, qs, ks, q_idx, causal, scale, bq, bk, skip):
    out, lse, _ = _blockwise_fwd_impl(q, k, v, qs, ks, q_idx, causal, scale, bq, bk, skip)
    return out, (q, k, v, qs, ks, q_idx, out, lse)


def _blockwise_bwd(causal, scale, bq, bk, skip, res, dout):
    return _blockwise_grads(causal, scale, bq, bk, skip, res, dout, None)


def _blockwise_grads(causal, scale, bq, bk, skip, res, dout, dlse):
    """Gradients of out (and of the log-sum-exp, cotangent `dlse` (b, t, heads) or None): with
    p = softmax(s), dL/ds = p * (dp - rowsum(dO * O) + dlse)."""
    q, k, v, qs, ks, q_idx, out, lse = res
    b, t, h, d = q.shape
    s, g = k.shape[1], k.shape[2]
    (qb, qsb, qib), (kb, vb, ksb, kvidx) = _blocks(q, k, v, qs, ks, q_idx, bq, bk)
    (dob, _, _), _ = _blocks(dout, k, v, qs, ks, q_idx, bq, bk)
    (ob, _, _), _ = _blocks(out, k, v, qs, ks, q_idx, bq, bk)
    dob = dob.astype(jnp.float32)
    delta = jnp.sum(dob * ob.astype(jnp.float32), axis=-1)  # rowsum(dO * O), (nq, b, g, r, bq)
    if dlse is not None:
        delta = delta - _block_rows(dlse.astype(jnp.float32), g, bq)
    ranged = _ranged(skip)

    def one_kv_block(dq, kv):
        kj, vj, ksj, idxj = kv

        def body(acc, xs, live):
            dk, dv = acc
            qi, qsi, qii, doi, lsei, deltai, dqi = xs

            def compute(args):
                dk, dv, dqi = args
                logits = jnp.where(_pair_mask(qsi, qii, ksj, idxj, causal), _scores(qi, kj, scale), _NEG)
                # masked scores are _NEG, so exp(. - lse) is exactly 0 there
                p = jnp.exp(logits - lsei[..., None])
                dv = dv + jnp.einsum("bgrqk,bgrqd->bkgd", p, doi)
                dp = jnp.einsum("bgrqd,bkgd->bgrqk", doi, vj.astype(jnp.float32))
                ds = p * (dp - deltai[..., None]) * scale
                dqi = dqi + jnp.einsum("bgrqk,bkgd->bgrqd", ds, kj.astype(jnp.float32))
                dk = dk + jnp.einsum("bgrqk,bgrqd->bkgd", ds, qi.astype(jnp.float32))
                return dk, dv, dqi

            dk, dv, dqi = jax.lax.cond(live, compute, lambda a: a, (dk, dv, dqi))
            return (dk, dv), dqi

        zeros = jnp.zeros(kj.shape[:3] + (d,), jnp.float32)
        acc = (zeros, jnp.zeros(vj.shape, jnp.float32))
        qs_ = (qb, qsb, qib, dob, lse, delta)
        if ranged:  # only the query blocks from the first to the last active one; dq updated in place
            active = jax.vmap(lambda qsi, qii: _active(qsi, qii, ksj, idxj, causal))(qsb, qib)
            lo, hi = _active_range(active)

            def step(i, carry):
                acc, dq = carry
                acc, dqi = body(acc, _take(qs_, i) + (jax.lax.dynamic_index_in_dim(dq, i, keepdims=False),), active[i])
                return acc, jax.lax.dynamic_update_index_in_dim(dq, dqi, i, 0)

            (dk, dv), dq = jax.lax.fori_loop(lo, hi, step, (acc, dq))
        else:
            (dk, dv), dq = jax.lax.scan(
                lambda acc, xs: body(acc, xs, _active(xs[1], xs[2], ksj, idxj, causal, skip)), acc, qs_ + (dq,))
        return dq, (dk, dv)

    dq0 = jnp.zeros(qb.shape, jnp.float32)
    dq, (dkb, dvb) = jax.lax.scan(one_kv_block, dq0, (kb, vb, ksb, kvidx))
    dq = jnp.moveaxis(dq, 0, 3).reshape(b, g, h // g, -1, d)[:, :, :, :t].transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
    dk = jnp.moveaxis(dkb, 0, 1).reshape(b, -1, g, d)[:, :s]
    dv = jnp.moveaxis(dvb, 0, 1).reshape(b, -1, g, v.shape[-1])[:, :s]
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None)


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def blockwise_attention_lse(q, k, v, qs, ks, q_idx, causal, scale, bq, bk, skip):
    """Blockwise attention that also returns each row's log-sum-exp of its scores, (b, t, heads)
    fp32, and _NEG for a row with no allowed key (its output is 0). Two such partial results over
    disjoint key sets merge exactly (`merge_partials`): ring attention folds one per ring step.
    Keys are indexed 0..s-1 for `causal`; shift `q_idx` to place the queries relative to them."""
    o, lse, seen = _blockwise_fwd_impl(q, k, v, qs, ks, q_idx, causal, scale, bq, bk, skip)
    return o, _lse_out(lse, seen, q.shape[1])


def _lse_out(lse, seen, t):
    return _unblock_rows(jnp.where(seen, lse, _NEG), t)


def _blockwise_lse_fwd(q, k, v, qs, ks, q_idx, causal, scale, bq, bk, skip):
    o, lse, seen = _blockwise_fwd_impl(q, k, v, qs, ks, q_idx, causal, scale, bq, bk, skip)
    return (o, _lse_out(lse, seen, q.shape[1])), (q, k, v, qs, ks, q_idx, o, lse)


def _blockwise_lse_bwd(causal, scale, bq, bk, skip, res, cts):
    dout, dlse = cts
    return _blockwise_grads(causal, scale, bq, bk, skip, res, dout, dlse)


blockwise_attention_lse.defvjp(_blockwise_lse_fwd, _blockwise_lse_bwd)


def merge_partials(acc, part):
    """Merges two normalised partial attentions (o (b, t, h, d) fp32, lse (b, t, h)) over disjoint
    key sets into the attention over their union."""
    o1, l1 = acc
    o2, l2 = part
    lse = jnp.logaddexp(l1, l2)
    o = o1 * jnp.exp(l1 - lse)[..., None] + o2.astype(jnp.float32) * jnp.exp(l2 - lse)[..., None]
    return o, lse
