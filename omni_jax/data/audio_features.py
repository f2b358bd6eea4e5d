"""Whisper log-mel features in numpy (ARCHITECTURE.md 1.3).

Matches transformers' WhisperFeatureExtractor(feature_size=128): 16 kHz, STFT n_fft 400,
hop 160, periodic Hann window, centred with reflect padding, power spectrum, 128 Slaney
mel filters (0-8 kHz, Slaney norm), log10(max(x, 1e-10)), last frame dropped, clamp at
(max - 8), then (x + 4) / 4. Clips longer than 30 s are split into 30 s chunks, each its
own feature matrix; batches pad frames with zeros beyond each chunk's valid length.

Also the host-side twin of the 24 kHz vocoder mel (`log_mel_24k_np`, omni_jax/ops/mel_jax.py
`log_mel_24k`) for data pipelines. The mel filters are omni_jax/ops/mel_filters.py.
"""

from __future__ import annotations

import io
import wave

import numpy as np

from omni_jax.data import media
from omni_jax.ops import mel_jax
from omni_jax.ops.mel_filters import mel_filters

N_FFT = 400
N_MELS = 128
CHUNK_FRAMES = media.CHUNK_SECONDS * media.SAMPLE_RATE // media.HOP  # 3000


def log_mel(waveform: np.ndarray) -> np.ndarray:
    """One <= 30 s mono 16 kHz clip -> (128, n // 160) float32 log-mel features."""
    x = np.asarray(waveform, np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio (samples,), got shape {x.shape}")
    if len(x) < N_FFT // 2 + 1:
        raise ValueError(f"audio clip too short for the STFT: {len(x)} samples")
    pad = N_FFT // 2
    x = np.pad(x, (pad, pad), mode="reflect")
    n_frames = 1 + (len(x) - N_FFT) // media.HOP
    idx = np.arange(N_FFT)[None, :] + media.HOP * np.arange(n_frames)[:, None]
    window = np.hanning(N_FFT + 1)[:-1]
    spec = np.abs(np.fft.rfft(x[idx] * window, axis=-1)) ** 2  # (frames, 201)
    mel = spec @ mel_filters()  # (frames, 128)
    log_spec = np.log10(np.maximum(mel, 1e-10)).T[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def clip_features(waveform: np.ndarray) -> list[np.ndarray]:
    """A clip of any length -> one (128, frames) matrix per 30 s chunk."""
    size = media.CHUNK_SECONDS * media.SAMPLE_RATE
    return [log_mel(waveform[s:s + n]) for s, n in zip(range(0, len(waveform), size), media.audio_chunks(len(waveform)))]


def release_chunk_features(chunk: np.ndarray, buffer_samples: int = media.CHUNK_SECONDS * media.SAMPLE_RATE
                           ) -> tuple[np.ndarray, int]:
    """One <= 30 s chunk -> ((128, buffer // 160) features, valid frames), as the release's processor
    computes them: the chunk is zero-padded to the buffer BEFORE the STFT (so the last frames and
    the clamp see zeros, not reflections), and frames from min(T, n // 160 + 1) on are zero.
    `log_mel` on the unpadded clip differs in its last ~2 frames and has one frame fewer.
    omni_jax/ops/mel_jax.py `whisper_log_mel` is the batched on-device twin."""
    x = np.asarray(chunk, np.float64)
    if x.ndim != 1 or not 0 < len(x) <= buffer_samples:
        raise ValueError(f"expected a mono chunk of 1..{buffer_samples} samples, got shape {x.shape}")
    feats = log_mel(np.pad(x, (0, buffer_samples - len(x))))
    valid = media.valid_mel_frames(len(x), feats.shape[1])
    feats[:, valid:] = 0.0
    return feats, valid


def pad_frames(features: np.ndarray, frames: int = CHUNK_FRAMES) -> tuple[np.ndarray, int]:
    """(128, n) -> ((128, frames) zero-padded, valid length n)."""
    n = features.shape[1]
    if n > frames:
        raise ValueError(f"{n} mel frames do not fit a {frames}-frame buffer")
    return np.pad(features, ((0, 0), (0, frames - n))), n


def log_mel_24k_np(wav: np.ndarray) -> np.ndarray:
    """numpy twin of mel_jax.log_mel_24k for data pipelines: (L,) or (B, L) -> (..., L // 480, 80)."""
    x = np.asarray(wav, np.float64)
    squeeze = x.ndim == 1
    x = np.atleast_2d(x)
    n_fft, hop = mel_jax.VOCODER_N_FFT, mel_jax.VOCODER_HOP
    x = np.pad(x, ((0, 0), ((n_fft - hop) // 2, (n_fft - hop) // 2)), mode="reflect")
    n = 1 + (x.shape[-1] - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    spec = np.fft.rfft(x[:, idx] * window.astype(np.float32), axis=-1)
    mag = np.sqrt(np.abs(spec) ** 2 + 1e-9)
    mel = mag @ mel_filters(mel_jax.VOCODER_N_MELS, n_fft, mel_jax.VOCODER_SAMPLE_RATE, mel_jax.VOCODER_F_MAX)
    out = np.log(np.maximum(mel, 1e-5)).astype(np.float32)
    return out[0] if squeeze else out


def decode_wav(data: bytes, sample_rate: int = media.SAMPLE_RATE) -> np.ndarray:
    """Encoded audio bytes (WAV of any PCM width or float, FLAC, anything libsndfile reads) ->
    float32 mono at `sample_rate` (mixdown; polyphase resampling, omni_jax/data/resampling.py).
    The one audio reader of the project (soundfile); omni_jax/data/media_io.py `decode_audio`
    wraps it with data errors."""
    import soundfile as sf

    from omni_jax.data import resampling

    try:
        x, sr = sf.read(io.BytesIO(bytes(data)), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise ValueError(f"cannot decode WAV/FLAC audio ({len(data)} bytes): {e}") from e
    return resampling.resample(resampling.to_mono(x), sr, sample_rate).astype(np.float32)


def encode_wav(x: np.ndarray, sample_rate: int = media.SAMPLE_RATE) -> bytes:
    """float waveform in [-1, 1] -> 16-bit PCM mono WAV bytes (the writer; reading is `decode_wav`)."""
    pcm = (np.clip(np.asarray(x, np.float32), -1, 1) * 32767).astype(np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()
