"""Token embedding table with logical axes ('vocab', 'embed'); torch.nn.Embedding layout.

`shard_lookup=True` (the LLM's 152k-row table) looks tokens up per shard under a mesh, as
FSDP wants for a table whose feature axis is split (`embed` -> fsdp x context in sharding.py):
inside `jax.shard_map` every device gathers the token ids of the devices that share its data
replica, looks them up in its own feature columns (and its own vocabulary rows, summed over
`tensor` when the vocabulary is split), and an all-to-all hands each device its tokens' whole
rows. The backward is the same in reverse: each device scatter-adds into its own table shard.
Left to the SPMD partitioner, the TPU compile of the 7B 64k plans all-gathered the whole fp32
table for the lookup and turned its gradient into a whole-table scatter-add plus an all-reduce
over every chip: several 2 GiB fp32 [152064, 3584] values per chip (benchmarks/README.md).
Without a mesh, or when the table is not split, it is the plain `jnp.take`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# The logical axes of a 2-D id array (rows, positions), as the model's activations are placed.
IDS_AXES = ("activation_batch", "activation_length")


def sharded_take(table: jax.Array, ids: jax.Array, table_axes: tuple[str, str], dtype: Any) -> jax.Array:
    """table[ids] (ids (b, t) -> (b, t, features) in `dtype`) computed per shard of the mesh in
    context; the plain lookup when no mesh axis splits the table."""
    from omni_jax import sharding as shd
    from omni_jax.layers.ring_attention import fit

    mesh = jax.sharding.get_abstract_mesh()
    plain = lambda: jnp.take(table, ids, axis=0).astype(dtype)
    if mesh.empty or ids.ndim != 2:
        return plain()
    vocab_axes, feat_axes = (tuple(a for a in shd.spec_axes(ax) if mesh.shape[a] > 1)
                             for ax in nn.logical_to_mesh_axes(table_axes))
    if not vocab_axes and not feat_axes:
        return plain()
    ids_spec = nn.logical_to_mesh_axes(IDS_AXES)
    ids_spec = jax.P(fit(ids_spec[0], ids.shape[0], mesh), fit(ids_spec[1], ids.shape[1], mesh))
    table_spec = jax.P(vocab_axes or None, feat_axes or None)
    rows_per_shard = table.shape[0] // shd.axes_size(vocab_axes, mesh)

    def body(tab, ids):
        b, t = ids.shape
        flat = ids.reshape(-1)
        if feat_axes:  # the ids of every device holding other feature columns of the same rows
            flat = jax.lax.all_gather(flat, feat_axes, tiled=True)
        if vocab_axes:
            local = flat - jax.lax.axis_index(vocab_axes) * rows_per_shard
            mine = (local >= 0) & (local < rows_per_shard)
            x = jnp.where(mine[:, None], jnp.take(tab, jnp.clip(local, 0, rows_per_shard - 1), axis=0), 0)
            x = jax.lax.psum(x, vocab_axes)
        else:
            x = jnp.take(tab, flat, axis=0)
        x = x.astype(dtype)
        if feat_axes:  # chunk j (device j's tokens) goes to device j; columns arrive in mesh order
            x = jax.lax.all_to_all(x, feat_axes, split_axis=0, concat_axis=1, tiled=True)
        return x.reshape(b, t, -1)

    return jax.shard_map(body, mesh=mesh, in_specs=(table_spec, ids_spec),
                         out_specs=jax.P(ids_spec[0], ids_spec[1], None), check_vma=False)(table, ids)


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
    # Per-shard lookup under a mesh (module docstring); for 2-D (rows, positions) ids.
    shard_lookup: bool = False

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, self.axes),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        if self.shard_lookup:
            x = sharded_take(self.embedding, ids, self.axes, self.dtype)
        else:
            x = jnp.take(self.embedding, ids, axis=0).astype(self.dtype)
        if self.padding_idx is not None:
            x = jnp.where((ids == self.padding_idx)[..., None], jax.lax.stop_gradient(x), x)
        return x
