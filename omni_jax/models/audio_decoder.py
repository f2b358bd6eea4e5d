"""The audio decoder: 12.5 Hz decoder embeddings -> coarse and refined mel (ARCHITECTURE.md 1.4).

Numerical reference: the release's `OmniAudioDecoder` (audio_modeling_omni.py; re-typed from
torch.nn primitives in tests/audio_reference.py, names `audio_tokenizer.audio_decoder.*`):

  dconv1   ConvTranspose1d(d, d, k3, stride 4) + GroupNorm(1, d)            12.5 Hz -> 50 Hz
           (4L - 1 frames: with k3 < stride 4 every 4th frame is the bias alone)
  + the fixed sinusoid table (3000 rows), 8 CAUSAL Whisper layers, LayerNorm
           -> "hidden states before dconv2" (B, 4N - 1, d): `hidden_states_before_dconv2`,
              the input of the flow-matching decoder (ARCHITECTURE.md 1.5)
  dconv2   ConvTranspose1d(d, 80, k3, stride 2) + GroupNorm(1, 80), last frame dropped -> coarse
           mel at 100 Hz (2 * (4L - 1) frames)
  post-net nearest-resample to the mel frame rate (16 kHz / hop 256 = 62.5 Hz in the release:
           the given target length in training, int(frames * 160/16000 * 16000/256) otherwise),
           4 x [Conv1d k5 + GroupNorm(1, 256) + Mish], Conv1d k1 -> 80, + the resampled coarse mel
           -> refined mel. Outputs are time-major (B, frames, 80).

Static shapes: one clip per row with a valid length. Every masked op reproduces what the release
computes for that clip alone: inputs beyond the valid length are zero before each (transposed)
convolution, GroupNorm statistics are taken over the clip's frames only (the release's GroupNorm
runs over the padded batch, so its batched results depend on the batch's longest clip; ours
equal its single-clip results), attention is causal within the clip, the nearest-resampling
scale is per clip, and outputs beyond each valid length are zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from omni_jax.layers import LayerNorm, dtype_of
from omni_jax.layers.conv1d import Conv1d, ConvTranspose1d
from omni_jax.models.config import LayerStackConfig
from omni_jax.models.whisper import ACT_AXES, AudioLayerSpec, length_mask, scanned_layers, sinusoids

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AudioDecoderConfig(LayerStackConfig):
    WHERE: ClassVar[str] = "config.model.audio_decoder"

    d_model: int = 1280
    num_layers: int = 8
    num_heads: int = 20
    ffn_dim: int = 5120
    kernel_size: int = 3  # decoder_kernel_size
    upsample1: int = 4  # dconv1 stride = the bridge's pooling (avg_pooler)
    upsample2: int = 2  # dconv2 stride (decoder_stride_size)
    max_positions: int = 3000  # rows of the release's `positional_embedding`
    num_mel_bins: int = 80
    postnet_channels: tuple[int, ...] = (256, 256, 256, 256)  # vocoder_config.channels[:-1]
    postnet_kernel: int = 5
    hop_length: int = 160  # encoder mel hop / rate: the coarse mel is at sample_rate / hop_length
    sample_rate: int = 16000
    mel_hop_length: int = 256  # vocoder_config: the refined mel's frame rate
    mel_sample_rate: int = 16000
    layer_norm_eps: float = 1e-5
    group_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self):
        object.__setattr__(self, "postnet_channels", tuple(int(c) for c in self.postnet_channels))

    def validate(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"audio decoder: d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if not self.postnet_channels:
            raise ValueError("audio decoder: postnet_channels must list at least one conv width")

    def layer_spec(self) -> AudioLayerSpec:
        return AudioLayerSpec(self.d_model, self.num_heads, self.ffn_dim, causal=True, norm_eps=self.layer_norm_eps,
                              initializer_range=self.initializer_range, dtype=self.dtype, param_dtype=self.param_dtype,
                              attention_impl=self.attention_impl, attention_block_size=self.attention_block_size)

    def hidden_frames(self, frames):
        """50 Hz frames after dconv1 for `frames` 12.5 Hz frames: (L-1)*4 + 3, 0 for 0 (an int or
        an integer array, jax or numpy: the lengths `hidden_states_before_dconv2` returns)."""
        return causal_transpose_frames(frames, self.kernel_size, self.upsample1)

    def coarse_frames(self, frames):
        """100 Hz coarse-mel frames after dconv2 for `frames` 12.5 Hz frames (int or array)."""
        return causal_transpose_frames(self.hidden_frames(frames), self.kernel_size, self.upsample2)

    def mel_frames(self, coarse_lengths):
        """Refined-mel frames for coarse (100 Hz) frames, in the release's float32 arithmetic:
        int(L * hop / sr * mel_sr / mel_hop) (MelSpecRefineNet.compute_output_length)."""
        if isinstance(coarse_lengths, jax.Array):
            t = coarse_lengths.astype(jnp.float32) * self.hop_length / self.sample_rate
            return (t * self.mel_sample_rate / self.mel_hop_length).astype(jnp.int32)
        t = np.float32(coarse_lengths) * np.float32(self.hop_length) / np.float32(self.sample_rate)
        return int(np.float32(t * np.float32(self.mel_sample_rate)) / np.float32(self.mel_hop_length))


class MaskedGroupNorm(nn.Module):
    """torch GroupNorm(1, C) of one clip: statistics over its valid frames x all channels (fp32)."""

    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, valid: Array) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (c,), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (c,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        w = valid[..., None].astype(jnp.float32)
        n = jnp.maximum(w.sum(axis=(1, 2), keepdims=True) * c, 1.0)
        mean = (x32 * w).sum(axis=(1, 2), keepdims=True) / n
        var = (jnp.square(x32 - mean) * w).sum(axis=(1, 2), keepdims=True) / n
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def causal_transpose_frames(lengths, kernel_size: int, stride: int):
    """Frames out of the release's CasualConvTranspose1d (`ConvTransposeNorm`) for `lengths`
    frames in: torch's (L-1)*stride + kernel_size less the max(0, kernel_size - stride) causal
    tail it trims; 0 for 0. `lengths`: a python int, or a numpy or jax integer array."""
    out = (lengths - 1) * stride + kernel_size - max(0, kernel_size - stride)
    if isinstance(lengths, (jax.Array, np.ndarray)):
        return (jnp if isinstance(lengths, jax.Array) else np).where(lengths > 0, out, 0)
    return max(0, out)


class ConvTransposeNorm(nn.Module):
    """The release's CasualConvTranspose1d on a padded batch: (B, N, Cin), lengths -> (B, T, C), lengths."""

    features: int
    kernel_size: int
    stride: int
    kernel_axes: tuple[str | None, str | None, str | None]
    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: Array, lengths: Array) -> tuple[Array, Array]:
        k, s = self.kernel_size, self.stride
        x = jnp.where(length_mask(lengths, x.shape[1])[..., None], x, 0)
        y = ConvTranspose1d(self.features, k, s, kernel_axes=self.kernel_axes, dtype=self.dtype,
                   param_dtype=self.param_dtype, kernel_init=self.kernel_init, name="conv")(x)
        full = jnp.where(lengths > 0, (lengths - 1) * s + k, 0)
        y = MaskedGroupNorm(self.eps, self.dtype, self.param_dtype, name="norm")(y, length_mask(full, y.shape[1]))
        y = y[:, : y.shape[1] - max(0, k - s)]
        out_len = causal_transpose_frames(lengths, k, s)
        return jnp.where(length_mask(out_len, y.shape[1])[..., None], y, 0), out_len


