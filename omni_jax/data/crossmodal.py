"""Cross-modal interaction data (ARCHITECTURE.md 1.8): speak a quarter, continue in text.

A caption (or interleaved text) is split into sentences; the leading sentences that make
up about a quarter of its characters (at least one, never all) are turned into speech by
a pluggable TTS (omni_jax/data/speech_synth.TTS; 44 voices in the release and in
BuiltinTTS) and put in place of those sentences; the prompt asks the model to listen and
continue; the target is the remaining text. For video, the video's own audio track is
the audio element when it has one.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from omni_jax.data.errors import DataError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences ending in . ! or ? (the last one may lack the mark)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def spoken_quarter(sentences: list[str], fraction: float = 0.25) -> int:
    """How many leading sentences hold closest to `fraction` of the characters (1..n-1)."""
    if len(sentences) < 2:
        raise DataError("invalid", f"cross-modal data needs at least two sentences, got {len(sentences)}")
    lens = np.cumsum([len(s) for s in sentences[:-1]])
    total = sum(len(s) for s in sentences)
    return int(np.argmin(np.abs(lens - fraction * total))) + 1


def split_for_speech(text: str, fraction: float = 0.25) -> tuple[str, str]:
    """(spoken part, remaining text)."""
    sents = split_sentences(text)
    k = spoken_quarter(sents, fraction)
    return " ".join(sents[:k]), " ".join(sents[k:])


def num_voices(tts: Any) -> int:
    voices = getattr(tts, "voices", None)
    return len(voices) if voices is not None else int(getattr(tts, "num_voices", 1))


def choose_voice(tts: Any, rng: np.random.Generator) -> int:
    return int(rng.integers(0, max(num_voices(tts), 1)))


def remaining_after(caption: str, transcript: str) -> str:
    """The caption without the sentences a video's narration already says."""
    said = set(split_sentences(transcript))
    rest = [s for s in split_sentences(caption) if s not in said]
    return " ".join(rest)
