"""The Whisper audio encoder (ARCHITECTURE.md 1.3) and the audio building blocks it shares.

Numerical reference: transformers' WhisperEncoder (eager attention); names follow it (and the
release's `audio_tokenizer.audio_model.*`, which uses the same names plus a stored
`positional_embedding` sinusoid buffer). Also here, reused by the audio decoder and available to
the other audio branches:

  sinusoids(length, channels)  the fixed Whisper position table (float32, numpy; also the
                               flow-matching prenet's stored table)
  AudioTransformerLayer        the release's OmniWhisperTransformerLayer = transformers'
                               WhisperEncoderLayer: pre-LN, attention (q/v/out biased, k without
                               bias), exact-GELU MLP; `causal` for the audio decoder
  scanned_layers               those layers stacked by nn.scan (optional remat)
  length_mask(lengths, T)      (B, T) bool, True at valid frames

Masking (one clip per row, static shapes): mel frames at and beyond the valid length are zeroed,
the conv1 output is zeroed there too (so conv2 sees the zero padding an unpadded clip would), and
attention runs with segment ids (valid = 1, padding = 0): every clip's valid frames equal the
release's result for that clip alone (it packs clips and uses flash-attention varlen). Encoder
frames beyond the valid length are returned as zeros.

Parameter tree of WhisperEncoder (layers stacked on a leading `layers` axis):
  conv1/kernel (3, n_mels, d) conv1/bias;  conv2/kernel (3, d, d) conv2/bias
  layers/self_attn/{q,k,v}_proj/kernel (L, d, heads, head_dim), {q,v}_proj/bias (L, heads, head_dim)
  layers/self_attn/out_proj/kernel (L, heads, head_dim, d), bias (L, d)
  layers/{self_attn_layer_norm,final_layer_norm}/{scale,bias} (L, d)
  layers/fc1/kernel (L, d, ffn), bias;  layers/fc2/kernel (L, ffn, d), bias
  layer_norm/{scale,bias} (d,)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from omni_jax.layers import Dense, LayerNorm, RMSNorm, dot_product_attention, dtype_of
from omni_jax.layers.conv1d import Conv1d
from omni_jax.models.config import LayerStackConfig
from omni_jax.models.remat import remat_policy

Array = jax.Array

ACT_AXES = ("activation_batch", "activation_length", "activation_embed")


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's sinusoid table (length, channels): [sin | cos] halves, float32.

    Follows transformers' / the release's float32 arithmetic (argument and time products in
    float32); agrees with torch's table to ~1e-7 for short tables and ~2e-4 at 3000 positions
    (torch's float32 exp is not correctly rounded).
    """
    if channels % 2:
        raise ValueError(f"sinusoid positions need an even number of channels, got {channels}")
    inc = np.float32(np.log(max_timescale) / (channels // 2 - 1))
    arg = -inc * np.arange(channels // 2, dtype=np.float32)
    inv = np.exp(arg.astype(np.float64)).astype(np.float32)
    scaled = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def length_mask(lengths: Array, size: int) -> Array:
    """(B,) valid lengths -> (B, size) bool."""
    return jnp.arange(size)[None, :] < jnp.asarray(lengths)[:, None]


@dataclasses.dataclass(frozen=True)
class AudioLayerSpec:
    """Hyper-parameters of one AudioTransformerLayer (built from the encoder/decoder configs)."""

    d_model: int
    num_heads: int
    ffn_dim: int
    causal: bool = False
    norm: str = "layernorm"  # "layernorm" (Whisper) | "rmsnorm" (the flow-matching prenet)
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "xla"
    attention_block_size: int = 512

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


def _norm(spec: AudioLayerSpec, name: str):
    """The layer's norm as a direct child named `name` (LayerNorm: scale+bias; RMSNorm: scale)."""
    dt, pdt = dtype_of(spec.dtype), dtype_of(spec.param_dtype)
    if spec.norm == "layernorm":
        return LayerNorm(spec.norm_eps, dtype=dt, param_dtype=pdt, name=name)
    if spec.norm == "rmsnorm":
        return RMSNorm(spec.norm_eps, dtype=dt, param_dtype=pdt, name=name)
    raise ValueError(f"unknown norm {spec.norm!r}; use 'layernorm' or 'rmsnorm'")


class AudioSelfAttention(nn.Module):
    spec: AudioLayerSpec

    @nn.compact
    def __call__(self, x: Array, segment_ids: Array) -> Array:
        s = self.spec
        kw = dict(dtype=dtype_of(s.dtype), param_dtype=dtype_of(s.param_dtype),
                  kernel_init=nn.initializers.normal(s.initializer_range))
        proj = lambda name, bias: Dense((s.num_heads, s.head_dim), ("embed", "heads", "head_dim"),
                                        use_bias=bias, name=name, **kw)(x)
        q, k, v = proj("q_proj", True), proj("k_proj", False), proj("v_proj", True)
        qkv_axes = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
        q = nn.with_logical_constraint(q, qkv_axes)
        out = dot_product_attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                                    causal=s.causal, impl=s.attention_impl, block_size=s.attention_block_size)
        out = nn.with_logical_constraint(out, qkv_axes)
        return Dense(s.d_model, ("heads", "head_dim", "embed"), in_dims=2, use_bias=True, name="out_proj", **kw)(out)


class AudioTransformerLayer(nn.Module):
    """x + attn(norm(x)); then x + fc2(gelu(fc1(norm(x)))). Scan-compatible: (x, seg) -> (x, None)."""

    spec: AudioLayerSpec

    @nn.compact
    def __call__(self, x: Array, segment_ids: Array):
        s = self.spec
        kw = dict(dtype=dtype_of(s.dtype), param_dtype=dtype_of(s.param_dtype),
                  kernel_init=nn.initializers.normal(s.initializer_range))
        x = nn.with_logical_constraint(x, ACT_AXES)
        h = _norm(s, "self_attn_layer_norm")(x)
        x = x + AudioSelfAttention(s, name="self_attn")(h, segment_ids)
        h = _norm(s, "final_layer_norm")(x)
        h = Dense(s.ffn_dim, ("embed", "mlp"), use_bias=True, name="fc1", **kw)(h)
        h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=False),
                                       ("activation_batch", "activation_length", "activation_mlp"))
        x = x + Dense(s.d_model, ("mlp", "embed"), use_bias=True, name="fc2", **kw)(h)
        return x, None


