"""omni_jax/layers/attention.py: masking semantics, GQA, and the blockwise implementation."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.layers.attention import dot_product_attention


def _qkv(b=2, t=24, h=4, kvh=2, d=8, seed=0):
    r = np.random.RandomState(seed)
    f = lambda *s: jnp.asarray(r.randn(*s).astype(np.float32))
    return f(b, t, h, d), f(b, t, kvh, d), f(b, t, kvh, d)


def _naive(q, k, v, allowed):
    """Per-head loops with an explicit boolean (t, s) mask per batch row."""
    b, t, h, d = q.shape
    rep = h // k.shape[2]
    out = np.zeros(q.shape, np.float64)
    for i in range(b):
        for j in range(h):
            s = q[i, :, j].astype(np.float64) @ k[i, :, j // rep].astype(np.float64).T / np.sqrt(d)
            s = np.where(allowed[i], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[i, :, j] = p @ v[i, :, j // rep]
    return out


def test_segments_and_causal_match_naive_reference():
    q, k, v = _qkv()
    seg = np.array([[1] * 10 + [2] * 14, [1] * 5 + [2] * 5 + [3] * 14], np.int32)
    t = seg.shape[1]
    allowed = (seg[:, :, None] == seg[:, None, :]) & (np.arange(t)[:, None] >= np.arange(t)[None, :])
    ref = _naive(np.asarray(q), np.asarray(k), np.asarray(v), allowed)
    for impl in ("xla", "blockwise"):
        out = dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True, impl=impl, block_size=8)
        np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, err_msg=impl)


def test_packed_equals_separate():
    """Two samples packed in one row attend exactly as when run alone."""
    q, k, v = _qkv(b=1, t=16)
    seg = np.array([[1] * 7 + [2] * 9])
    packed = dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True)
    a = dot_product_attention(q[:, :7], k[:, :7], v[:, :7], causal=True)
    b = dot_product_attention(q[:, 7:], k[:, 7:], v[:, 7:], causal=True)
    np.testing.assert_allclose(packed, jnp.concatenate([a, b], 1), atol=1e-6)


def test_fully_masked_rows_are_finite():
    q, k, v = _qkv(b=1, t=4)
    qs = np.array([[1, 1, 1, 1]])
    ks = np.array([[2, 2, 2, 2]])
    for impl in ("xla", "blockwise"):
        out = dot_product_attention(q, k, v, q_segment_ids=qs, kv_segment_ids=ks, impl=impl)
        assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("causal", [True, False])
def test_blockwise_gradients_match_xla(causal):
    q, k, v = _qkv(t=37)  # not a multiple of the block: exercises key padding
    seg = np.array([[1] * 20 + [2] * 17, [1] * 37])
    w = jnp.asarray(np.random.RandomState(1).randn(*q.shape).astype(np.float32))

    def f(impl):
        def loss(q, k, v):
            o = dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal, impl=impl, block_size=16)
            return (o * w).sum()
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    for gx, gb in zip(f("xla"), f("blockwise")):
        np.testing.assert_allclose(gb, gx, atol=2e-5)


@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_q_offset_matches_full_causal(impl):
    """A query chunk at offset 16 sees keys 0..16+i, like rows 16.. of the full pass."""
    q, k, v = _qkv(b=1, t=24)
    full = dot_product_attention(q, k, v, causal=True)
    tail = dot_product_attention(q[:, 16:], k, v, causal=True, q_offset=16, impl=impl, block_size=8)
    np.testing.assert_allclose(tail, full[:, 16:], atol=1e-6)


def test_blockwise_never_computes_blocks_the_mask_removes():
    """Key blocks in a query block's future, or of other packed samples only, are skipped: keys
    and values there are NaN, and the outputs that cannot see them stay finite and exact (a
    masked-but-computed block would give 0 * NaN = NaN)."""
    q, k, v = _qkv(b=1, t=32)
    seg = np.array([[1] * 16 + [2] * 16])
    poison = jnp.arange(32)[None, :, None, None] >= 16
    kp, vp = jnp.where(poison, jnp.nan, k), jnp.where(poison, jnp.nan, v)
    for causal, s in ((True, None), (False, seg)):  # causal alone; segments alone
        ref = dot_product_attention(q[:, :16], k[:, :16], v[:, :16], causal=causal)
        out = dot_product_attention(q, kp, vp, q_segment_ids=s, kv_segment_ids=s, causal=causal,
                                    impl="blockwise", block_size=8)
        np.testing.assert_allclose(out[:, :16], ref, atol=1e-6)
        g = jax.grad(lambda q: dot_product_attention(q, kp, vp, q_segment_ids=s, kv_segment_ids=s, causal=causal,
                                                     impl="blockwise", block_size=8)[:, :16].sum())(q)
        assert np.isfinite(np.asarray(g[:, :16])).all()


def _packed_ids(b, t, n, pad, seed):
    """(b, t) segment ids: n contiguous samples of random lengths, then `pad` entries of 0."""
    r = np.random.RandomState(seed)
    rows = []
    for _ in range(b):
        cuts = np.sort(r.choice(np.arange(1, t - pad), n - 1, replace=False))
        rows.append(np.concatenate([np.full(e - s, i + 1) for i, (s, e) in
                                    enumerate(zip([0, *cuts], [*cuts, t - pad]))] + [np.zeros(pad, int)]))
    return jnp.asarray(np.stack(rows), jnp.int32)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("layout", ["packed", "interleaved"])
def test_blockwise_loops_over_the_active_range_with_the_same_bits(monkeypatch, causal, layout):
    """On CPU each query block loops only over the key-block range from its first to its last
    active block (the backward: each key block over its query-block range), instead of over every
    block with a skip: the same pairs computed in the same order, so output and gradients are
    bit-identical to the full loops. 'interleaved' segment ids (1, 2, 1, 2, ...) make every block
    active: the range is then all blocks, and the per-step skip still decides."""
    from omni_jax.layers import attention

    q, k, v = _qkv(b=2, t=200, h=4, kvh=2, d=8)
    seg = (_packed_ids(2, 200, 5, 23, seed=1) if layout == "packed"
           else jnp.asarray(np.tile([1, 2], (2, 100)), jnp.int32))
    w = jnp.asarray(np.random.RandomState(2).randn(*q.shape).astype(np.float32))

    def run():
        f = lambda q, k, v: jnp.sum(w * dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg,
                                                               causal=causal, impl="blockwise", block_size=32))
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)

    ranged = run()
    monkeypatch.setattr(attention, "_ranged", lambda skip: False)  # every block, each step's skip alone
    full = run()
    for a, b in zip(jax.tree.leaves(ranged), jax.tree.leaves(full)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    ref = _naive(np.asarray(q), np.asarray(k), np.asarray(v),
                 (np.asarray(seg)[:, :, None] == np.asarray(seg)[:, None, :])
                 & (np.tril(np.ones((200, 200), bool)) if causal else True))
    out = dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal, impl="blockwise",
                                block_size=32)
    np.testing.assert_allclose(out, ref, atol=2e-6)  # fp32 against float64: max abs difference about 5e-7


def test_blockwise_skips_the_padding_block_for_other_segments():
    """Segment 0 (the data's padding) is kept out of a block's id range: the last block of a packed
    row, which holds the last sample and the padding, is not a partner of every other block (it was,
    through a [0, last id] range, and cost a block pair per query block). Its keys poisoned with NaN
    where they are padding leave every other sample's output exact."""
    from omni_jax.layers.attention import _active

    qs = jnp.asarray([[1] * 8], jnp.int32)  # a block of sample 1
    ks = jnp.asarray([[5] * 3 + [0] * 5], jnp.int32)  # the last sample's tail, then padding
    idx = jnp.arange(8)[None]
    assert not bool(_active(qs, idx, ks, idx, causal=False))
    assert bool(_active(jnp.asarray([[0] * 8], jnp.int32), idx, ks, idx, causal=False))  # padding sees padding
    assert bool(_active(jnp.asarray([[4] * 4 + [5] * 4], jnp.int32), idx, ks, idx, causal=False))
    q, k, v = _qkv(b=1, t=32)
    seg = jnp.asarray([[1] * 12 + [2] * 14 + [0] * 6], jnp.int32)  # the last block: [2, 2, 0, 0, 0, 0, 0, 0]
    poison = (seg == 0)[:, :, None, None]
    kp, vp = jnp.where(poison, jnp.nan, k), jnp.where(poison, jnp.nan, v)
    out = dot_product_attention(q, kp, vp, q_segment_ids=seg, kv_segment_ids=seg, impl="blockwise", block_size=8)
    ref = dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg)
    # the first block (sample 1 only) never meets the last one; the blocks holding sample 2 do, and
    # 0 * NaN poisons them there, as any computed pair with NaN keys would
    np.testing.assert_allclose(out[:, :8], ref[:, :8], atol=1e-6)


