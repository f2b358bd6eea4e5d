"""Log-mel spectrograms in JAX: jit-able, batched, with per-row valid lengths.

Two front ends, both on fixed-size sample buffers (rows first, static shapes):

`whisper_log_mel` (ARCHITECTURE.md 1.3) is the release's `OmniAudioProcessor.extract_fbank_features`
(baichuan-omni/model/processor_omni.py) for one chunk, batched: the chunk is zero-padded to the
buffer (30 s = 480000 samples in the release), STFT n_fft 400 / hop 160 / periodic Hann, centred
with reflect padding, power spectrum, last frame dropped, 128 Slaney mel bins, log10(max(x, 1e-10)),
clamp below (max - 8) with the max taken over the whole buffer, (x + 4) / 4; then frames at and beyond
the valid length min(T, n // 160 + 1) are set to zero. Before the zeroing this is exactly
transformers' WhisperFeatureExtractor(feature_size=128) on the zero-padded buffer (the numerical
reference, tests/ops/test_mel_jax.py).

`target_mel` is the 80-bin mel the audio decoder reconstructs (the release's vocoder_config:
16 kHz, n_fft 1024, hop 256, 80 bins): HiFi-GAN convention (reflect padding of (n_fft - hop) / 2
each side, no centring, magnitude sqrt(re^2 + im^2 + 1e-9), Slaney mel 0-8 kHz, natural log of
max(x, 1e-5)). The release's training code is not public; this choice is documented, not verified.
`log_mel_24k` is the same recipe with the vocoder's settings (CosyVoice / Matcha-TTS: 24 kHz, 80 bins
0-8 kHz, n_fft 1920, hop 480; one frame per 480 samples), the mel the HiFT vocoder is trained on.

The STFT is a DFT as two fp32 matmuls at HIGHEST precision ("matmul", the TPU-friendly default:
400-point FFTs are not an MXU operation) or `jnp.fft.rfft` ("fft").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.ops.mel_filters import mel_filters

SAMPLE_RATE = 16000
WHISPER_N_FFT = 400
WHISPER_HOP = 160
WHISPER_N_MELS = 128

VOCODER_SAMPLE_RATE = 24000
VOCODER_HOP = 480
VOCODER_N_FFT = 1920
VOCODER_N_MELS = 80
VOCODER_F_MAX = 8000.0

_HI = jax.lax.Precision.HIGHEST


@functools.lru_cache(maxsize=8)
def _dft_basis(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """Periodic-Hann-windowed DFT basis (n_fft, n_fft // 2 + 1): real and imaginary parts."""
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    k = np.arange(n_fft // 2 + 1)
    ang = 2 * np.pi * np.outer(n, k) / n_fft
    return ((window[:, None] * np.cos(ang)).astype(np.float32),
            (-window[:, None] * np.sin(ang)).astype(np.float32))


def _frames(x: jax.Array, n_fft: int, hop: int, n_frames: int) -> jax.Array:
    """(B, S) -> (B, n_frames, n_fft) windows starting every `hop` samples."""
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    return x[:, idx]


def _spectrum(frames: jax.Array, n_fft: int, impl: str) -> tuple[jax.Array, jax.Array]:
    """Real and imaginary parts of the windowed DFT of each frame, fp32."""
    if impl == "matmul":
        cos, sin = _dft_basis(n_fft)
        re = jnp.einsum("btn,nf->btf", frames, cos, precision=_HI)
        im = jnp.einsum("btn,nf->btf", frames, sin, precision=_HI)
        return re, im
    if impl == "fft":
        window = jnp.asarray(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft), jnp.float32)
        spec = jnp.fft.rfft(frames * window, axis=-1)
        return jnp.real(spec), jnp.imag(spec)
    raise ValueError(f"unknown STFT impl {impl!r}; use 'matmul' or 'fft'")


def _mask_samples(waveforms: jax.Array, num_samples: jax.Array) -> jax.Array:
    keep = jnp.arange(waveforms.shape[1])[None, :] < num_samples[:, None]
    return jnp.where(keep, waveforms.astype(jnp.float32), 0.0)


def whisper_valid_frames(num_samples: jax.Array, max_frames: int, hop: int = WHISPER_HOP) -> jax.Array:
    """Valid mel frames per row: min(max_frames, n // hop + 1), 0 for an empty row (the release's
    `valid_frame_nums`; omni_jax/data/media.py `valid_mel_frames` is the host-side twin)."""
    n = jnp.asarray(num_samples, jnp.int32)
    return jnp.where(n > 0, jnp.minimum(max_frames, n // hop + 1), 0).astype(jnp.int32)


def whisper_log_mel(
    waveforms: jax.Array,
    num_samples: jax.Array,
    *,
    n_mels: int = WHISPER_N_MELS,
    n_fft: int = WHISPER_N_FFT,
    hop: int = WHISPER_HOP,
    impl: str = "matmul",
) -> tuple[jax.Array, jax.Array]:
    """(B, S) zero-padded 16 kHz chunks + (B,) sample counts -> ((B, n_mels, S // hop), (B,) valid frames).

    S must be a multiple of `hop` (480000 -> 3000 frames for the release's 30 s buffer). Samples at
    and beyond `num_samples` are treated as zeros whatever the buffer holds.
    """
    if waveforms.ndim != 2:
        raise ValueError(f"whisper_log_mel expects (batch, samples) waveforms, got shape {waveforms.shape}")
    b, s = waveforms.shape
    if s % hop:
        raise ValueError(f"the sample buffer ({s}) must be a multiple of the hop length {hop}; "
                         f"pad the chunks to e.g. {(s // hop + 1) * hop} samples")
    n_frames = s // hop
    x = _mask_samples(waveforms, num_samples)
    x = jnp.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    frames = _frames(x, n_fft, hop, n_frames + 1)[:, :n_frames]  # the last STFT frame is dropped
    re, im = _spectrum(frames, n_fft, impl)
    power = re * re + im * im
    filters = jnp.asarray(mel_filters(n_mels, n_fft, SAMPLE_RATE, SAMPLE_RATE / 2).astype(np.float32))
    mel = jnp.einsum("btf,fm->btm", power, filters, precision=_HI)
    log_spec = jnp.log10(jnp.maximum(mel, 1e-10))
    peak = log_spec.max(axis=(1, 2), keepdims=True)
    log_spec = (jnp.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
    valid = whisper_valid_frames(num_samples, n_frames, hop)
    log_spec = jnp.where(jnp.arange(n_frames)[None, :, None] < valid[:, None, None], log_spec, 0.0)
    return jnp.swapaxes(log_spec, 1, 2), valid


def target_mel(
    waveforms: jax.Array,
    num_samples: jax.Array,
    *,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = 1024,
    hop: int = 256,
    n_mels: int = 80,
    f_max: float | None = None,
    log_floor: float = 1e-5,
    impl: str = "matmul",
) -> tuple[jax.Array, jax.Array]:
    """(B, S) + (B,) -> ((B, S // hop, n_mels) natural-log mel, (B,) valid frames n // hop).

    Frames at and beyond the valid length are zero. Time-major, like the decoder's outputs.
    """
    if waveforms.ndim != 2:
        raise ValueError(f"target_mel expects (batch, samples) waveforms, got shape {waveforms.shape}")
    s = waveforms.shape[1]
    if s < n_fft:
        raise ValueError(f"target_mel needs at least n_fft={n_fft} samples per row, got {s}")
    n_frames = s // hop
    pad = (n_fft - hop) // 2
    x = jnp.pad(_mask_samples(waveforms, num_samples), ((0, 0), (pad, pad)), mode="reflect")
    frames = _frames(x, n_fft, hop, n_frames)
    re, im = _spectrum(frames, n_fft, impl)
    mag = jnp.sqrt(re * re + im * im + 1e-9)
    filters = mel_filters(n_mels, n_fft, sample_rate, float(f_max or sample_rate / 2)).astype(np.float32)
    mel = jnp.einsum("btf,fm->btm", mag, jnp.asarray(filters), precision=_HI)
    out = jnp.log(jnp.maximum(mel, log_floor))
    valid = jnp.minimum(jnp.asarray(num_samples, jnp.int32) // hop, n_frames).astype(jnp.int32)
    out = jnp.where(jnp.arange(n_frames)[None, :, None] < valid[:, None, None], out, 0.0)
    return out, valid


def log_mel_24k(wav: jax.Array) -> jax.Array:
    """wav (B, L) at 24 kHz, every sample valid -> the vocoder's log-mel (B, L // 480, 80) (`target_mel`
    with the vocoder settings, rfft STFT)."""
    wav = jnp.asarray(wav)
    full = jnp.full((wav.shape[0],), wav.shape[1], jnp.int32)
    mel, _ = target_mel(wav, full, sample_rate=VOCODER_SAMPLE_RATE, n_fft=VOCODER_N_FFT, hop=VOCODER_HOP,
                        n_mels=VOCODER_N_MELS, f_max=VOCODER_F_MAX, impl="fft")
    return mel
