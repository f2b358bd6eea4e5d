"""HiFT vocoder: neural source filter + iSTFT HiFi-GAN (ARCHITECTURE.md 1.5, CosyVoice 2 at 24 kHz).

Numerical reference: CosyVoice `hifigan/generator.py` HiFTGenerator with `f0_predictor.py`
ConvRNNF0Predictor (tests/speech_reference.py mirrors them with torch weight_norm); tensor names
and shapes of the release's separate state dict: tests/fixtures/reference_vocoder_state_dict.tsv.

  mel (B, T, 80) -> f0 = |Linear(ELU(Conv1d k3) x 5)| per mel frame
  source: f0 repeated x hop (nearest), sine generator with the fundamental + 8 harmonics
      (amplitude 0.1, voiced where f0 > 10, random initial phases for the harmonics, Gaussian
      noise 0.003 voiced / 0.1 / 3 unvoiced), merged by tanh(Linear 9 -> 1); its STFT (n_fft 16,
      hop 4, Hann) -> real | imag = 18 channels at 120 frames per mel frame (+1)
  main path: conv_pre k7; per stage (rates 8, 5, 3): leaky-ReLU 0.1, ConvTranspose1d
      (padding (k - u) / 2), a left reflection pad of 1 after the last one, + the source branch
      (strided conv of the source STFT + a Snake ResBlock), then the mean of the stage's
      ResBlocks (kernels 3, 7, 11; dilations 1, 3, 5)
  head: leaky-ReLU (slope 0.01, torch's default), conv_post k7 -> 18 channels;
      magnitude = min(exp(ch 0..8), 100), phase = sin(ch 9..17); iSTFT; clamp +-0.99.
  -> waveform (B, T * 480) at 24 kHz.

The sine phases are accumulated per mel frame (modulo 1 at every step) instead of as one
fp32 cumulative sum over all samples: identical in exact arithmetic; in fp32 the error stays
at the rounding of the per-sample increment (~5e-4 cycles over 8 s), where a long fp32
running sum (the reference's) loses the phase entirely (tests compare with float64).
Randomness comes from the `rng` argument (one key, or one key per row: (B, 2)); `phase` / `noise`
can be given explicitly.
Weight norm exists only in the PyTorch checkpoint: conversion folds it (convert/speech.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from omni_jax.layers import Dense, dtype_of
from omni_jax.layers.conv1d import Conv1d, ConvTranspose1d
from omni_jax.layers.spectral import hann_window, istft, stft
from omni_jax.models.config import ModelConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class HiFTConfig(ModelConfig):
    WHERE: ClassVar[str] = "config.model.vocoder"

    n_mels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    istft_n_fft: int = 16
    istft_hop: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_channels: int = 512
    f0_layers: int = 5

    def validate(self) -> None:
        n = len(self.upsample_rates)
        if len(self.upsample_kernel_sizes) != n:
            raise ValueError("vocoder: upsample_kernel_sizes must have one entry per upsample_rates entry")
        if len(self.source_resblock_kernel_sizes) != n or len(self.source_resblock_dilations) != n:
            raise ValueError(f"vocoder: source_resblock_kernel_sizes / _dilations need {n} entries (one per upsampling stage)")
        if len(self.resblock_dilations) != len(self.resblock_kernel_sizes):
            raise ValueError("vocoder: resblock_dilations needs one row per resblock_kernel_sizes entry")
        if self.base_channels % (2 ** n):
            raise ValueError(f"vocoder: base_channels={self.base_channels} must be divisible by 2**{n}")

    @property
    def hop(self) -> int:
        """Waveform samples per mel frame (480 for the release)."""
        return math.prod(self.upsample_rates) * self.istft_hop

    def channels(self, stage: int) -> int:
        return self.base_channels // (2 ** (stage + 1))


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha with a learned per-channel alpha (CosyVoice activation.Snake)."""

    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        alpha = self.param("alpha", nn.with_logical_partitioning(nn.initializers.ones, ("channels",)),
                           (x.shape[-1],), self.param_dtype).astype(x.dtype)
        return x + (1.0 / (alpha + 1e-9)) * jnp.square(jnp.sin(x * alpha))


