"""Rotary position embedding, rotate-half (non-interleaved) layout, computed in fp32.

Matches transformers' Qwen2 `apply_rotary_pos_emb` / `Qwen2RotaryEmbedding` (default rope).
Multi-axis rotary (e.g. the 2-D (h, w) rope of the Qwen2-VL vision encoder) is built
by giving each axis its share of the frequencies and concatenating the angles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def inverse_frequencies(rotary_dim: int, theta: float) -> jax.Array:
    """1 / theta^(2i/d) for i < d/2, in fp32 (the reference's `inv_freq`)."""
    return 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))


def rotary_cos_sin(positions: jax.Array, rotary_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """positions (...,) -> cos, sin of shape (..., rotary_dim), fp32, halves duplicated."""
    angles = positions.astype(jnp.float32)[..., None] * inverse_frequencies(rotary_dim, theta)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x (batch, length, heads, dim); cos/sin (batch, length, dim). Rotation in fp32."""
    x32 = x.astype(jnp.float32)
    cos, sin = cos[..., None, :], sin[..., None, :]
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)
