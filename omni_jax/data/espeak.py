"""A TTS (omni_jax/data/speech_synth.TTS interface) backed by espeak-ng, where installed.

Real (formant-synthesised) English speech for a small real-speech set: the builder
config `shapes_espeak` of the audio builders and `config.data.tts.kind="espeak"` use it.
Voices are espeak-ng's variants (male m1-m7, female f1-f5, ...), chosen by voice id.
Output is resampled to 16 kHz. Deterministic for a given espeak-ng version.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from omni_jax.data import media
from omni_jax.data.audio_features import decode_wav

VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak", "whisper")


class EspeakTTS:
    def __init__(self, binary: str = "espeak-ng", language: str = "en", words_per_minute: int = 150,
                 variants: tuple[str, ...] = VARIANTS):
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise RuntimeError(f"{binary!r} is not installed (e.g. apt-get install espeak-ng); use the built-in "
                               "synthesiser instead (config.data.tts.kind='builtin', builder config 'shapes')")
        self.language, self.wpm, self.voices = language, int(words_per_minute), tuple(variants)
        self.sample_rate = media.SAMPLE_RATE

    def __call__(self, text: str, voice_id: int) -> np.ndarray:
        voice = f"{self.language}+{self.voices[voice_id % len(self.voices)]}"
        out = subprocess.run([self.binary, "-v", voice, "-s", str(self.wpm), "--stdout", text],
                             check=True, capture_output=True).stdout
        return decode_wav(out, self.sample_rate)
