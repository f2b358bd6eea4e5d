"""TFDS builder for video-text data: encoded frames at `fps`, an optional audio track."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from omni_jax.data.builders import SPEECH_CONFIGS, OmniBuilder, bytes_feature, bytes_list_feature, text_feature


def fps():
    return tfds.features.Tensor(shape=(), dtype=np.float32)


class OmniVideos(OmniBuilder):
    """Videos as JPEG/PNG frames (stored at `fps`), captions, QA and an optional audio
    track (`audio`, WAV/FLAC bytes or empty) with its transcript."""

    BUILDER_CONFIGS = SPEECH_CONFIGS
    FEATURES = {"id": text_feature, "frames": bytes_list_feature, "fps": fps, "audio": bytes_feature,
                "audio_transcript": text_feature, "caption": text_feature, "question": text_feature,
                "answer": text_feature}
    SUBSET = "videos"
    MEDIA = ("frames", "audio")
