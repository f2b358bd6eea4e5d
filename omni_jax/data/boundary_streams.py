"""Streams for the v1 audio-boundary head (omni_jax/models/v1_boundary_head.py): the user's speech
arriving inside a video stream's audio, with per-frame start / inside / end labels.

A stream = the background audio of a video stream (noise at a random level, -70 to -35 dB re.
full scale, 0.5-3 s before the speech and 1-3 s after it) with one of the embedded dataset's
speech clips (`omni_speech`, default_dataset.speech: the built-in TTS of the embedded sentences)
added at a random gain (0.3-1.0). The speech's start and end are where the clip rises above /
falls below 1e-3 (its own leading and trailing silence excluded).

Training examples (`boundary_batch`) are WINDOWS of such streams, as the streaming runner sees
them: the last `window` samples up to a random point of the stream (70%) or a shorter window
from the stream's beginning (30%, 1 s up to `window`), log-mel as the release's processor
computes a chunk (`audio_features.release_chunk_features`, zero-padded to the window), labels
per Whisper encoder frame (20 ms; frame k's centre at (k + 0.5) * 20 ms into the window):
start / end = within BOUNDARY_TOL_S of the boundary, inside = between them. The train split's
clips make training streams, the test split's the held-out ones (`held_out_streams`).
The batch at step s is a pure function of (seed, s) (omni_jax/data/iterator.py).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import numpy as np

from omni_jax.data import media
from omni_jax.data.iterator import StepIndexedIterator, local_rows
from omni_jax.models.v1_boundary_head import BOUNDARY_TOL_S, FRAME_S

RATE = media.SAMPLE_RATE


@functools.lru_cache(maxsize=8)
def speech_clips(split: str, size: str) -> tuple[np.ndarray, ...]:
    """The embedded dataset's speech clips (16 kHz float32), their own silence trimmed to 10 ms."""
    from omni_jax.data import default_dataset, media_io

    out = []
    for _, ex in default_dataset.generate("speech", split, size):
        x = media_io.decode_audio(ex["audio"])
        nz = np.flatnonzero(np.abs(x) > 1e-3)
        if len(nz):
            out.append(x[max(0, nz[0] - 160): nz[-1] + 160].astype(np.float32))
    if not out:
        raise ValueError(f"the embedded speech set ({split}, {size}) has no audible clip")
    return tuple(out)


def make_stream(clip: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """(waveform, start_s, end_s): `clip` arriving inside a video stream's background audio."""
    lead, trail = int(rng.uniform(0.5, 3.0) * RATE), int(rng.uniform(1.0, 3.0) * RATE)
    level = 10 ** (rng.uniform(-70, -35) / 20)
    x = rng.standard_normal(lead + len(clip) + trail).astype(np.float32) * np.float32(level)
    x[lead: lead + len(clip)] += clip * np.float32(rng.uniform(0.3, 1.0))
    nz = np.flatnonzero(np.abs(clip) > 1e-3)
    return x, (lead + nz[0]) / RATE, (lead + nz[-1] + 1) / RATE


def frame_labels(frames: int, start_s: float, end_s: float) -> np.ndarray:
    """(frames, 3) float32 targets (start, inside, end) for encoder frames of a window whose first
    sample is at time 0 (start_s / end_s relative to it; outside the window: no boundary frame)."""
    t = (np.arange(frames) + 0.5) * FRAME_S
    return np.stack([np.abs(t - start_s) <= BOUNDARY_TOL_S, (t >= start_s) & (t < end_s),
                     np.abs(t - end_s) <= BOUNDARY_TOL_S], -1).astype(np.float32)


def window_features(x: np.ndarray, window: int) -> tuple[np.ndarray, int]:
    """The last `window` samples of x -> ((128, window // 160) log-mel, valid frames)."""
    from omni_jax.data.audio_features import release_chunk_features

    return release_chunk_features(np.asarray(x[-window:], np.float32), window)


def example(clips, rng: np.random.Generator, window: int) -> dict[str, np.ndarray]:
    x, s, e = make_stream(clips[int(rng.integers(len(clips)))], rng)
    if rng.random() < 0.7:  # the last `window` samples up to a random point of the stream
        stop = int(rng.integers(min(window, len(x)), len(x) + 1))
    else:  # the beginning of the stream
        stop = min(len(x), int(rng.uniform(1.0 * RATE, window)))
    t0 = max(0, stop - window)
    return _labelled(x[t0: stop], s - t0 / RATE, e - t0 / RATE, window)


def _labelled(crop, start_s, end_s, window):
    mel, valid = window_features(crop, window)
    frames, n = media.encoder_frames(mel.shape[1]), media.encoder_frames(valid)
    return {"boundary_mels": mel, "boundary_mel_lengths": np.int32(valid),
            "boundary_labels": frame_labels(frames, start_s, end_s),
            "boundary_mask": (np.arange(frames) < n).astype(np.float32)}


def boundary_batch(clips, seed: int, start_row: int, count: int, window: int) -> dict[str, np.ndarray]:
    rows = [example(clips, np.random.default_rng((seed, r)), window) for r in range(start_row, start_row + count)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def make_boundary_iterator(config: Any, *, start_step: int, process_index: int, process_count: int,
                           rows=None) -> StepIndexedIterator:
    b = config.boundary
    window = int(config.data.shapes.mel_frames) * media.HOP
    clips = speech_clips("train", b.dataset_size)
    batch = int(config.train.batch_size)
    mine = local_rows(batch, process_index, process_count, rows)
    runs = np.split(mine, np.flatnonzero(np.diff(mine) != 1) + 1)
    fp = hashlib.sha1(repr(("boundary", b.dataset_size, int(b.seed), window, batch)).encode()).hexdigest()[:12]

    def local_batch(step: int) -> dict[str, np.ndarray]:
        parts = [boundary_batch(clips, int(b.seed), step * batch + int(r[0]), len(r), window) for r in runs]
        return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return StepIndexedIterator(local_batch, start_step=start_step, fingerprint=fp)


def held_out_streams(size: str, per_clip: int = 4, seed: int = 0) -> list[tuple[np.ndarray, float, float]]:
    """[(waveform, start_s, end_s)] around the test split's clips (never seen in training)."""
    rng = np.random.default_rng((seed, 1000))
    return [make_stream(c, rng) for c in speech_clips("test", size) for _ in range(per_clip)]
