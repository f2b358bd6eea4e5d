"""Token-level losses in fp32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sum(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum over positions of weight * -log p(target), and the number of correct argmax
    predictions among weighted positions. logits (..., V) any dtype, computed in fp32."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = (lse - tgt) * weights
    correct = (jnp.argmax(logits, axis=-1) == targets) * (weights > 0)
    return nll.sum(), correct.sum().astype(jnp.float32)