@pytest.mark.parametrize("remat", [False, True])
def test_blockwise_in_a_differentiated_layer_scan_keeps_no_pair_stack(remat):
    """The gradient of a scanned layer stack (as the NaViT and the LLM run it) must not hold a
    (query blocks, key blocks, ...) stack of masks or scores: the masks depend only on segment ids
    that are constant across layers, and without the barrier in attention._blocks JAX hoisted them
    out of the layer scan (18 GiB f32 per chip for the 7B vision tower). Same gradient as XLA."""
    q, _, _ = _qkv(b=1, t=256, h=4, kvh=4, d=8)
    seg = jnp.asarray(np.repeat([[1, 2]], 128, axis=1))  # (1, 256): two packed samples
    w = jnp.asarray(np.random.RandomState(1).randn(*q.shape).astype(np.float32))

    def loss(x, impl):
        def layer(c, _):
            return c + dot_product_attention(c, c, c, q_segment_ids=seg, kv_segment_ids=seg, causal=True,
                                             impl=impl, block_size=32), None
        body = jax.checkpoint(layer, policy=jax.checkpoint_policies.nothing_saveable) if remat else layer
        return jnp.sum(jax.lax.scan(body, x, None, length=2)[0] * w)

    hlo = jax.jit(jax.grad(lambda x: loss(x, "blockwise"))).lower(q).compile().as_text()
    stacked = sorted(set(re.findall(r"(?:f32|pred|s32)\[8,8,[0-9,]*\]", hlo)))
    assert not stacked, f"pair-stacked arrays in the compiled gradient: {stacked}"
    g, ref = jax.grad(lambda x: loss(x, "blockwise"))(q), jax.grad(lambda x: loss(x, "xla"))(q)
    # fp32: max abs difference 3.8e-5 with gradients up to 35 (1.1e-6 of the largest; the same without the barrier)
    np.testing.assert_allclose(g, ref, atol=2e-6 * float(jnp.abs(ref).max()))


def test_bad_head_counts_and_impl_are_errors():
    q, k, v = _qkv(h=4, kvh=3)
    with pytest.raises(ValueError, match="not a multiple"):
        dot_product_attention(q, k, v)
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="unknown attention impl"):
        dot_product_attention(q, k, v, impl="flash9")
