"""Slaney-scale mel filter banks in numpy (librosa's `filters.mel(htk=False, norm="slaney")`,
as used by transformers' WhisperFeatureExtractor and the HiFi-GAN / CosyVoice mel).

  mel_filters(n_mels, n_fft, sample_rate, f_max)  (n_fft // 2 + 1, n_mels) float64, f_min 0

Shared by the on-device front ends (omni_jax/ops/mel_jax.py) and the host-side features
(omni_jax/data/audio_features.py).
"""

from __future__ import annotations

import functools

import numpy as np


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
def mel_filters(n_mels: int = 128, n_fft: int = 400, sample_rate: int = 16000, f_max: float = 8000.0) -> np.ndarray:
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
