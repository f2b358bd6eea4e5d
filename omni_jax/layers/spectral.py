"""Short-time Fourier transforms in jax.numpy (time-major).

  stft(x, n_fft, hop, window)          torch.stft(center=True, pad_mode="reflect",
                                       onesided=True) transposed to (batch, frames, bins)
  istft(spec, n_fft, hop, window)      torch.istft(center=True): windowed overlap-add
                                       divided by the summed squared window, trimmed

The vocoder's 24 kHz mel is omni_jax/ops/mel_jax.py `log_mel_24k` (the one HiFi-GAN mel recipe).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np



def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window / scipy get_window('hann', n, fftbins=True))."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def frame(x: jax.Array, size: int, hop: int) -> jax.Array:
    """(..., L) -> (..., 1 + (L - size) // hop, size) overlapping frames."""
    n = 1 + (x.shape[-1] - size) // hop
    idx = np.arange(size)[None, :] + hop * np.arange(n)[:, None]
    return x[..., idx]


def stft(x: jax.Array, n_fft: int, hop: int, window: np.ndarray | None = None, *, center: bool = True) -> jax.Array:
    """x (B, L) real -> complex (B, frames, n_fft // 2 + 1); frames = 1 + L // hop when centred."""
    window = hann_window(n_fft) if window is None else window
    if center:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)], mode="reflect")
    frames = frame(x.astype(jnp.float32), n_fft, hop) * window
    return jnp.fft.rfft(frames, n=n_fft, axis=-1)


def istft(spec: jax.Array, n_fft: int, hop: int, window: np.ndarray | None = None) -> jax.Array:
    """Inverse of the centred stft: spec (B, F, n_fft // 2 + 1) -> (B, hop * (F - 1)).

    The imaginary parts of the DC and Nyquist bins are ignored (irfft), like torch.istft.
    """
    window = hann_window(n_fft) if window is None else window
    if n_fft % hop:
        raise ValueError(f"istft here needs n_fft ({n_fft}) to be a multiple of hop ({hop})")
    b, f = spec.shape[0], spec.shape[1]
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1).astype(jnp.float32) * window  # (B, F, n_fft)
    r = n_fft // hop
    # overlap-add: frame k's piece j (hop samples) lands on output block k + j
    pieces = frames.reshape(b, f, r, hop)
    total = f + r - 1
    out = jnp.zeros((b, total, hop), jnp.float32)
    for j in range(r):
        out = out.at[:, j:j + f].add(pieces[:, :, j])
    env = _window_envelope(window, hop, f)
    y = out.reshape(b, total * hop) / env
    start = n_fft // 2
    return y[:, start:start + hop * (f - 1)]


@functools.lru_cache(maxsize=16)
def _envelope_np(window_bytes: bytes, n_fft: int, hop: int, f: int) -> np.ndarray:
    w = np.frombuffer(window_bytes, np.float32)
    env = np.zeros(hop * (f - 1) + n_fft, np.float64)
    for k in range(f):
        env[k * hop:k * hop + n_fft] += w.astype(np.float64) ** 2
    return np.where(env > 1e-11, env, 1.0).astype(np.float32)


def _window_envelope(window: np.ndarray, hop: int, f: int) -> np.ndarray:
    w = np.asarray(window, np.float32)
    return _envelope_np(w.tobytes(), len(w), hop, f)