def nearest_resample(x: Array, in_lengths: Array, out_lengths: Array, out_frames: int) -> Array:
    """Per-row torch F.interpolate(mode='nearest') from in_lengths to out_lengths frames:
    src = min(floor(dst * (in / out)), in - 1) in float32. (B, T, C) -> (B, out_frames, C)."""
    scale = in_lengths.astype(jnp.float32) / jnp.maximum(out_lengths, 1).astype(jnp.float32)
    dst = jnp.arange(out_frames, dtype=jnp.float32)[None, :]
    src = jnp.floor(dst * scale[:, None]).astype(jnp.int32)
    src = jnp.clip(src, 0, jnp.maximum(in_lengths - 1, 0)[:, None])
    y = jnp.take_along_axis(x, src[..., None], axis=1)
    return jnp.where(length_mask(out_lengths, out_frames)[..., None], y, 0)


class PostNet(nn.Module):
    """MelSpecRefineNet: resample, 4 x [Conv1d k5 + GroupNorm(1) + Mish], Conv1d k1, + residual."""

    cfg: AudioDecoderConfig

    @nn.compact
    def __call__(self, coarse: Array, coarse_lengths: Array, out_lengths: Array, out_frames: int):
        cfg = self.cfg
        dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        init = nn.initializers.normal(cfg.initializer_range)
        c = nearest_resample(coarse, coarse_lengths, out_lengths, out_frames)
        valid = length_mask(out_lengths, out_frames)
        h, pad = c, cfg.postnet_kernel // 2
        for i, ch in enumerate(cfg.postnet_channels):
            h = Conv1d(ch, cfg.postnet_kernel, kernel_axes=("conv_window", None, "channels"), padding=(pad, pad),
                       dtype=dt, param_dtype=pdt, kernel_init=init, name=f"conv_{i}")(h)
            h = MaskedGroupNorm(cfg.group_norm_eps, dt, pdt, name=f"norm_{i}")(h, valid)
            h = jnp.where(valid[..., None], h * jnp.tanh(jax.nn.softplus(h)), 0)  # Mish
        h = Conv1d(cfg.num_mel_bins, 1, kernel_axes=("conv_window", None, "channels"), dtype=dt, param_dtype=pdt,
                   kernel_init=init, name="proj")(h)
        refined = jnp.where(valid[..., None], h + c, 0)
        return refined, c