def scanned_layers(spec: AudioLayerSpec, num_layers: int, *, remat: str = "none", unroll: int = 1,
                   name: str | None = "layers"):
    """`num_layers` AudioTransformerLayers under nn.scan (params stacked on axis 0, logical axis
    'layers'), as a submodule named `name` (None inside `setup`, where the attribute names it);
    call it as `x, _ = stack(x, segment_ids)`."""
    layer = AudioTransformerLayer
    if remat != "none":
        layer = nn.remat(layer, policy=remat_policy(remat), prevent_cse=False)
    return nn.scan(
        layer, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(nn.broadcast,), length=num_layers, unroll=unroll,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(spec, **({} if name is None else {"name": name}))


@dataclasses.dataclass(frozen=True)
class WhisperEncoderConfig(LayerStackConfig):
    WHERE: ClassVar[str] = "config.model.audio_encoder"

    num_mel_bins: int = 128
    d_model: int = 1280
    num_layers: int = 32
    num_heads: int = 20
    ffn_dim: int = 5120
    max_source_positions: int = 1500  # 30 s at 50 Hz: the release's `positional_embedding` rows
    kernel_size: int = 3
    stride: int = 2
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def validate(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"audio encoder: d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.kernel_size != 3:
            raise ValueError("audio encoder: Whisper's conv stem has kernel_size 3 (padding 1)")

    def layer_spec(self) -> AudioLayerSpec:
        return AudioLayerSpec(self.d_model, self.num_heads, self.ffn_dim, causal=False, norm_eps=self.layer_norm_eps,
                              initializer_range=self.initializer_range, dtype=self.dtype, param_dtype=self.param_dtype,
                              attention_impl=self.attention_impl, attention_block_size=self.attention_block_size)

    def output_lengths(self, mel_lengths):
        """Encoder frames of `mel_lengths` mel frames: (L - 1) // stride + 1, 0 for 0 (works on ints and arrays)."""
        m = mel_lengths
        out = (m - 1) // self.stride + 1
        return jnp.where(m > 0, out, 0) if isinstance(m, jax.Array) else (out if m > 0 else 0)


class WhisperEncoder(nn.Module):
    """mel (B, n_mels, T) + valid mel frames (B,) -> (hidden (B, T', d), encoder lengths (B,)).

    T' = (T - 1) // 2 + 1 must not exceed `max_source_positions` (1500 for 30 s buffers).
    """

    cfg: WhisperEncoderConfig

    @nn.compact
    def __call__(self, mel: Array, mel_lengths: Array) -> tuple[Array, Array]:
        cfg = self.cfg
        dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        if mel.ndim != 3 or mel.shape[1] != cfg.num_mel_bins:
            raise ValueError(f"audio encoder expects mel features (batch, {cfg.num_mel_bins}, frames), got {mel.shape}")
        t_mel = mel.shape[2]
        t_enc = (t_mel - 1) // cfg.stride + 1
        if t_enc > cfg.max_source_positions:
            raise ValueError(
                f"audio encoder: {t_mel} mel frames give {t_enc} encoder frames, more than the "
                f"{cfg.max_source_positions} positions of the table (config max_source_positions); "
                "split the audio into 30 s chunks")
        mel_lengths = jnp.asarray(mel_lengths, jnp.int32)
        init = nn.initializers.normal(cfg.initializer_range)
        x = jnp.swapaxes(mel, 1, 2)  # (B, T, n_mels)
        valid_mel = length_mask(mel_lengths, t_mel)[..., None]
        x = jnp.where(valid_mel, x, 0).astype(dt)
        x = Conv1d(cfg.d_model, 3, kernel_axes=("conv_window", "channels", "embed"), padding=(1, 1), dtype=dt,
                   param_dtype=pdt, kernel_init=init, name="conv1")(x)
        x = jnp.where(valid_mel, jax.nn.gelu(x, approximate=False), 0)
        x = Conv1d(cfg.d_model, 3, kernel_axes=("conv_window", "embed", "mlp"), stride=cfg.stride, padding=(1, 1), dtype=dt,
                   param_dtype=pdt, kernel_init=init, name="conv2")(x)
        x = jax.nn.gelu(x, approximate=False)
        pos = jnp.asarray(sinusoids(cfg.max_source_positions, cfg.d_model)[:t_enc])
        x = (x.astype(jnp.float32) + pos).astype(dt)
        x = nn.with_logical_constraint(x, ACT_AXES)
        lengths = cfg.output_lengths(mel_lengths)
        valid = length_mask(lengths, t_enc)
        x, _ = scanned_layers(cfg.layer_spec(), cfg.num_layers, remat=cfg.remat_policy,
                              unroll=cfg.scan_unroll)(x, valid.astype(jnp.int32))
        x = LayerNorm(cfg.layer_norm_eps, dtype=dt, param_dtype=pdt, name="layer_norm")(x)
        x = jnp.where(valid[..., None], x, 0)
        return nn.with_logical_constraint(x, ACT_AXES), lengths
