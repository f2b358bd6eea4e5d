"""TFDS builder for pure text."""

from __future__ import annotations

from omni_jax.data.builders import OmniBuilder, text_feature


class OmniText(OmniBuilder):
    """Plain text documents."""

    FEATURES = {"id": text_feature, "text": text_feature}
    SUBSET = "text"
