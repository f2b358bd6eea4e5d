"""RMSNorm (Qwen2RMSNorm) and LayerNorm (torch.nn.LayerNorm), both computed in fp32."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) in fp32, cast back, then times the weight.

    The order (normalise in fp32 -> cast to the compute dtype -> scale) is
    transformers' Qwen2RMSNorm, so bf16 runs round like the reference.
    """

    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (x.shape[-1],), self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * y.astype(self.dtype)


class LayerNorm(nn.Module):
    """torch.nn.LayerNorm over the last axis (biased variance), in fp32."""

    eps: float = 1e-5
    use_bias: bool = True
    use_scale: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.use_scale:
            scale = self.param(
                "scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                (x.shape[-1],), self.param_dtype,
            )
            y = y * scale.astype(jnp.float32)
        if self.use_bias:
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
                (x.shape[-1],), self.param_dtype,
            )
            y = y + bias.astype(jnp.float32)
        return y.astype(self.dtype)
