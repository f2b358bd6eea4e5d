"""Training Baichuan-Omni (v1) on omni batches: the task of every v1 stage in ARCHITECTURE.md 2.

Model: omni_jax/models/omni_v1.py (`OmniV1`: llm, siglip, v1_projector, v1_video_projector,
audio_encoder, v1_audio_projector; no model state). Batches: omni_jax/data/omni_batch.py with
`config.data.media.vision_mode="tiles"` (SigLIP AnyRes tiles) and continuous-audio chunks.

Loss = next-token cross entropy on `loss_mask` / #text targets (v1 has no speech output).
Everything else (data, norms, held-out evaluation) is the 1.5 task's (omni_jax/tasks/omni.py).

Weights: `config.init.checkpoint` is a directory holding Hugging Face checkpoints of the parts
v1 is built from, each in its own sub-directory (any subset): `llm/` (Qwen2 / Qwen2.5),
`siglip/` (SiglipVisionModel or SiglipModel), `audio_encoder/` (WhisperModel,
WhisperForConditionalGeneration or a bare WhisperEncoder); the projectors start fresh, as in
the report (omni_jax/convert/omni_v1.py).
"""

from __future__ import annotations

from typing import Any

from omni_jax.data.omni_batch import TEXT_FIELDS, OmniShapes
from omni_jax.models.omni import check_fit
from omni_jax.models.omni_v1 import TRAINING_ONLY, OmniV1, OmniV1Config
from omni_jax.tasks.base import Task
from omni_jax.tasks.omni import AUDIO_FIELDS, OmniTask

TILE_FIELDS = ("vision_tiles", "vision_tile_items", "vision_tile_video", "vision_token_index")


class OmniV1Task(OmniTask):
    vision_mode = "tiles"
    loss_defaults = dict(text=1.0)
    training_only = TRAINING_ONLY  # audio_encoder_pretrain's CTC head (omni_jax/tasks/omni_v1_audio_ctc.py)

    def build_model(self, model_config):
        cfg = OmniV1Config.from_config(model_config)
        return cfg, OmniV1(cfg)

    def batch_fields(self, s: OmniShapes) -> tuple[str, ...]:
        if s.max_speech_chunks:
            raise ValueError(f"config.data.shapes.max_speech_chunks={s.max_speech_chunks}: Baichuan-Omni v1 has no "
                             "speech output; set it to 0 (and use formats without speech replies)")
        self.max_head_positions = 0
        m = self.modalities
        return (TEXT_FIELDS + (TILE_FIELDS if s.max_tiles and "vision" in m else ())
                + (AUDIO_FIELDS if s.max_audio_chunks and "audio" in m else ()))

    def check_data(self) -> None:
        from omni_jax.data.media_io import MediaConfig

        m, c = MediaConfig.from_dict(self.config.data.get("media")), self.model_cfg
        p, enc = c.v1_projector, c.audio_encoder
        checks = [
            (m.tile_size == c.siglip.image_size, f"config.data.media.tile_size={m.tile_size} must equal "
                                                 f"config.model.siglip.image_size={c.siglip.image_size}"),
            (m.tokens_per_tile == p.image_tokens, f"config.data.media.tokens_per_tile={m.tokens_per_tile} must equal "
                                                  f"the projector's {p.image_tokens} (config.model.v1_projector.pool_grid "
                                                  f"{p.pool_grid})"),
            (m.video_tokens_per_frame == p.video_tokens,
             f"config.data.media.video_tokens_per_frame={m.video_tokens_per_frame} must equal the video projector's "
             f"{p.video_tokens} (config.model.v1_projector.video_pool_grid {p.video_pool_grid})"),
            (m.audio_pool == c.v1_audio_projector.rate,
             f"config.data.media.audio_pool={m.audio_pool} (encoder frames per audio token) must equal "
             f"config.model.v1_audio_projector.rate={c.v1_audio_projector.rate}"),
            (self.shapes.n_mels == enc.num_mel_bins, f"config.data.shapes.n_mels={self.shapes.n_mels} must equal "
                                                     f"config.model.audio_encoder.num_mel_bins={enc.num_mel_bins}"),
            (enc.output_lengths(self.shapes.mel_frames) <= enc.max_source_positions,
             f"config.data.shapes.mel_frames={self.shapes.mel_frames} give more encoder frames than "
             f"config.model.audio_encoder.max_source_positions={enc.max_source_positions}"),
        ]
        check_fit(checks, "the v1 data and model do not fit together")

    def init_state(self, rng):
        return None

    def loss(self, params, batch, rng, norms):
        del rng
        h, _ = self.model.hidden(params, None, batch)
        objective, metrics = self.text_loss(params, h, batch, norms)
        metrics["loss"] = objective
        return objective, metrics

    loss_with_state = Task.loss_with_state  # no model state: `loss` (the 1.5 task's has state)

    def import_params(self, path: str, abstract_params: Any) -> Any:
        from omni_jax.convert.omni_v1 import import_hf_parts

        return import_hf_parts(path, self.model_cfg, abstract_params)

    def import_state(self, path, abstract_state):
        return None
