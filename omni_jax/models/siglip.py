"""SigLIP vision encoder (Baichuan-Omni v1's image encoder, ARCHITECTURE.md 2).

Numerical reference: transformers' `SiglipVisionModel` (so400m/14 at 384 px by default:
width 1152, 27 layers, 16 heads, MLP 4304, 27 x 27 = 729 patch tokens). Pre-norm ViT with a
learned position table, gelu (tanh approximation), a final `post_layernorm`, and optionally
the attention-pooling head (`use_head`; v1 feeds the 729 patch tokens, not the pooled
vector, to its projector, so the default builds the encoder without it).

Input: pixels (..., H, W, 3) channels-last, already normalised (SigLIP: mean 0.5, std 0.5;
omni_jax/data/anyres.py), H = W = image_size. Every leading axis is batch-like (e.g. (B,
tiles)); tiles never attend to each other. As in the Conv2d reference, the patch grid is
image_size // patch_size and trailing pixels that do not fill a patch are dropped (384 px
-> 27 patches of 14 px, the last 6 pixel rows/columns are unused).

Output: (last_hidden_state (..., N, hidden), pooled (..., hidden) or None).

Parameters (layers stacked on the `layers` axis):
  embeddings/patch_embedding/{kernel (3*14*14, D), bias}; embeddings/position_embedding (N, D)
  layers/layer_norm1, layers/self_attn/{q,k,v}_proj (D, H, hd), out_proj (H, hd, D),
  layers/layer_norm2, layers/mlp/{fc1, fc2}; post_layernorm;
  head/{probe (D,), attention/in_proj (D, 3, H, hd), attention/out_proj, layernorm, mlp}
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from omni_jax.layers import Dense, LayerNorm, dot_product_attention, dtype_of
from omni_jax.models.config import LayerStackConfig
from omni_jax.models.navit import activation
from omni_jax.models.remat import remat_policy

Array = jax.Array
_ACT_AXES = ("activation_batch", "activation_length", "activation_embed")
_HEAD_AXES = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")


@dataclasses.dataclass(frozen=True)
class SiglipConfig(LayerStackConfig):
    WHERE: ClassVar[str] = "config.model.siglip"

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27
    num_heads: int = 16
    num_channels: int = 3
    image_size: int = 384
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    use_head: bool = False
    initializer_range: float = 0.02

    def validate(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size={self.image_size} is smaller than patch_size={self.patch_size}")
        activation(self.hidden_act)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2


def _dense_kw(cfg: SiglipConfig) -> dict:
    """The biased Dense layers' dtypes and initialiser."""
    return dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), use_bias=True,
                kernel_init=nn.initializers.normal(cfg.initializer_range))


class SiglipAttention(nn.Module):
    cfg: SiglipConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        kw = _dense_kw(cfg)
        proj = lambda n: Dense((cfg.num_heads, cfg.head_dim), kernel_axes=("embed", "heads", "head_dim"),
                               name=f"{n}_proj", **kw)(x)
        q = nn.with_logical_constraint(proj("q"), _HEAD_AXES)
        kv_axes = ("activation_batch", "activation_kv_length", "activation_kv_heads", "activation_head_dim")
        k = nn.with_logical_constraint(proj("k"), kv_axes)
        v = nn.with_logical_constraint(proj("v"), kv_axes)
        out = dot_product_attention(q, k, v, impl=cfg.attention_impl, block_size=cfg.attention_block_size)
        out = nn.with_logical_constraint(out, _HEAD_AXES)
        return Dense(cfg.hidden_size, kernel_axes=("heads", "head_dim", "embed"), in_dims=2,
                     name="out_proj", **kw)(out)


class SiglipMLP(nn.Module):
    cfg: SiglipConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        kw = _dense_kw(cfg)
        h = activation(cfg.hidden_act)(Dense(cfg.intermediate_size, kernel_axes=("embed", "mlp"), name="fc1", **kw)(x))
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        return Dense(cfg.hidden_size, kernel_axes=("mlp", "embed"), name="fc2", **kw)(h)


class SiglipEncoderLayer(nn.Module):
    cfg: SiglipConfig

    @nn.compact
    def __call__(self, x, _):
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        x = nn.with_logical_constraint(x, _ACT_AXES)
        x = x + SiglipAttention(cfg, name="self_attn")(
            LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=pdtype, name="layer_norm1")(x))
        x = x + SiglipMLP(cfg, name="mlp")(
            LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=pdtype, name="layer_norm2")(x))
        return x, None


