"""Whisper log-mel features in numpy (ARCHITECTURE.md 1.3).

Matches transformers' WhisperFeatureExtractor(feature_size=128): 16 kHz, STFT n_fft 400,
hop 160, periodic Hann window, centred with reflect padding, power spectrum, 128 Slaney
mel filters (0-8 kHz, Slaney norm), log10(max(x, 1e-10)), last frame dropped, clamp at
(max - 8), then (x + 4) / 4. Clips longer than 30 s are split into 30 s chunks, each its
own feature matrix; batches pad frames with zeros beyond each chunk's valid length.
"""

from __future__ import annotations

import functools
import io
import wave

import numpy as np

from omni_jax.data import media

N_FFT = 400
N_MELS = 128
CHUNK_FRAMES = media.CHUNK_SECONDS * media.SAMPLE_RATE // media.HOP  # 3000


def _hz_to_mel(f):
    f = np.asarray(f, np.float64)
    mel = 3.0 * f / 200.0
    log_region = f >= 1000.0
    mel = np.where(log_region, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)
    return mel


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    f = 200.0 * m / 3.0
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), f)


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = media.SAMPLE_RATE,
                f_max: float = 8000.0) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters, (n_fft // 2 + 1, n_mels)."""
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(f_max), n_mels + 2)
    hz = _mel_to_hz(mel_pts)
    diff = np.diff(hz)
    slopes = hz[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb *= (2.0 / (hz[2:n_mels + 2] - hz[:n_mels]))[None, :]
    return fb


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


def decode_wav(data: bytes, sample_rate: int = media.SAMPLE_RATE) -> np.ndarray:
    """Encoded audio bytes (WAV of any PCM width or float, FLAC, anything libsndfile reads) ->
    float32 mono at `sample_rate` (mixdown; linear resampling). The one audio reader of the
    project (soundfile); omni_jax/data/media_io.py `decode_audio` wraps it with data errors."""
    import soundfile as sf

    try:
        x, sr = sf.read(io.BytesIO(bytes(data)), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise ValueError(f"cannot decode WAV/FLAC audio ({len(data)} bytes): {e}") from e
    x = x.mean(1)
    if sr != sample_rate:
        n = int(round(len(x) * sample_rate / sr))
        x = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x)
    return x.astype(np.float32)


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
