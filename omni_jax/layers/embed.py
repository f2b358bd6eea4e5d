"""Token embedding table with logical axes ('vocab', 'embed'); torch.nn.Embedding layout."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


class Embed(nn.Module):
    num_embeddings: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    embedding_init: Any = nn.initializers.normal(0.02)
    # Rows whose gradient is cut (torch's padding_idx): the lookup for these ids is
    # wrapped in stop_gradient, so the table row never receives a gradient.
    padding_idx: int | None = None
    axes: tuple[str, str] = ("vocab", "embed")

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, self.axes),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = jnp.take(self.embedding, ids, axis=0).astype(self.dtype)
        if self.padding_idx is not None:
            x = jnp.where((ids == self.padding_idx)[..., None], jax.lax.stop_gradient(x), x)
        return x
