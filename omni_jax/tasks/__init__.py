"""Tasks: what the trainer trains (model, loss, batch layout, conversion). See base.py."""

from __future__ import annotations

from typing import Any

from omni_jax.tasks.base import Task

_REGISTRY: dict[str, str] = {
    "lm": "omni_jax.tasks.lm:LanguageModelTask",
    "audio_tokenizer": "omni_jax.tasks.audio_tokenizer:AudioTokenizerTask",
    "flow_matching": "omni_jax.tasks.flow_matching:FlowMatchingTask",
    "vocoder": "omni_jax.tasks.vocoder:VocoderTask",
    "omni": "omni_jax.tasks.omni:OmniTask",
    "omni_v1": "omni_jax.tasks.omni_v1:OmniV1Task",
    "omni_v1_boundary": "omni_jax.tasks.omni_v1_boundary:OmniV1BoundaryTask",
    "omni_v1_audio_ctc": "omni_jax.tasks.omni_v1_audio_ctc:OmniV1AudioCTCTask",
}


def register(name: str, target: str) -> None:
    """Registers 'module.path:ClassName' under `config.task` name `name`."""
    _REGISTRY[name] = target


def get_task(config: Any) -> Task:
    import importlib

    name = config.task
    if name not in _REGISTRY:
        raise ValueError(f"config.task={name!r} is not a known task; known: {sorted(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)(config)
