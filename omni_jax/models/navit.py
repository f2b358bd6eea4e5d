"""The Qwen2-VL vision transformer ("NaViT") and its PatchMerger bridge (ARCHITECTURE.md 1.2).

Numerical reference: transformers' `Qwen2VisionTransformerPretrainedModel` (the encoder is
its `patch_embed` + `blocks`, the bridge its `merger`); the release splits the same tensors
into `model.visual_model.*` and `model.visual_bridge_model.*` (convert/vision.py).

Input layout (one vision row per text row, static shapes; built on the host by
`omni_jax.data.vision_preprocessing.pack_vision_batch`):

  patches      (B, P, 1176) float   flattened 3-D patches (c, t, y, x) = (3, 2, 14, 14), every
                                    image/frame in 2x2 merge-window order (the 4 patches of a
                                    merge window are consecutive), images packed one after the
                                    other from position 0, zero padding at the end of the row.
  positions    (B, P, 2) int32      (h, w) patch coordinates inside its image, for the 2-D rope.
  segment_ids  (B, P) int32         1, 2, 3, ... per image or frame (per temporal patch) in the
                                    row, 0 for padding. Attention is block-diagonal over them.

  P must be a multiple of 4 (merge windows). Every image holds h*w patches with h, w even,
  so windows never straddle two images when images are packed from position 0.

Output:
  NaViT(cfg)(patches, positions, segment_ids)  -> hidden (B, P, embed_dim)   (param tree `visual`)
  PatchMerger(cfg)(hidden)                     -> merged (B, P/4, out_hidden_size)  (`visual_bridge`)
  merged_segment_ids(segment_ids)              -> (B, P/4): the image/frame of each merged token

Parameters (blocks stacked on a leading `layers` axis by nn.scan):
  visual/patch_embed/kernel          (1176, embed)          the bias-free Conv3d as a matmul
  visual/blocks/norm1/{scale,bias}   (L, embed)
  visual/blocks/attn/qkv/kernel      (L, embed, 3, heads, head_dim); bias (L, 3, heads, head_dim)
  visual/blocks/attn/proj/kernel     (L, heads, head_dim, embed); bias (L, embed)
  visual/blocks/norm2/{scale,bias}   (L, embed)
  visual/blocks/mlp/fc1/kernel       (L, embed, mlp); fc2 (L, mlp, embed); with biases
  visual_bridge/ln_q/{scale,bias}    (embed,)
  visual_bridge/fc1/kernel           (4 * embed, 4 * embed); fc2 (4 * embed, out_hidden_size)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from omni_jax.layers import Dense, LayerNorm, apply_rotary, dot_product_attention, dtype_of
from omni_jax.layers.rotary import inverse_frequencies
from omni_jax.models.config import LayerStackConfig
from omni_jax.models.remat import remat_policy

Array = jax.Array

_ACTS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def activation(name: str):
    """transformers' ACT2FN names -> jax functions (a clear error for unknown names)."""
    try:
        return _ACTS[name]
    except KeyError:
        raise ValueError(f"unknown hidden_act {name!r}; use one of {sorted(_ACTS)}") from None


@dataclasses.dataclass(frozen=True)
class NaViTConfig(LayerStackConfig):
    """Encoder + bridge hyper-parameters; defaults are the release's (Qwen2-VL-7B vision)."""

    WHERE: ClassVar[str] = "config.model.visual"

    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    mlp_dim: int = 5120  # transformers: embed_dim * mlp_ratio
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    rope_theta: float = 1e4
    layer_norm_eps: float = 1e-6
    hidden_act: str = "quick_gelu"
    out_hidden_size: int = 3584  # the LLM width the bridge projects to
    initializer_range: float = 0.02

    def validate(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be a multiple of num_heads={self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(
                f"head_dim={self.head_dim} must be a multiple of 4: the 2-D rope gives h and w "
                "head_dim/4 frequencies each")
        activation(self.hidden_act)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size ** 2

    def num_params(self) -> tuple[int, int]:
        """(encoder, bridge) parameter counts."""
        e, f, L = self.embed_dim, self.mlp_dim, self.depth
        block = 4 * e + (3 * e * e + 3 * e) + (e * e + e) + (e * f + f) + (f * e + e)
        m = e * self.merge_unit
        return self.patch_dim * e + L * block, 2 * e + m * m + m + m * self.out_hidden_size + self.out_hidden_size


def patch_positions(grid: tuple[int, int, int], merge: int = 2) -> np.ndarray:
    """(t*h*w, 2) int32 (h, w) coordinates of a grid's patches in merge-window order (the order
    the data pipeline's `patchify` emits), repeated for each temporal patch: transformers'
    get_vision_position_ids."""
    t, h, w = (int(g) for g in grid)
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    hh = hh.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)
    ww = ww.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)
    return np.tile(np.stack([hh, ww], -1), (t, 1)).astype(np.int32)


