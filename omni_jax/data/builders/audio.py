"""TFDS builders for audio-text data: ASR / TTS / speech translation, spoken QA with
speech replies, interleaved text-audio documents."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from omni_jax.data.builders import SPEECH_CONFIGS, OmniBuilder, bytes_feature, bytes_list_feature, text_feature


def voice():
    return tfds.features.Tensor(shape=(), dtype=np.int32)


class OmniSpeech(OmniBuilder):
    """Speech (WAV/FLAC bytes) with its transcript and a translation."""

    BUILDER_CONFIGS = SPEECH_CONFIGS
    FEATURES = {"id": text_feature, "audio": bytes_feature, "transcript": text_feature,
                "translation": text_feature, "voice": voice}
    SUBSET = "speech"
    MEDIA = ("audio",)


class OmniSpokenQa(OmniBuilder):
    """A spoken question (`audio`, `transcript`) with a text answer and a spoken answer."""

    BUILDER_CONFIGS = SPEECH_CONFIGS
    FEATURES = {"id": text_feature, "audio": bytes_feature, "transcript": text_feature,
                "answer": text_feature, "answer_audio": bytes_feature}
    SUBSET = "spoken_qa"
    MEDIA = ("audio", "answer_audio")


class OmniInterleavedAudio(OmniBuilder):
    """Documents with `<|audio|>` markers in `text`, one clip per marker (+ transcripts)."""

    BUILDER_CONFIGS = SPEECH_CONFIGS
    FEATURES = {"id": text_feature, "text": text_feature, "audios": bytes_list_feature,
                "transcripts": bytes_list_feature}
    SUBSET = "interleaved_audio"
    MEDIA = ("audios",)