class SiglipEmbeddings(nn.Module):
    cfg: SiglipConfig

    @nn.compact
    def __call__(self, pixels):
        cfg = self.cfg
        n, hh, ww, c = pixels.shape
        g, p = cfg.grid, cfg.patch_size
        x = pixels[:, : g * p, : g * p].reshape(n, g, p, g, p, c).transpose(0, 1, 3, 5, 2, 4)
        x = x.reshape(n, g * g, c * p * p)  # (c, y, x) per patch: the Conv2d weight's layout
        x = Dense(cfg.hidden_size, kernel_axes=("channels", "embed"), use_bias=True, dtype=dtype_of(cfg.dtype),
                  param_dtype=dtype_of(cfg.param_dtype),
                  kernel_init=nn.initializers.normal(cfg.initializer_range), name="patch_embedding")(x)
        pos = self.param("position_embedding",
                         nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range),
                                                      ("positions", "embed")),
                         (cfg.num_patches, cfg.hidden_size), dtype_of(cfg.param_dtype))
        return x + pos.astype(x.dtype)


class SiglipHead(nn.Module):
    """Multi-head attention pooling (torch nn.MultiheadAttention with one learned probe)."""

    cfg: SiglipConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        probe = self.param("probe", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), ("embed",)), (cfg.hidden_size,), pdtype)
        y = _PoolingAttention(cfg, name="attention")(probe.astype(dtype), x)  # (n, 1, d)
        y = y + SiglipMLP(cfg, name="mlp")(
            LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=pdtype, name="layernorm")(y))
        return y[:, 0]


class _FusedInProj(nn.Module):
    """The (d, 3, heads, head_dim) q/k/v projection of nn.MultiheadAttention, as raw params:
    the probe only needs the q slice and the tokens only the k and v slices."""

    cfg: SiglipConfig

    @nn.compact
    def __call__(self):
        cfg = self.cfg
        shape = (3, cfg.num_heads, cfg.head_dim)
        pdtype = dtype_of(cfg.param_dtype)
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), ("embed", "qkv", "heads", "head_dim")),
            (cfg.hidden_size,) + shape, pdtype)
        bias = self.param("bias", nn.with_logical_partitioning(
            nn.initializers.zeros, ("qkv", "heads", "head_dim")), shape, pdtype)
        return kernel, bias


class _PoolingAttention(nn.Module):
    cfg: SiglipConfig

    @nn.compact
    def __call__(self, probe, x):
        cfg = self.cfg
        dtype = dtype_of(cfg.dtype)
        w, b = (a.astype(dtype) for a in _FusedInProj(cfg, name="in_proj")())
        x = x.astype(dtype)
        q = jnp.einsum("d,dhk->hk", probe, w[:, 0]) + b[0]
        q = jnp.broadcast_to(q[None, None], (x.shape[0], 1, cfg.num_heads, cfg.head_dim))
        k = jnp.einsum("nld,dhk->nlhk", x, w[:, 1]) + b[1]
        v = jnp.einsum("nld,dhk->nlhk", x, w[:, 2]) + b[2]
        out = dot_product_attention(q, k, v)
        return Dense(cfg.hidden_size, kernel_axes=("heads", "head_dim", "embed"), in_dims=2, use_bias=True,
                     dtype=dtype, param_dtype=dtype_of(cfg.param_dtype),
                     kernel_init=nn.initializers.normal(cfg.initializer_range), name="out_proj")(out)


class Siglip(nn.Module):
    """SiglipVisionModel: embeddings -> scanned encoder layers -> post_layernorm [-> head]."""

    cfg: SiglipConfig

    @nn.compact
    def __call__(self, pixels: Array) -> tuple[Array, Array | None]:
        cfg = self.cfg
        *lead, hh, ww, c = pixels.shape
        if (hh, ww) != (cfg.image_size, cfg.image_size) or c != cfg.num_channels:
            raise ValueError(
                f"Siglip: pixels (..., H, W, C) = (..., {hh}, {ww}, {c}), expected "
                f"(..., {cfg.image_size}, {cfg.image_size}, {cfg.num_channels}); resize/tile the images "
                "to config.image_size first (omni_jax/data/anyres.py)")
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        x = SiglipEmbeddings(cfg, name="embeddings")(pixels.reshape(-1, hh, ww, c).astype(dtype))
        layer = nn.remat(SiglipEncoderLayer, policy=remat_policy(cfg.remat_policy), prevent_cse=False) \
            if cfg.remat_policy != "none" else SiglipEncoderLayer
        x, _ = nn.scan(
            layer, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=(nn.broadcast,),
            length=cfg.num_layers, unroll=cfg.scan_unroll, metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, name="layers")(x, None)
        x = LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=pdtype, name="post_layernorm")(x)
        x = nn.with_logical_constraint(x, _ACT_AXES)
        pooled = SiglipHead(cfg, name="head")(x) if cfg.use_head else None
        x = x.reshape(*lead, cfg.num_patches, cfg.hidden_size)
        if pooled is not None:
            pooled = pooled.reshape(*lead, cfg.hidden_size)
        return x, pooled
