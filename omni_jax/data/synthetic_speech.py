"""Deterministic synthetic data for the speech-output decoders (no downloads, CPU-cheap).

Mel set (flow matching): a fixed bank of `num_units` "phones", each a condition vector (the
stand-in for the audio decoder's hidden states) and an 80-bin log-mel envelope (two smooth
formant bumps on a sloped floor). A sequence is a run of phones with random durations; the
target mel is a CAUSAL exponential smoothing of the phones' envelopes (so a causal decoder
can learn it), the condition is the phone vector plus small noise. Padding frames are zero
with mask 0.

Vocoder set (HiFT): fixed-length 24 kHz segments of a harmonic source (f0 contour 90-320 Hz
with vibrato, 1/k harmonic tilt, amplitude envelope) with unvoiced noisy stretches; the mel is
the 24 kHz vocoder mel of the waveform (omni_jax/data/audio_features.log_mel_24k_np) and f0 the
per-frame pitch (0 when unvoiced).

Example i depends only on (seed, i); the batch at step s holds examples s*B .. s*B + B - 1,
so the iterators are step-indexed (omni_jax/data/iterator.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from omni_jax.data.iterator import StepIndexedIterator, global_rows_iterator
from omni_jax.data.audio_features import log_mel_24k_np
from omni_jax.ops.mel_jax import VOCODER_HOP, VOCODER_SAMPLE_RATE


class SyntheticMelSet:
    def __init__(self, *, n_mels: int = 80, cond_dim: int = 1280, max_frames: int = 64, min_frames: int | None = None,
                 num_units: int = 12, corpus_seed: int = 0, seed: int = 0, smoothing: float = 0.5):
        rng = np.random.default_rng([corpus_seed, 7])
        self.n_mels, self.cond_dim, self.max_frames = n_mels, cond_dim, max_frames
        self.min_frames = max(1, max_frames // 2) if min_frames is None else min_frames
        self.seed, self.smoothing = seed, smoothing
        self.units = rng.normal(size=(num_units, cond_dim)).astype(np.float32)
        bins = np.arange(n_mels)[None, :]
        c1 = rng.uniform(0.1, 0.45, (num_units, 1)) * n_mels
        c2 = rng.uniform(0.5, 0.9, (num_units, 1)) * n_mels
        w1, w2 = rng.uniform(2, 6, (num_units, 1)), rng.uniform(3, 9, (num_units, 1))
        floor = -6.0 - 3.0 * bins / n_mels
        env = floor + 5.0 * np.exp(-0.5 * ((bins - c1) / w1) ** 2) + 4.0 * np.exp(-0.5 * ((bins - c2) / w2) ** 2)
        self.envelopes = env.astype(np.float32)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """-> hidden (max_frames, cond_dim), mel (max_frames, n_mels), valid length."""
        rng = np.random.default_rng([self.seed, int(index)])
        length = int(rng.integers(self.min_frames, self.max_frames + 1))
        ids = []
        while len(ids) < length:
            ids += [int(rng.integers(len(self.units)))] * int(rng.integers(2, 7))
        ids = np.asarray(ids[:length])
        hidden = np.zeros((self.max_frames, self.cond_dim), np.float32)
        hidden[:length] = self.units[ids] + 0.05 * rng.normal(size=(length, self.cond_dim))
        mel = np.zeros((self.max_frames, self.n_mels), np.float32)
        acc = self.envelopes[ids[0]]
        for t in range(length):
            acc = self.smoothing * acc + (1.0 - self.smoothing) * self.envelopes[ids[t]]
            mel[t] = acc
        return hidden, mel, length

    def batch(self, start: int, count: int) -> dict[str, np.ndarray]:
        hs, ms, ns = zip(*(self.example(i) for i in range(start, start + count)))
        mask = (np.arange(self.max_frames)[None, :] < np.asarray(ns)[:, None]).astype(np.float32)
        return {"hidden": np.stack(hs), "mel": np.stack(ms), "mel_mask": mask}


class SyntheticVoiceSet:
    def __init__(self, *, frames: int = 16, seed: int = 0, num_harmonics: int = 24):
        self.frames, self.seed, self.num_harmonics = frames, seed, num_harmonics
        self.samples = frames * VOCODER_HOP

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> wav (frames * 480,), mel (frames, 80), f0 (frames,) in Hz (0 = unvoiced)."""
        rng = np.random.default_rng([self.seed, int(index)])
        n, sr = self.samples, VOCODER_SAMPLE_RATE
        t = np.arange(n) / sr
        base = rng.uniform(90.0, 320.0)
        f0 = base * (1.0 + 0.06 * np.sin(2 * np.pi * rng.uniform(3, 7) * t + rng.uniform(0, 6.3)))
        voiced = np.ones(n, bool)
        if rng.uniform() < 0.5:  # one unvoiced stretch
            a = int(rng.integers(0, n // 2))
            voiced[a:a + int(rng.integers(n // 8, n // 3))] = False
        phase = 2 * np.pi * np.cumsum(f0) / sr
        k = np.arange(1, self.num_harmonics + 1)[:, None]
        amps = (1.0 / k) * (k * f0[None, :] < sr / 2 - 500)
        wav = (amps * np.sin(k * phase[None, :] + rng.uniform(0, 6.3, (self.num_harmonics, 1)))).sum(0)
        wav = 0.25 * wav / np.abs(wav).max()
        env = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6.3))
        wav = np.where(voiced, wav * env, 0.03 * rng.normal(size=n))
        wav = wav.astype(np.float32)
        f0_frames = f0.reshape(self.frames, VOCODER_HOP).mean(1)
        vf = voiced.reshape(self.frames, VOCODER_HOP).mean(1) > 0.5
        return wav, log_mel_24k_np(wav), np.where(vf, f0_frames, 0.0).astype(np.float32)

    def batch(self, start: int, count: int) -> dict[str, np.ndarray]:
        ws, ms, fs = zip(*(self.example(i) for i in range(start, start + count)))
        return {"wav": np.stack(ws), "mel": np.stack(ms), "f0": np.stack(fs)}


def make_mel_iterator(config: Any, *, start_step: int, process_index: int, process_count: int,
                      rows=None) -> StepIndexedIterator:
    d, m = config.data, config.model.flow_matching
    ds = SyntheticMelSet(n_mels=m.n_mels, cond_dim=m.prenet_in_dim, max_frames=d.max_frames,
                         num_units=d.num_units, corpus_seed=d.corpus_seed, seed=d.seed)
    fp = repr(("mel", m.n_mels, m.prenet_in_dim, d.max_frames, d.num_units, d.corpus_seed, d.seed, config.train.batch_size))
    return global_rows_iterator(ds.batch, fp, config.train.batch_size, start_step=start_step, process_index=process_index,
                     process_count=process_count, rows=rows)


def make_voice_iterator(config: Any, *, start_step: int, process_index: int, process_count: int,
                        rows=None) -> StepIndexedIterator:
    d = config.data
    ds = SyntheticVoiceSet(frames=d.frames, seed=d.seed)
    fp = repr(("voice", d.frames, d.seed, config.train.batch_size))
    return global_rows_iterator(ds.batch, fp, config.train.batch_size, start_step=start_step, process_index=process_index,
                     process_count=process_count, rows=rows)
