"""TFDS builders for image captions / image QA and interleaved image-text documents."""

from __future__ import annotations

from omni_jax.data.builders import OmniBuilder, bytes_feature, bytes_list_feature, text_feature


class OmniImages(OmniBuilder):
    """Images (PNG/JPEG bytes) with a caption and a question/answer pair."""

    FEATURES = {"id": text_feature, "image": bytes_feature, "caption": text_feature,
                "question": text_feature, "answer": text_feature}
    SUBSET = "images"
    MEDIA = ("image",)


class OmniInterleavedImages(OmniBuilder):
    """Documents with `<|image|>` markers in `text`, one encoded image per marker."""

    FEATURES = {"id": text_feature, "text": text_feature, "images": bytes_list_feature}
    SUBSET = "interleaved_images"
    MEDIA = ("images",)
