"""The LM-head loss without full logits (omni_jax/tasks/losses.py): equal to the plain loss and
its gradient, z-loss, argmax ties across vocabulary slices, memory, and bad chunk sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.tasks.losses import LossChunking, cross_entropy_sum, lm_head_cross_entropy_sum

B, T, D, V = 2, 16, 8, 64


def _inputs(seed=0):
    r = np.random.default_rng(seed)
    h = jnp.asarray(r.normal(size=(B, T, D)), jnp.float32)
    kernel = jnp.asarray(r.normal(size=(D, V)), jnp.float32)
    targets = jnp.asarray(r.integers(0, V, size=(B, T)), jnp.int32)
    weights = jnp.asarray(r.random((B, T)) > 0.3, jnp.float32)
    return h, kernel, targets, weights


def _plain(h, kernel, targets, weights, z_loss=0.0):
    logits = (h @ kernel).astype(jnp.float32)
    nll, correct = cross_entropy_sum(logits, targets, weights)
    z = (z_loss * jax.nn.logsumexp(logits, -1) ** 2 * weights).sum()
    return nll + z, correct


@pytest.mark.parametrize("token_chunk,vocab_chunk,z_loss", [(0, 0, 0.0), (4, 0, 0.0), (0, 16, 0.0), (8, 16, 0.0),
                                                            (4, 8, 1e-2), (16, 64, 1e-2)])
def test_tiled_loss_and_gradient_equal_the_plain_loss(token_chunk, vocab_chunk, z_loss):
    h, kernel, targets, weights = _inputs()
    ch = LossChunking(token_chunk, vocab_chunk, z_loss)

    def tiled(h, kernel):
        nll, correct, z = lm_head_cross_entropy_sum(h, kernel, targets, weights, chunking=ch)
        return nll + z, correct

    (lt, ct), gt = jax.value_and_grad(tiled, argnums=(0, 1), has_aux=True)(h, kernel)
    (lp, cp), gp = jax.value_and_grad(lambda a, b: _plain(a, b, targets, weights, z_loss), argnums=(0, 1),
                                      has_aux=True)(h, kernel)
    d_loss = abs(float(lt - lp)) / abs(float(lp))
    d_grad = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(gt, gp))
    print(f"tiled loss ({token_chunk}, {vocab_chunk}, z={z_loss}) vs plain: loss rel diff {d_loss:.3e}, "
          f"gradient max abs diff / max abs gradient {d_grad:.3e}")
    assert d_loss <= 1e-6 and d_grad <= 1e-6
    assert float(ct) == float(cp)


def test_argmax_ties_across_vocabulary_slices_pick_the_first_index():
    h, kernel, targets, weights = _inputs(1)
    kernel = jnp.concatenate([kernel[:, :32], kernel[:, :32]], axis=1)  # every logit appears twice
    targets = jnp.argmax(h @ kernel, -1)  # the first of the tied pair
    _, correct, _ = lm_head_cross_entropy_sum(h, kernel, targets, weights, chunking=LossChunking(0, 16))
    _, plain_correct = cross_entropy_sum(h @ kernel, targets, weights)
    assert float(correct) == float(plain_correct) == float(weights.sum())


def test_tiling_never_materialises_the_full_logits():
    b, t, d, v = 2, 256, 64, 8192
    args = (jax.ShapeDtypeStruct((b, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
            jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.float32))

    def temp_bytes(chunking):
        def f(h, kernel, targets, weights):
            return lm_head_cross_entropy_sum(h, kernel, targets, weights, chunking=chunking)[0]
        c = jax.jit(jax.grad(f, argnums=(0, 1))).lower(*args).compile()
        return c.memory_analysis().temp_size_in_bytes

    full = b * t * v * 4
    plain, tiled = temp_bytes(LossChunking()), temp_bytes(LossChunking(token_chunk=32, vocab_chunk=1024))
    print(f"grad temporaries: plain {plain / 2**20:.1f} MiB, tiled {tiled / 2**20:.1f} MiB (full logits "
          f"{full / 2**20:.1f} MiB)")
    assert plain >= full
    # what remains are kernel-sized buffers (the gradient, the slice-major kernel copy): 2 MiB each
    assert tiled < full / 2 and tiled <= plain / 4


def test_chunk_sizes_that_do_not_divide_name_the_key():
    h, kernel, targets, weights = _inputs()
    with pytest.raises(ValueError, match=r"loss_token_chunk=5 does not divide the sequence length 16"):
        lm_head_cross_entropy_sum(h, kernel, targets, weights, chunking=LossChunking(token_chunk=5))
    with pytest.raises(ValueError, match=r"loss_vocab_chunk=24 does not divide the vocabulary size 64"):
        lm_head_cross_entropy_sum(h, kernel, targets, weights, chunking=LossChunking(vocab_chunk=24))
