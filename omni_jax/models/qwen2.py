"""The LLM backbone: Qwen2.5 layout with Baichuan-Omni's fused `W_pack` (ARCHITECTURE.md 1.1).

Numerical reference: transformers' Qwen2ForCausalLM (eager attention); names mirror the
release (`model.layers.N.self_attn.W_pack`, `o_proj`, `mlp.{gate,up,down}_proj`, ...).

Parameter tree (layers stacked on a leading `layers` axis by nn.scan):
  embed_tokens/embedding                (vocab, embed)
  layers/input_layernorm/scale          (L, embed)
  layers/self_attn/W_pack/kernel        (L, embed, kv_heads, q_per_kv + 2, head_dim)
  layers/self_attn/W_pack/bias          (L, kv_heads, q_per_kv + 2, head_dim)
  layers/self_attn/o_proj/kernel        (L, heads, head_dim, embed)
  layers/post_attention_layernorm/scale (L, embed)
  layers/mlp/{gate,up}_proj/kernel      (L, embed, mlp);  layers/mlp/down_proj/kernel (L, mlp, embed)
  norm/scale                            (embed,)
  lm_head/kernel                        (embed, vocab)

W_pack is stored grouped by KV head: slot j < q_per_kv of group g is query head
g * q_per_kv + j, slot q_per_kv is that group's key, q_per_kv + 1 its value. The release's
row order [q | k | v] is a permutation of this (convert/qwen2.py); grouping keeps every
tensor-parallel shard's queries next to the keys/values they read.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from omni_jax.layers import Dense, Embed, RMSNorm, apply_rotary, dot_product_attention, dtype_of
from omni_jax.layers.activations import swiglu
from omni_jax.layers.rotary import rotary_cos_sin
from omni_jax.models.config import LayerStackConfig
from omni_jax.models.remat import remat_policy

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Qwen2Config(LayerStackConfig):
    WHERE: ClassVar[str] = "config.model.llm"

    vocab_size: int = 152064
    hidden_size: int = 3584
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    head_dim: int = 128
    intermediate_size: int = 18944
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    qkv_bias: bool = True
    padding_idx: int | None = 0  # embedding row that receives no gradient (release: 0)
    initializer_range: float = 0.02
    # the training loss on the LM head (omni_jax/tasks/losses.py): sequence / vocabulary tiling
    # (0 = off) so the (tokens x vocab) fp32 logits are never materialised, and a z-loss weight
    loss_token_chunk: int = 0
    loss_vocab_chunk: int = 0
    z_loss: float = 0.0
    # under a mesh, the loss per shard (gather the kernel once, reduce its gradient once; losses.py)
    # instead of leaving the tiled loss to the SPMD partitioner; False saves the gathered kernel and
    # its gradient accumulator (2-3 GiB per chip at 7B) where HBM is tight (the v5e-32 plans)
    loss_per_shard: bool = True

    def validate(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def num_params(self) -> int:
        d, f, v, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        qkv = d * (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        qkv_b = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.qkv_bias else 0
        per_layer = qkv + qkv_b + self.num_heads * self.head_dim * d + 3 * d * f + 2 * d
        return L * per_layer + 2 * v * d + d


class Attention(nn.Module):
    cfg: Qwen2Config

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids, kv_cache=None, cache_index=None):
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        init = nn.initializers.normal(cfg.initializer_range)
        qkv = Dense(
            (cfg.num_kv_heads, cfg.q_per_kv + 2, cfg.head_dim),
            kernel_axes=("embed", "kv_heads", "qkv", "head_dim"),
            use_bias=cfg.qkv_bias, dtype=dtype, param_dtype=pdtype, kernel_init=init, name="W_pack",
        )(x)
        b, t = x.shape[:2]
        q = qkv[:, :, :, : cfg.q_per_kv].reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = qkv[:, :, :, cfg.q_per_kv]
        v = qkv[:, :, :, cfg.q_per_kv + 1]
        q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", "activation_head_dim"))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        new_cache = None
        q_offset = 0
        kv_seg = segment_ids
        if kv_cache is not None:
            # Write this chunk's keys/values at [cache_index, cache_index + t) and attend to
            # the whole (static-size) cache; unwritten slots carry segment id 0.
            ck, cv, cseg = kv_cache["k"], kv_cache["v"], kv_cache["segment_ids"]
            ck = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_index, axis=1)
            cv = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_index, axis=1)
            cseg = jax.lax.dynamic_update_slice_in_dim(cseg, segment_ids.astype(cseg.dtype), cache_index, axis=1)
            new_cache = {"k": ck, "v": cv, "segment_ids": cseg}
            k, v, kv_seg, q_offset = ck.astype(dtype), cv.astype(dtype), cseg, cache_index

        # keys/values are all-gathered over `context`, except for ring attention (they circulate)
        kv_len = "activation_length" if cfg.attention_impl == "ring" and kv_cache is None else "activation_kv_length"
        k = nn.with_logical_constraint(k, ("activation_batch", kv_len, "activation_kv_heads", "activation_head_dim"))
        v = nn.with_logical_constraint(v, ("activation_batch", kv_len, "activation_kv_heads", "activation_head_dim"))
        out = dot_product_attention(
            q, k, v, q_segment_ids=segment_ids, kv_segment_ids=kv_seg, causal=True,
            q_offset=q_offset, impl=cfg.attention_impl, block_size=cfg.attention_block_size,
        )
        out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", "activation_head_dim"))
        y = Dense(
            cfg.hidden_size, kernel_axes=("heads", "head_dim", "embed"), in_dims=2,
            dtype=dtype, param_dtype=pdtype, kernel_init=init, name="o_proj",
        )(out)
        return y, new_cache


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    cfg: Qwen2Config

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                  kernel_init=nn.initializers.normal(cfg.initializer_range))
        gate = Dense(cfg.intermediate_size, kernel_axes=("embed", "mlp"), name="gate_proj", **kw)(x)
        up = Dense(cfg.intermediate_size, kernel_axes=("embed", "mlp"), name="up_proj", **kw)(x)
        h = nn.with_logical_constraint(swiglu(gate, up), ("activation_batch", "activation_length", "activation_mlp"))
        return Dense(cfg.hidden_size, kernel_axes=("mlp", "embed"), name="down_proj", **kw)(h)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)); then x + mlp(norm(x)). Scan-compatible signature."""

    cfg: Qwen2Config

    @nn.compact
    def __call__(self, x, layer_cache, cos, sin, segment_ids, cache_index):
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="input_layernorm")(x)
        a, new_cache = Attention(cfg, name="self_attn")(h, cos, sin, segment_ids, layer_cache, cache_index)
        x = x + a
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="post_attention_layernorm")(x)
        x = x + MLP(cfg, name="mlp")(h)
        return x, new_cache


