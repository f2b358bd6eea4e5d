"""A built-in, deterministic text-to-"speech" synthesiser (no downloads, no espeak).

It turns text into speech-like audio that a tiny model can learn to transcribe and to
speak: every character has its own acoustic signature (vowels: harmonic spectra shaped
by two formants; consonants: band-limited noise bursts plus a weak voiced part; digits:
two-tone chords; spaces and punctuation: pauses), rendered at the pitch, rate and formant
scale of a voice. 44 voices by default, as the release used 44 voices for its
cross-modal data. Same (text, voice) -> same samples, always.

`TTS` is the pluggable interface the data pipelines use; `BuiltinTTS` implements it and
anything with the same call signature (e.g. a wrapper around a real TTS model or
espeak-ng, where present) can replace it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import string
from typing import Protocol

import numpy as np

SAMPLE_RATE = 16000
_VOWELS = {  # F1, F2 in Hz (adult male-ish averages)
    "a": (730, 1090), "e": (530, 1840), "i": (270, 2290), "o": (570, 840), "u": (300, 870), "y": (400, 2000),
}
_CONSONANTS = "bcdfghjklmnpqrstvwxz"


@dataclasses.dataclass(frozen=True)
class Voice:
    pitch_hz: float = 120.0
    chars_per_second: float = 12.0
    formant_scale: float = 1.0
    breathiness: float = 0.05


def voices(n: int = 44, seed: int = 0) -> list[Voice]:
    rng = np.random.default_rng(seed)
    return [Voice(pitch_hz=float(rng.uniform(85, 255)), chars_per_second=float(rng.uniform(10, 15)),
                  formant_scale=float(rng.uniform(0.85, 1.2)), breathiness=float(rng.uniform(0.01, 0.1)))
            for _ in range(n)]


def _char_seed(text: str, voice: Voice) -> int:
    return int.from_bytes(hashlib.sha1(f"{text}|{voice}".encode()).digest()[:8], "little")


def _harmonic(t: np.ndarray, f0: float, formants: tuple[float, ...], bw: float = 120.0) -> np.ndarray:
    out = np.zeros_like(t)
    for k in range(1, int(3800 // f0) + 1):
        f = k * f0
        amp = sum(np.exp(-0.5 * ((f - F) / bw) ** 2) for F in formants) + 0.02
        out += amp * np.sin(2 * np.pi * f * t)
    return out


@functools.lru_cache(maxsize=4096)
def _harmonic_segment(n: int, sample_rate: int, f0: float, formants: tuple[float, ...]) -> np.ndarray:
    """`_harmonic` over n samples, memoised (it has no randomness): a voice's vowels repeat."""
    out = _harmonic(np.arange(n) / sample_rate, f0, formants)
    out.setflags(write=False)
    return out


def _noise_band(n: int, centre: float, width: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spec *= np.exp(-0.5 * ((freqs - centre) / width) ** 2)
    x = np.fft.irfft(spec, n)
    return x / (np.abs(x).max() + 1e-9)


def _envelope(n: int, ramp: int) -> np.ndarray:
    env = np.ones(n)
    r = min(ramp, n // 2)
    if r:
        env[:r] = np.linspace(0, 1, r)
        env[-r:] = np.linspace(1, 0, r)
    return env


def synthesize(text: str, voice: Voice = Voice(), sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 waveform in [-1, 1] for `text` spoken by `voice`."""
    rng = np.random.default_rng(_char_seed(text, voice))
    seg = int(sample_rate / voice.chars_per_second)
    pieces = []
    for ch in text.lower():
        t = np.arange(seg) / sample_rate
        if ch in _VOWELS:
            f1, f2 = _VOWELS[ch]
            x = _harmonic_segment(seg, sample_rate, voice.pitch_hz, (f1 * voice.formant_scale, f2 * voice.formant_scale))
            x = x + voice.breathiness * rng.standard_normal(seg)
        elif ch in _CONSONANTS:
            i = _CONSONANTS.index(ch)
            centre = (1500 + 250 * i) * voice.formant_scale
            x = _noise_band(seg, centre, 300 + 20 * i, rng, sample_rate)
            if i % 2 == 0:  # "voiced" consonants carry a low harmonic murmur
                x = 0.6 * x + 0.4 * _harmonic_segment(seg, sample_rate, voice.pitch_hz, (250 + 30 * i,))
        elif ch in string.digits:
            d = int(ch)
            x = np.sin(2 * np.pi * (400 + 90 * d) * t) + np.sin(2 * np.pi * (1200 + 140 * d) * t)
        elif ch in ".,!?;:":
            x = np.zeros(2 * seg)
        else:  # space and anything else: a short pause
            x = np.zeros(seg // 2)
        x = x * _envelope(len(x), int(0.01 * sample_rate))
        pieces.append(x / (np.abs(x).max() + 1e-9) * 0.5 if np.any(x) else x)
    wav = np.concatenate(pieces) if pieces else np.zeros(0)
    return np.clip(wav, -1, 1).astype(np.float32)


def _piece_lengths(text: str, voice: Voice, sample_rate: int) -> list[tuple[str, int]]:
    """(character, samples) of each piece `synthesize` renders: one segment per letter or digit,
    two per punctuation mark, half a segment for a space or anything else."""
    seg = int(sample_rate / voice.chars_per_second)
    return [(ch, seg if ch in _VOWELS or ch in _CONSONANTS or ch in string.digits else
             2 * seg if ch in ".,!?;:" else seg // 2) for ch in text.lower()]


def num_samples(text: str, voice: Voice = Voice(), sample_rate: int = SAMPLE_RATE) -> int:
    """len(synthesize(text, voice, sample_rate)), without synthesising (for data planning)."""
    return sum(n for _, n in _piece_lengths(text, voice, sample_rate))


def voiced_mask(text: str, voice: Voice = Voice(), sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(len(synthesize(text, voice, sample_rate)),) bool: the samples `synthesize` renders at the
    voice's pitch (vowels and the voiced consonants' murmur)."""
    out = [np.full(n, ch in _VOWELS or (ch in _CONSONANTS and _CONSONANTS.index(ch) % 2 == 0))
           for ch, n in _piece_lengths(text, voice, sample_rate)]
    return np.concatenate(out) if out else np.zeros(0, bool)


class TTS(Protocol):
    """The pluggable TTS interface. Optionally also `num_samples(text, voice_id) -> int`
    (the length of the waveform it would return), which lets pipelines plan rows
    without synthesising."""

    sample_rate: int

    def __call__(self, text: str, voice_id: int) -> np.ndarray: ...


class BuiltinTTS:
    """The default TTS: `synthesize` over a fixed list of voices."""

    def __init__(self, num_voices: int = 44, seed: int = 0, sample_rate: int = SAMPLE_RATE):
        self.voices = voices(num_voices, seed)
        self.sample_rate = sample_rate

    def __call__(self, text: str, voice_id: int) -> np.ndarray:
        return synthesize(text, self.voices[voice_id % len(self.voices)], self.sample_rate)

    def num_samples(self, text: str, voice_id: int) -> int:
        return num_samples(text, self.voices[voice_id % len(self.voices)], self.sample_rate)

    def pitch(self, text: str, voice_id: int) -> np.ndarray:
        """Per sample of `self(text, voice_id)`: the voice's pitch in Hz where it is voiced, else 0."""
        v = self.voices[voice_id % len(self.voices)]
        return np.where(voiced_mask(text, v, self.sample_rate), v.pitch_hz, 0.0).astype(np.float32)