def rotary_2d(positions: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
    """(..., 2) (h, w) positions -> cos, sin (..., head_dim) in fp32.

    transformers' Qwen2VLVisionRotaryEmbedding: head_dim/4 frequencies 1/theta^(2i/(head_dim/2)),
    angles [h*f | w*f], duplicated for the rotate-half layout.
    """
    inv = inverse_frequencies(head_dim // 2, theta)
    pos = positions.astype(jnp.float32)
    angles = jnp.concatenate([pos[..., 0:1] * inv, pos[..., 1:2] * inv], axis=-1)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def merged_segment_ids(segment_ids: Array, merge_unit: int = 4) -> Array:
    """(B, P) patch segment ids -> (B, P / merge_unit): the image/frame of each merged token."""
    return segment_ids[:, ::merge_unit]


_ACT_AXES = ("activation_batch", "activation_length", "activation_embed")


class VisionAttention(nn.Module):
    cfg: NaViTConfig

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                  kernel_init=nn.initializers.normal(cfg.initializer_range))
        qkv = Dense((3, cfg.num_heads, cfg.head_dim), kernel_axes=("embed", "qkv", "heads", "head_dim"),
                    use_bias=True, name="qkv", **kw)(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        heads = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
        q = nn.with_logical_constraint(apply_rotary(q, cos, sin), heads)
        k = apply_rotary(k, cos, sin)
        kv_axes = ("activation_batch", "activation_kv_length", "activation_kv_heads", "activation_head_dim")
        k = nn.with_logical_constraint(k, kv_axes)
        v = nn.with_logical_constraint(v, kv_axes)
        out = dot_product_attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                                    impl=cfg.attention_impl, block_size=cfg.attention_block_size)
        out = nn.with_logical_constraint(out, heads)
        return Dense(cfg.embed_dim, kernel_axes=("heads", "head_dim", "embed"), in_dims=2, use_bias=True,
                     name="proj", **kw)(out)


class VisionMLP(nn.Module):
    cfg: NaViTConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                  kernel_init=nn.initializers.normal(cfg.initializer_range), use_bias=True)
        h = activation(cfg.hidden_act)(Dense(cfg.mlp_dim, kernel_axes=("embed", "mlp"), name="fc1", **kw)(x))
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        return Dense(cfg.embed_dim, kernel_axes=("mlp", "embed"), name="fc2", **kw)(h)


class VisionBlock(nn.Module):
    """Pre-norm ViT block; scan-compatible (carry, broadcast args) -> (carry, None)."""

    cfg: NaViTConfig

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids):
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        x = nn.with_logical_constraint(x, _ACT_AXES)
        h = LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=pdtype, name="norm1")(x)
        x = x + VisionAttention(cfg, name="attn")(h, cos, sin, segment_ids)
        h = LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=pdtype, name="norm2")(x)
        x = x + VisionMLP(cfg, name="mlp")(h)
        return x, None


class NaViT(nn.Module):
    """Patch embedding -> `depth` scanned blocks. Returns (B, P, embed_dim); see the module doc."""

    cfg: NaViTConfig

    @nn.compact
    def __call__(self, patches: Array, positions: Array, segment_ids: Array) -> Array:
        cfg = self.cfg
        if patches.shape[-1] != cfg.patch_dim:
            raise ValueError(
                f"NaViT: patches have {patches.shape[-1]} features per patch, expected "
                f"{cfg.patch_dim} = in_channels * temporal_patch_size * patch_size^2")
        if patches.shape[1] % cfg.merge_unit:
            raise ValueError(
                f"NaViT: {patches.shape[1]} patches per row is not a multiple of the merge window "
                f"{cfg.merge_unit}; pad the row (pack_vision_batch does)")
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        x = Dense(cfg.embed_dim, kernel_axes=("channels", "embed"), dtype=dtype, param_dtype=pdtype,
                  kernel_init=nn.initializers.normal(cfg.initializer_range), name="patch_embed")(patches)
        x = nn.with_logical_constraint(x, _ACT_AXES)
        cos, sin = rotary_2d(positions, cfg.head_dim, cfg.rope_theta)
        block = nn.remat(VisionBlock, policy=remat_policy(cfg.remat_policy), prevent_cse=False) \
            if cfg.remat_policy != "none" else VisionBlock
        x, _ = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=cfg.depth,
            unroll=cfg.scan_unroll,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, name="blocks")(x, cos, sin, segment_ids)
        return nn.with_logical_constraint(x, _ACT_AXES)


class PatchMerger(nn.Module):
    """The visual bridge: LayerNorm -> 2x2 windows to 4*embed -> Linear -> GELU -> Linear."""

    cfg: NaViTConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        cfg = self.cfg
        b, p, e = hidden.shape
        if p % cfg.merge_unit:
            raise ValueError(f"PatchMerger: {p} patches per row is not a multiple of {cfg.merge_unit}")
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                  kernel_init=nn.initializers.normal(cfg.initializer_range), use_bias=True)
        x = LayerNorm(1e-6, dtype=kw["dtype"], param_dtype=kw["param_dtype"], name="ln_q")(hidden)
        x = x.reshape(b, p // cfg.merge_unit, cfg.merge_unit * e)
        x = Dense(cfg.merge_unit * e, kernel_axes=("embed", "mlp"), name="fc1", **kw)(x)
        x = nn.with_logical_constraint(jax.nn.gelu(x, approximate=False),
                                       ("activation_batch", "activation_length", "activation_mlp"))
        x = Dense(cfg.out_hidden_size, kernel_axes=("mlp", "embed"), name="fc2", **kw)(x)
        return nn.with_logical_constraint(x, _ACT_AXES)


class VisionTower(nn.Module):
    """Encoder + bridge under the omni model's top-level names (`visual`, `visual_bridge`).

    The omni model holds the two as its own submodules with these names; this wrapper is
    the same tree on its own (tests, benchmarks, the vision-only stages).
    """

    cfg: NaViTConfig

    def setup(self):
        self.visual = NaViT(self.cfg)
        self.visual_bridge = PatchMerger(self.cfg)

    def __call__(self, patches: Array, positions: Array, segment_ids: Array) -> Array:
        """-> merged tokens (B, P/4, out_hidden_size); their segments: merged_segment_ids."""
        return self.visual_bridge(self.visual(patches, positions, segment_ids))

    def encode(self, patches: Array, positions: Array, segment_ids: Array) -> Array:
        return self.visual(patches, positions, segment_ids)
