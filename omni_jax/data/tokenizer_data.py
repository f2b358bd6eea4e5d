"""Step-indexed speech data for training the audio tokenizer (the embedded default audio).

Sentences of the embedded corpus (omni_jax/data/text_corpus.py) spoken by the built-in
synthesiser (omni_jax/data/speech_synth.py, 44 voices): a fixed bank of `num_utterances`
(sentence, voice) pairs chosen by `corpus_seed`, synthesised lazily and cached. Row r of the
endless stream is utterance perm_e[r mod U] with e = r // U and perm_e a permutation seeded by
(seed, e); the global batch at step s is rows [s*B, (s+1)*B), so it is a pure function of
(config, s) (omni_jax/data/iterator.py). A sentence longer than the sample buffer or the text
buffer loses words from its end until it fits.

Batch fields (rows first, static shapes):
  waveform     f32 (B, S)  16 kHz samples, zero beyond num_samples (S = chunk_seconds * 16000)
  num_samples  i32 (B,)
  text         i32 (B, T)  transcript tokens then eos, 0-padded
  text_lengths i32 (B,)    tokens incl. eos
  stage_step   i32 (B,)    the stage-local step (schedules that depend on training progress)
"""

from __future__ import annotations

import hashlib
import re
import threading
from typing import Any

import numpy as np

from omni_jax.data.iterator import StepIndexedIterator, local_rows
from omni_jax.data.speech_synth import BuiltinTTS
from omni_jax.data.text_corpus import generate_documents
from omni_jax.data.tokenizer import make_tokenizer


def corpus_sentences(num_documents: int, corpus_seed: int) -> list[str]:
    out = []
    for doc in generate_documents(num_documents, corpus_seed):
        out += [s.strip() + "." for s in re.split(r"(?<=\.)\s+", doc) if s.strip().strip(".")]
    return [s.replace("..", ".") for s in out]


class UtteranceBank:
    """`num_utterances` deterministic (sentence, voice) pairs -> (waveform, transcript tokens)."""

    def __init__(self, *, num_utterances: int, max_samples: int, max_text_tokens: int, tokenizer,
                 corpus_seed: int = 0, num_voices: int = 44, tts=None):
        sentences = corpus_sentences(max(8, num_utterances // 2), corpus_seed)
        rng = np.random.default_rng([corpus_seed, 1])
        self._pairs = [(sentences[int(i)], int(v)) for i, v in zip(
            rng.integers(0, len(sentences), num_utterances), rng.integers(0, num_voices, num_utterances))]
        self._tts = tts or BuiltinTTS(num_voices)
        self._tok = tokenizer
        self._max_samples, self._max_text = max_samples, max_text_tokens
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pairs)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        with self._lock:
            if i in self._cache:
                return self._cache[i]
        text, voice = self._pairs[i]
        words = text.split()
        while True:
            t = " ".join(words)
            ids = self._tok.encode(t) + [self._tok.eos_id]
            wav = self._tts(t, voice)
            if (len(wav) <= self._max_samples and len(ids) <= self._max_text) or len(words) == 1:
                break
            words = words[:-1]
        if len(wav) > self._max_samples or len(ids) > self._max_text:
            raise ValueError(f"utterance {t!r} does not fit {self._max_samples} samples / {self._max_text} tokens; "
                             "raise config.data.chunk_seconds or config.data.max_text_tokens")
        out = (wav.astype(np.float32), np.asarray(ids, np.int32), t)
        with self._lock:
            self._cache[i] = out
        return out

    def pitch(self, i: int) -> np.ndarray:
        """Per sample of utterance i's waveform: its voice's pitch in Hz where voiced, else 0 (the
        vocoder's f0 target; the TTS must say it: BuiltinTTS.pitch)."""
        if not hasattr(self._tts, "pitch"):
            raise ValueError(f"{type(self._tts).__name__} has no pitch(text, voice_id): the vocoder's speech rows "
                             "need the f0 of every sample; use BuiltinTTS or add pitch() to the TTS")
        _, _, text = self.get(i)
        return self._tts.pitch(text, self._pairs[i][1])


def utterance_of_row(row: int, seed: int, count: int) -> int:
    """The utterance global row `row` reads: perm_e[row mod count], e = row // count, perm_e seeded by
    (seed, e): every utterance once per pass, in a new order each pass."""
    return int(np.random.default_rng([seed, row // count]).permutation(count)[row % count])


def make_tokenizer_iterator(config: Any, *, start_step: int, process_index: int,
                            process_count: int, rows=None) -> StepIndexedIterator:
    d = config.data
    tok = make_tokenizer(d.tokenizer.kind, config.model.llm.vocab_size, d.tokenizer.get("path"))
    max_samples = int(round(d.chunk_seconds * 16000))
    if max_samples % 160:
        raise ValueError(f"config.data.chunk_seconds={d.chunk_seconds} must give a multiple of 160 samples (10 ms)")
    bank = UtteranceBank(num_utterances=d.num_utterances, max_samples=max_samples, max_text_tokens=d.max_text_tokens,
                         tokenizer=tok, corpus_seed=d.corpus_seed, num_voices=d.num_voices)
    B = config.train.batch_size
    mine = local_rows(B, process_index, process_count, rows)
    U = len(bank)
    fp = hashlib.sha1(repr((d.num_utterances, d.corpus_seed, d.seed, d.chunk_seconds, d.max_text_tokens,
                            d.num_voices, B, d.tokenizer.kind)).encode()).hexdigest()[:12]

    def local_batch(step: int) -> dict[str, np.ndarray]:
        n = len(mine)
        out = dict(waveform=np.zeros((n, max_samples), np.float32), num_samples=np.zeros((n,), np.int32),
                   text=np.zeros((n, d.max_text_tokens), np.int32), text_lengths=np.zeros((n,), np.int32),
                   stage_step=np.full((n,), step, np.int32))
        for j, r in enumerate((step * B + mine).tolist()):
            wav, ids, _ = bank.get(utterance_of_row(r, d.seed, U))
            out["waveform"][j, : len(wav)] = wav
            out["num_samples"][j] = len(wav)
            out["text"][j, : len(ids)] = ids
            out["text_lengths"][j] = len(ids)
        return out

    return StepIndexedIterator(local_batch, start_step=start_step, fingerprint=fp)
