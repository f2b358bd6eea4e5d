"""Default data mixtures for every training stage of ARCHITECTURE.md 1.8 (1.5) and 2 (v1).

Each entry is a `config.data.mixture` (component -> dataset, split, format, weight) over
the embedded default dataset (omni_jax/data/default_dataset.py), following the stage's
published data recipe as far as the embedded data can stand in for it (e.g. image QA for
OCR/charts). Weights are fractions of packed rows. Point `dataset` at your own TFDS
builders (omni_jax/data/builders, ManifestConfig) to train on real data with the same
formats.

    from omni_jax.data.stage_mixtures import mixture
    config.stages.image_text_1.data = {"mixture": mixture("image_text_1")}
"""

from __future__ import annotations

from typing import Any


def _c(dataset: str, fmt: str, weight: float, **kw) -> dict[str, Any]:
    return {"dataset": dataset, "format": fmt, "weight": weight, "split": "train", **kw}


def _recipes(cfg: str) -> dict[str, dict[str, dict[str, Any]]]:
    img, il_img, vid = f"omni_images/{cfg}", f"omni_interleaved_images/{cfg}", f"omni_videos/{cfg}"
    sp, sqa, il_au, txt = f"omni_speech/{cfg}", f"omni_spoken_qa/{cfg}", f"omni_interleaved_audio/{cfg}", f"omni_text/{cfg}"
    audio_02 = {"asr": _c(sp, "asr", 0.05), "audio_qa": _c(sqa, "audio_qa", 0.05),
                "speech_translation": _c(sp, "speech_translation", 0.04), "tts": _c(sp, "tts", 0.03),
                "interleaved_text_audio": _c(il_au, "interleaved_text_audio", 0.03)}
    audio_in_02 = {"asr": _c(sp, "asr", 0.08), "audio_qa": _c(sqa, "audio_qa", 0.06),
                   "speech_translation": _c(sp, "speech_translation", 0.06)}
    image_04 = {"caption": _c(img, "caption", 0.15), "image_qa": _c(img, "image_qa", 0.15),
                "interleaved_image_text": _c(il_img, "interleaved_image_text", 0.10)}
    return {
        # ---- Baichuan-Omni-1.5 (ARCHITECTURE.md 1.8) ----
        "image_text_1": {"caption": _c(img, "caption", 1.0)},
        "image_text_2": {"interleaved_image_text": _c(il_img, "interleaved_image_text", 0.2),
                         "caption": _c(img, "caption", 0.2), "image_qa": _c(img, "image_qa", 0.2),
                         "text": _c(txt, "text", 0.4)},
        "image_audio_text_1": {"asr": _c(sp, "asr", 0.35), "tts": _c(sp, "tts", 0.35),
                               "interleaved_text_audio": _c(il_au, "interleaved_text_audio", 0.3)},
        "image_audio_text_2": {**audio_02, **image_04, "text": _c(txt, "text", 0.4)},
        "omni_pretrain": {**audio_02, **image_04, "video_caption": _c(vid, "video_caption", 0.08),
                          "video_qa": _c(vid, "video_qa", 0.06), "crossmodal_image": _c(img, "crossmodal_image", 0.08),
                          "crossmodal_video": _c(vid, "crossmodal_video", 0.06), "text": _c(txt, "text", 0.2)},
        "sft_1": {"image_qa": _c(img, "image_qa", 0.25), "video_qa": _c(vid, "video_qa", 0.15),
                  "audio_qa": _c(sqa, "audio_qa", 0.15), "asr": _c(sp, "asr", 0.15),
                  "speech_translation": _c(sp, "speech_translation", 0.1),
                  "crossmodal_image": _c(img, "crossmodal_image", 0.1), "caption": _c(img, "caption", 0.1)},
        "sft_2": {"speech_qa": _c(sqa, "speech_qa", 0.6), "tts": _c(sp, "tts", 0.4)},
        # ---- Baichuan-Omni v1 (ARCHITECTURE.md 2) ----
        "v1_image_language_1": {"caption": _c(img, "caption", 1.0)},
        "v1_image_language_2": {"caption": _c(img, "caption", 0.5), "image_qa": _c(img, "image_qa", 0.5)},
        "v1_image_language_3": {**image_04, "text": _c(txt, "text", 0.4)},
        "v1_video_language": {"caption": _c(img, "caption", 0.3), "video_caption": _c(vid, "video_caption", 0.4),
                              "video_qa": _c(vid, "video_qa", 0.3)},
        "v1_audio_language": {"asr": _c(sp, "asr", 0.5), "audio_qa": _c(sqa, "audio_qa", 0.25),
                              "speech_translation": _c(sp, "speech_translation", 0.25)},
        # v1 reads audio but never speaks: its audio share is input-audio formats only
        "v1_omni_alignment": {**audio_in_02, **image_04, "video_qa": _c(vid, "video_qa", 0.1),
                              "crossmodal_image": _c(img, "crossmodal_image", 0.1), "text": _c(txt, "text", 0.2)},
        "v1_sft": {"image_qa": _c(img, "image_qa", 0.3), "video_qa": _c(vid, "video_qa", 0.2),
                   "audio_qa": _c(sqa, "audio_qa", 0.2), "asr": _c(sp, "asr", 0.15),
                   "speech_translation": _c(sp, "speech_translation", 0.15)},
    }


STAGES = tuple(_recipes("shapes"))


def mixture(stage: str, dataset_config: str = "shapes") -> dict[str, dict[str, Any]]:
    """The default mixture of `stage` (one of STAGES) over the embedded dataset
    (`dataset_config` "shapes", or "shapes_tiny" for tests)."""
    recipes = _recipes(dataset_config)
    if stage not in recipes:
        raise ValueError(f"no default mixture for stage {stage!r}; known: {sorted(recipes)}")
    return recipes[stage]


def evaluation_sets(dataset_config: str = "shapes") -> dict[str, dict[str, Any]]:
    """Held-out test splits for evaluation: image QA with answers, ASR with transcripts,
    spoken questions with speech replies (and their text answers), video QA."""
    return {
        "image_qa": {"dataset": f"omni_images/{dataset_config}", "split": "test", "format": "image_qa", "weight": 1.0},
        "asr": {"dataset": f"omni_speech/{dataset_config}", "split": "test", "format": "asr", "weight": 1.0},
        "speech_qa": {"dataset": f"omni_spoken_qa/{dataset_config}", "split": "test", "format": "speech_qa",
                      "weight": 1.0},
        "video_qa": {"dataset": f"omni_videos/{dataset_config}", "split": "test", "format": "video_qa", "weight": 1.0},
    }