class AudioDecoder(nn.Module):
    """Decoder embeddings (B, N, d) at 12.5 Hz with valid lengths (B,) -> mel.

    __call__(x, lengths, mel_lengths=None, mel_frames=None) -> dict with
      refined_mel (B, F, 80), coarse_mel (B, F, 80) (resampled), mel_lengths (B,),
      coarse_mel_100hz (B, 8N - 2, 80), coarse_lengths (B,),
      hidden_before_dconv2 (B, 4N - 1, d), hidden_lengths (B,)
    mel_lengths: the target mel frames (training); default: the release's formula.
    mel_frames: the static output buffer F; default: the formula on the longest coarse buffer.
    """

    cfg: AudioDecoderConfig

    def setup(self):
        cfg = self.cfg
        dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        init = nn.initializers.normal(cfg.initializer_range)
        self.dconv1 = ConvTransposeNorm(cfg.d_model, cfg.kernel_size, cfg.upsample1, ("conv_window", "embed", "mlp"),
                                        cfg.group_norm_eps, dt, pdt, init)
        self.layers = scanned_layers(cfg.layer_spec(), cfg.num_layers, remat=cfg.remat_policy,
                                     unroll=cfg.scan_unroll, name=None)
        self.layer_norm = LayerNorm(cfg.layer_norm_eps, dtype=dt, param_dtype=pdt)
        self.dconv2 = ConvTransposeNorm(cfg.num_mel_bins, cfg.kernel_size, cfg.upsample2,
                                        ("conv_window", "embed", "channels"), cfg.group_norm_eps, dt, pdt, init)
        self.post_net = PostNet(cfg)

    def hidden_states_before_dconv2(self, x: Array, lengths: Array) -> tuple[Array, Array]:
        """(B, N, d), (B,) -> ((B, 4N - 1, d) hidden states, (B,) lengths 4L - 1): the 50 Hz
        features the flow-matching decoder consumes; zero beyond each length."""
        cfg = self.cfg
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"audio decoder expects (batch, frames, {cfg.d_model}) embeddings, got {x.shape}")
        lengths = jnp.asarray(lengths, jnp.int32)
        h, h_len = self.dconv1(x, lengths)
        t = h.shape[1]
        if t > cfg.max_positions:
            raise ValueError(f"audio decoder: {x.shape[1]} frames give {t} 50 Hz frames, more than the "
                             f"{cfg.max_positions} rows of the position table (config max_positions)")
        h = (h.astype(jnp.float32) + jnp.asarray(sinusoids(cfg.max_positions, cfg.d_model)[:t])).astype(h.dtype)
        h = nn.with_logical_constraint(h, ACT_AXES)
        valid = length_mask(h_len, t)
        h, _ = self.layers(h, valid.astype(jnp.int32))
        h = jnp.where(valid[..., None], self.layer_norm(h), 0)
        return nn.with_logical_constraint(h, ACT_AXES), h_len

    def __call__(self, x: Array, lengths: Array, mel_lengths: Array | None = None,
                 mel_frames: int | None = None) -> dict[str, Array]:
        cfg = self.cfg
        h, h_len = self.hidden_states_before_dconv2(x, lengths)
        coarse, c_len = self.dconv2(h, h_len)
        if mel_frames is None:
            mel_frames = cfg.mel_frames(coarse.shape[1])
        if mel_lengths is None:
            mel_lengths = jnp.minimum(cfg.mel_frames(c_len), mel_frames)
        mel_lengths = jnp.asarray(mel_lengths, jnp.int32)
        refined, coarse_rs = self.post_net(coarse, c_len, mel_lengths, mel_frames)
        return dict(refined_mel=refined, coarse_mel=coarse_rs, mel_lengths=mel_lengths,
                    coarse_mel_100hz=coarse, coarse_lengths=c_len,
                    hidden_before_dconv2=h, hidden_lengths=h_len)
