"""Shared Flax linen building blocks, each annotated with logical axis names."""

from omni_jax.layers.attention import dot_product_attention, make_attention_mask
from omni_jax.layers.dense import Dense, dtype_of
from omni_jax.layers.embed import Embed
from omni_jax.layers.norms import LayerNorm, RMSNorm
from omni_jax.layers.rotary import apply_rotary, rotary_cos_sin

__all__ = [
    "Dense", "Embed", "LayerNorm", "RMSNorm", "apply_rotary", "rotary_cos_sin",
    "dot_product_attention", "make_attention_mask", "dtype_of",
]
