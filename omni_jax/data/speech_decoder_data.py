"""Step-indexed rows of the embedded speech for the speech-output decoders (flow matching, HiFT).

The release trains its flow-matching decoder on the audio tokenizer's decoder states of real
speech and ships a HiFT vocoder trained on real speech (CosyVoice 2). The synthetic sets of
omni_jax/data/synthetic_speech.py teach the mechanics (random "phone" vectors -> mel envelopes,
harmonic tones -> waveforms) but not the states and mels the model's replies bring, so the main
job's replies decode to noise (benchmarks/speech_intelligibility.py). With `config.data.source =
"speech"` the two stages read these rows instead: utterances of the audio tokenizer's corpus bank
(omni_jax/data/tokenizer_data.py `UtteranceBank`: corpus sentences spoken by the built-in
synthesiser in 44 voices, cut to `chunk_seconds`), row r of the stream reading utterance
`utterance_of_row(r, seed, U)`, so the batch at step s is a pure function of (config, s).

mel rows (flow matching; the task encodes `waveform` with the run's frozen tokenizer on device):
  waveform     f32 (B, S)      16 kHz samples (S = chunk_seconds * 16000), zero beyond num_samples
  num_samples  i32 (B,)
  mel          f32 (B, T, 80)  the 24 kHz vocoder log-mel of the clip (resampled 16 -> 24 kHz;
                               omni_jax/data/audio_features.log_mel_24k_np), T = S / 320 (50 Hz),
                               zero beyond its frames
  mel_frames   i32 (B,)        its valid frames
voice rows (the vocoder; the synthetic set's fields):
  wav  f32 (B, frames * 480)   a 24 kHz stretch of a clip at a row-seeded offset (zero-padded)
  mel  f32 (B, frames, 80)     its vocoder log-mel
  f0   f32 (B, frames)         the voice's pitch on frames the synthesiser voices (more than half
                               of their samples), 0 elsewhere (BuiltinTTS.pitch)
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from omni_jax.data import resampling
from omni_jax.data.audio_features import log_mel_24k_np
from omni_jax.data.iterator import StepIndexedIterator, global_rows_iterator
from omni_jax.data.tokenizer import make_tokenizer
from omni_jax.data.tokenizer_data import UtteranceBank, utterance_of_row
from omni_jax.ops.mel_jax import VOCODER_HOP, VOCODER_SAMPLE_RATE

SOURCE_RATE = 16000
MEL_HOP_16K = VOCODER_HOP * SOURCE_RATE // VOCODER_SAMPLE_RATE  # 320 samples at 16 kHz = one 50 Hz mel frame


def _bank(config: Any, max_samples: int) -> UtteranceBank:
    d = config.data
    tok = make_tokenizer(d.tokenizer.kind, config.model.llm.vocab_size if "llm" in config.model else 384,
                         d.tokenizer.get("path"))  # bounds the transcripts only (their tokens are not used)
    return UtteranceBank(num_utterances=d.num_utterances, max_samples=max_samples, max_text_tokens=d.max_text_tokens,
                         tokenizer=tok, corpus_seed=d.corpus_seed, num_voices=d.num_voices)


def _to_24k(wav: np.ndarray) -> np.ndarray:
    return resampling.resample(wav, SOURCE_RATE, VOCODER_SAMPLE_RATE).astype(np.float32)


def mel_row(wav: np.ndarray, frames: int) -> tuple[np.ndarray, int]:
    """A 16 kHz clip -> ((frames, 80) vocoder log-mel of its 24 kHz resampling, zero beyond its
    valid frames; the number of valid frames)."""
    mel = log_mel_24k_np(_to_24k(wav))[:frames]
    out = np.zeros((frames, mel.shape[-1]), np.float32)
    out[:len(mel)] = mel
    return out, len(mel)


def clip_24k(wav: np.ndarray, pitch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 16 kHz clip and its per-sample pitch -> both at 24 kHz."""
    w24 = _to_24k(wav)
    return w24, pitch[np.minimum(np.arange(len(w24)) * SOURCE_RATE // VOCODER_SAMPLE_RATE, len(pitch) - 1)]


def voice_row(w24: np.ndarray, p24: np.ndarray, frames: int, rng: np.random.Generator):
    """A 24 kHz clip and its pitch -> a (frames * 480,) stretch at a random offset (zero-padded),
    its (frames, 80) log-mel and (frames,) f0."""
    n = frames * VOCODER_HOP
    start = int(rng.integers(0, max(1, len(w24) - n + 1)))
    wav, pitch = w24[start:start + n], p24[start:start + n]
    seg, ps = np.zeros(n, np.float32), np.zeros(n, np.float32)
    seg[:len(wav)], ps[:len(pitch)] = wav, pitch
    per_frame = ps.reshape(frames, VOCODER_HOP)
    voiced = (per_frame > 0).mean(1) > 0.5
    f0 = np.where(voiced, per_frame.max(1), 0.0).astype(np.float32)
    return seg, log_mel_24k_np(seg), f0


def _iterator(config: Any, kind: str, make_row, *, start_step: int, process_index: int, process_count: int,
              rows=None) -> StepIndexedIterator:
    """Global row r = make_row(bank, its utterance, a generator seeded by (seed, r)), stacked."""
    d = config.data
    max_samples = int(round(d.chunk_seconds * SOURCE_RATE))
    if max_samples % MEL_HOP_16K:
        raise ValueError(f"config.data.chunk_seconds={d.chunk_seconds} must be a multiple of 0.02 s (one 50 Hz "
                         "mel frame)")
    bank = _bank(config, max_samples)
    B = config.train.batch_size

    def make_batch(start: int, count: int) -> dict[str, np.ndarray]:
        got = [make_row(bank, utterance_of_row(r, d.seed, len(bank)), np.random.default_rng([d.seed, 11, r]))
               for r in range(start, start + count)]
        return {k: np.stack([g[k] for g in got]) for k in got[0]}

    fp = repr((kind, d.num_utterances, d.corpus_seed, d.seed, d.chunk_seconds, d.max_text_tokens, d.num_voices,
               d.get("frames"), B, d.tokenizer.kind))
    return global_rows_iterator(make_batch, fp, B, start_step=start_step, process_index=process_index,
                                process_count=process_count, rows=rows)


def make_speech_mel_iterator(config: Any, *, start_step: int, process_index: int, process_count: int,
                             rows=None) -> StepIndexedIterator:
    """mel rows (module docstring) for the flow-matching stage."""
    samples = int(round(config.data.chunk_seconds * SOURCE_RATE))
    frames = samples // MEL_HOP_16K

    @functools.lru_cache(maxsize=None)  # a row is a function of its utterance (one bank per iterator)
    def row_of(bank, i):
        wav = bank.get(i)[0]
        mel, valid = mel_row(wav, frames)
        padded = np.zeros(samples, np.float32)
        padded[:len(wav)] = wav
        return {"waveform": padded, "num_samples": np.int32(len(wav)), "mel": mel, "mel_frames": np.int32(valid)}

    return _iterator(config, "mel", lambda bank, i, rng: row_of(bank, i), start_step=start_step,
                     process_index=process_index, process_count=process_count, rows=rows)


def make_speech_voice_iterator(config: Any, *, start_step: int, process_index: int, process_count: int,
                               rows=None) -> StepIndexedIterator:
    """voice rows (module docstring) for the vocoder stage."""
    frames = int(config.data.frames)

    @functools.lru_cache(maxsize=None)  # the 24 kHz clip of an utterance, resampled once
    def clip(bank, i):
        return clip_24k(bank.get(i)[0], bank.pitch(i))

    def row(bank, i, rng):
        wav, mel, f0 = voice_row(*clip(bank, i), frames, rng)
        return {"wav": wav, "mel": mel, "f0": f0}

    return _iterator(config, "voice", row, start_step=start_step, process_index=process_index,
                     process_count=process_count, rows=rows)
