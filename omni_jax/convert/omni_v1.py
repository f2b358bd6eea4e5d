"""Baichuan-Omni (v1) from the Hugging Face checkpoints of its parts (ARCHITECTURE.md 2).

v1's weights were never released; the report builds it from a 7B LLM, SigLIP so400m and the
Whisper-large-v3 encoder, with freshly initialised projectors. `import_hf_parts` reads a
directory with one sub-directory per part (any subset; safetensors only, never pickles):

  llm/            Qwen2ForCausalLM            (model.*, lm_head.weight)      -> llm
  siglip/         SiglipModel                 (vision_model.* + text_model.*: the text tower is skipped)
                  or SiglipVisionModel        (embeddings.*, encoder.*, ...)  -> siglip
  audio_encoder/  WhisperModel / WhisperForConditionalGeneration (model.encoder.*; the decoder is skipped)
                  or a bare WhisperEncoder    (conv1.*, layers.*, ...)        -> audio_encoder

Each part goes through that branch's own rules (omni_jax/convert/qwen2.py, vision.py,
audio.py) with every check of `import_params` (missing / misshapen / unexpected tensors are
errors naming them).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from omni_jax.convert import audio as ca
from omni_jax.convert import qwen2 as cq
from omni_jax.convert import vision as cv
from omni_jax.convert.mapping import ConversionError, import_params
from omni_jax.convert.safetensors_io import open_state_dict

PARTS = ("llm", "siglip", "audio_encoder")
SIGLIP_IGNORE = (r"text_model\..*", r"logit_scale", r"logit_bias")
WHISPER_DECODER_IGNORE = (r"(model\.)?decoder\..*", r"proj_out\.weight")


def _whisper_prefix(names) -> str:
    for prefix in ("model.encoder.", "encoder."):
        if any(n.startswith(prefix) for n in names):
            return prefix
    return ""


def import_hf_parts(path: str, cfg: Any, abstract_params: Mapping[str, Any]) -> dict[str, Any]:
    """{part: params (numpy)} for every part whose sub-directory `path/<part>` exists."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"config.init.checkpoint={path!r} is not a directory")
    found = [p for p in PARTS if os.path.isdir(os.path.join(path, p))]
    if not found:
        raise ConversionError(
            f"{path} has none of the v1 part directories {list(PARTS)}: put the Hugging Face checkpoints there "
            f"(e.g. {path}/llm = Qwen2.5-7B, {path}/siglip = siglip-so400m-patch14-384, "
            f"{path}/audio_encoder = whisper-large-v3)")
    out = {}
    for part in found:
        src = os.path.join(path, part)
        sd = open_state_dict(src)
        if part == "llm":
            out[part] = import_params(sd, cq.rules(cfg.llm, "hf"), abstract_params["llm"], ignore=cq.IGNORE, source=src)
        elif part == "siglip":
            ignore = cv.IGNORE + SIGLIP_IGNORE + (() if cfg.siglip.use_head else cv.SIGLIP_HEAD_IGNORE)
            prefix = "vision_model." if any(n.startswith("vision_model.") for n in sd) else ""
            out[part] = import_params(sd, cv.siglip_rules(cfg.siglip, prefix=prefix, ours=""), abstract_params["siglip"],
                                      ignore=ignore, source=src)
        else:
            prefix = _whisper_prefix(sd.keys())
            out[part] = ca.import_encoder(sd, cfg.audio_encoder, abstract_params["audio_encoder"], "hf", prefix,
                                          ignore=WHISPER_DECODER_IGNORE, source=src)
    return out