class ResBlock(nn.Module):
    channels: int
    kernel_size: int
    dilations: tuple[int, ...]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=nn.initializers.normal(0.01))
        k = self.kernel_size
        for n, d in enumerate(self.dilations):
            xt = Snake(self.param_dtype, name=f"activations1_{n}")(x)
            xt = Conv1d(self.channels, k, dilation=d, padding=(k * d - d) // 2, name=f"convs1_{n}", **kw)(xt)
            xt = Snake(self.param_dtype, name=f"activations2_{n}")(xt)
            xt = Conv1d(self.channels, k, padding=(k - 1) // 2, name=f"convs2_{n}", **kw)(xt)
            x = x + xt
        return x


class F0Predictor(nn.Module):
    """ConvRNNF0Predictor: 5 x (Conv1d k3 + ELU), Linear -> 1, absolute value. (B, T, mel) -> (B, T)."""

    cfg: HiFTConfig

    @nn.compact
    def __call__(self, mel):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        x = mel
        for n in range(cfg.f0_layers):
            x = jax.nn.elu(Conv1d(cfg.f0_channels, 3, padding=1, name=f"condnet_{n}", **kw)(x))
        f0 = Dense(1, kernel_axes=("channels", "norm"), use_bias=True, name="classifier", **kw)(x)
        return jnp.abs(f0[..., 0]).astype(jnp.float32)


def sine_phases(f0: Array, hop: int, sampling_rate: int, num: int) -> Array:
    """Cycle fraction frac(sum_{m <= n} f0_up[m] * h / sr) of harmonics h = 1..num at every
    sample n, with f0 (B, T) repeated hop times. Returns (B, T * hop, num) in [0, 1)."""
    b, t = f0.shape
    inc = f0.astype(jnp.float32)[..., None] * jnp.arange(1, num + 1, dtype=jnp.float32) / sampling_rate  # (B, T, H)
    per_frame = jnp.mod(hop * inc, 1.0)
    incl = jax.lax.associative_scan(lambda a, c: jnp.mod(a + c, 1.0), per_frame, axis=1)
    start = jnp.mod(incl - per_frame, 1.0)  # phase before each frame's first sample
    j = jnp.arange(1, hop + 1, dtype=jnp.float32)[None, None, :, None]
    ph = jnp.mod(start[:, :, None, :] + j * inc[:, :, None, :], 1.0)  # (B, T, hop, H)
    return ph.reshape(b, t * hop, num)


class SourceModule(nn.Module):
    """SourceModuleHnNSF + SineGen: f0 per frame -> excitation (B, T * hop)."""

    cfg: HiFTConfig

    @nn.compact
    def __call__(self, f0: Array, rng: Array | None = None, phase: Array | None = None, noise: Array | None = None):
        cfg = self.cfg
        h = cfg.nb_harmonics + 1
        b, t = f0.shape
        length = t * cfg.hop
        if phase is None or noise is None:
            if rng is None:
                raise ValueError("vocoder source: pass `rng` (or both `phase` and `noise`)")
            if rng.ndim == 2:  # one key per row (omni_jax/train/rng.py row_keys): independent of the batch split
                k1, k2 = jnp.moveaxis(jax.vmap(jax.random.split)(rng), 1, 0)
                draw_phase = lambda: jax.vmap(lambda k: jax.random.uniform(k, (h,), jnp.float32, -jnp.pi, jnp.pi))(k1)
                draw_noise = lambda: jax.vmap(lambda k: jax.random.normal(k, (length, h), jnp.float32))(k2)
            else:
                k1, k2 = jax.random.split(rng)
                draw_phase = lambda: jax.random.uniform(k1, (b, h), jnp.float32, -jnp.pi, jnp.pi)
                draw_noise = lambda: jax.random.normal(k2, (b, length, h), jnp.float32)
            if phase is None:
                phase = draw_phase()
            if noise is None:
                noise = draw_noise()
        phase = phase.at[:, 0].set(0.0)  # the fundamental starts at phase 0
        theta = 2.0 * jnp.pi * sine_phases(f0, cfg.hop, cfg.sampling_rate, h)
        sine = cfg.nsf_alpha * jnp.sin(theta + phase[:, None, :])
        f0_up = jnp.repeat(f0, cfg.hop, axis=1)[..., None]
        uv = (f0_up > cfg.nsf_voiced_threshold).astype(jnp.float32)
        amp = uv * cfg.nsf_sigma + (1.0 - uv) * cfg.nsf_alpha / 3.0
        sine = sine * uv + amp * noise
        merged = Dense(1, kernel_axes=("channels", "norm"), use_bias=True, dtype=dtype_of(cfg.dtype),
                       param_dtype=dtype_of(cfg.param_dtype), name="l_linear")(sine)
        return jnp.tanh(merged[..., 0]).astype(jnp.float32)


class HiFTGenerator(nn.Module):
    """mel (B, T, n_mels) -> waveform (B, T * hop). See the module docstring.

    return_f0=True -> (waveform, f0 (B, T) per mel frame); return_source=True -> (waveform, f0,
    source (B, T * hop): the neural-source-filter excitation tanh(l_linear(sines + noise)) that the
    main path filters). Plain outputs, no capture_intermediates needed."""

    cfg: HiFTConfig

    @nn.compact
    def __call__(self, mel: Array, rng: Array | None = None, *, phase: Array | None = None,
                 noise: Array | None = None, return_f0: bool = False, return_source: bool = False):
        cfg = self.cfg
        if mel.shape[-1] != cfg.n_mels:
            raise ValueError(f"vocoder input has {mel.shape[-1]} mel bins, config.n_mels is {cfg.n_mels}")
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        small = nn.initializers.normal(0.01)
        f0 = F0Predictor(cfg, name="f0_predictor")(mel)
        src = SourceModule(cfg, name="m_source")(f0, rng, phase, noise)
        window = hann_window(cfg.istft_n_fft)
        spec = stft(src, cfg.istft_n_fft, cfg.istft_hop, window)
        s = jnp.concatenate([jnp.real(spec), jnp.imag(spec)], axis=-1).astype(dtype)  # (B, F, n_fft + 2)

        x = Conv1d(cfg.base_channels, 7, padding=3, name="conv_pre", **kw)(mel.astype(dtype))
        n_up = len(cfg.upsample_rates)
        rates = [1] + list(cfg.upsample_rates[::-1][:-1])
        down = [math.prod(rates[: len(rates) - i]) for i in range(n_up)]  # [15, 3, 1] for the release
        nk = len(cfg.resblock_kernel_sizes)
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            ch = cfg.channels(i)
            x = jax.nn.leaky_relu(x, cfg.lrelu_slope)
            x = ConvTranspose1d(ch, k, u, padding=(k - u) // 2, kernel_init=small, name=f"ups_{i}", **kw)(x)
            if i == n_up - 1:
                x = jnp.concatenate([x[:, 1:2], x], axis=1)  # ReflectionPad1d((1, 0))
            d = down[i]
            if d == 1:
                si = Conv1d(ch, 1, name=f"source_downs_{i}", **kw)(s)
            else:
                si = Conv1d(ch, 2 * d, stride=d, padding=d // 2, name=f"source_downs_{i}", **kw)(s)
            si = ResBlock(ch, cfg.source_resblock_kernel_sizes[i], cfg.source_resblock_dilations[i],
                          name=f"source_resblocks_{i}", **kw)(si)
            x = x + si
            xs = 0.0
            for j, (kr, dl) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations)):
                xs = xs + ResBlock(ch, kr, dl, name=f"resblocks_{i * nk + j}", **kw)(x)
            x = xs / nk
            x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_mel"))
        x = jax.nn.leaky_relu(x, 0.01)
        x = Conv1d(cfg.istft_n_fft + 2, 7, padding=3, kernel_init=small, name="conv_post", **kw)(x)
        x = x.astype(jnp.float32)
        nb = cfg.istft_n_fft // 2 + 1
        mag = jnp.exp(jnp.minimum(x[..., :nb], math.log(100.0)))  # = min(exp, 100) with finite gradients
        ph = jnp.sin(x[..., nb:])
        wav = istft(jax.lax.complex(mag * jnp.cos(ph), mag * jnp.sin(ph)), cfg.istft_n_fft, cfg.istft_hop, window)
        wav = jnp.clip(wav, -cfg.audio_limit, cfg.audio_limit)
        if return_source:
            return wav, f0, src
        return (wav, f0) if return_f0 else wav