class Qwen2LM(nn.Module):
    """Embedding -> scanned decoder layers -> final norm -> untied lm_head.

    Methods (call through `apply(..., method=...)` or as a submodule):
      embed(ids)                           token embeddings (b, t, embed)
      hidden(x, positions, segment_ids, kv_cache=None, cache_index=None) -> (normed hidden, cache)
      logits(hidden)                       fp32 logits (b, t, vocab)
      __call__(ids, positions, segment_ids) -> logits
    """

    cfg: Qwen2Config

    def setup(self):
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        self.embed_tokens = Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
            embedding_init=nn.initializers.normal(cfg.initializer_range), padding_idx=cfg.padding_idx,
            shard_lookup=True,
        )
        layer = nn.remat(DecoderLayer, policy=remat_policy(cfg.remat_policy), prevent_cse=False) \
            if cfg.remat_policy != "none" else DecoderLayer
        self.layers = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            out_axes=0,
            length=cfg.num_layers,
            unroll=cfg.scan_unroll,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg)
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype, pdtype)
        self.lm_head = Dense(
            cfg.vocab_size, kernel_axes=("embed", "vocab"), dtype=dtype, param_dtype=pdtype,
            kernel_init=nn.initializers.normal(cfg.initializer_range),
        )

    def embed(self, ids: Array) -> Array:
        x = self.embed_tokens(ids)
        return nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))

    def hidden(self, x: Array, positions: Array, segment_ids: Array,
               kv_cache: Mapping[str, Array] | None = None, cache_index: Array | int | None = None):
        cos, sin = rotary_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        x = x.astype(dtype_of(self.cfg.dtype))  # the scan carry is in the compute dtype
        x, new_cache = self.layers(x, kv_cache, cos, sin, segment_ids, cache_index)
        return self.norm(x), new_cache

    def logits(self, h: Array) -> Array:
        logits = self.lm_head(h).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))

    def __call__(self, ids: Array, positions: Array, segment_ids: Array) -> Array:
        h, _ = self.hidden(self.embed(ids), positions, segment_ids)
        return self.logits(h)


def init_kv_cache(cfg: Qwen2Config, batch: int, max_len: int, dtype: Any = None) -> dict[str, Array]:
    """A zeroed cache for `max_len` positions, stacked over layers (scan axis 0)."""
    dtype = dtype_of(cfg.dtype) if dtype is None else dtype
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "segment_ids": jnp.zeros((cfg.num_layers, batch, max_len), jnp.int32),
    }
