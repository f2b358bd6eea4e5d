"""Training Baichuan-Omni-1.5 on omni batches: the task of every stage in ARCHITECTURE.md 1.8.

Model: omni_jax/models/omni.py (`Omni15`, one tree: llm, visual, visual_bridge, audio_encoder,
audio_bridge, audio_decoder, audio_embed, audio_head, flow_matching, vocoder; model state = the
RVQ codebooks, frozen here: they train in the audio-tokenizer stage).
Batches: omni_jax/data/omni_batch.py (rows first, static shapes, host-built gather indices).

Loss = text_weight * (next-token cross entropy on `loss_mask` / #text targets)
     + audio_weight * (audio-head cross entropy over the 8 codebooks on the speech targets /
                       #code targets)
The audio head runs only at the positions that carry a target, gathered to a static
F = `OmniShapes.speech_frame_budget` per row (`config.data.shapes.max_speech_frames`, by
default max_speech_chunks * (tokens per chunk + 1)); the packer never puts more into a row,
so the head input is (rows * F, depth, embed) whatever the sequence length, on the LLM's
final normed hidden states there, teacher forced with the target frame's code embeddings
(ARCHITECTURE.md 1.5). Targets beyond F (only possible with hand-made batches) are counted
in the `audio_frames_dropped` metric.
Stages differ only in config: which parameters train (regex groups), learning rates, data.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from omni_jax.data.omni_batch import TEXT_FIELDS, OmniShapes, batch_spec
from omni_jax.models.audio_head import audio_head_loss_sum, gather_frames, take_positions
from omni_jax.models.omni import Omni15, Omni15Config, speech_head_targets
from omni_jax.tasks.base import Task, config_section
from omni_jax.tasks.losses import llm_loss_sums

VISION_FIELDS = ("vision_patches", "vision_positions", "vision_segment_ids", "vision_token_index")
AUDIO_FIELDS = ("audio_mels", "audio_mel_lengths", "audio_token_index")
SPEECH_FIELDS = ("speech_mels", "speech_mel_lengths", "speech_token_index", "speech_target_index",
                 "speech_target_end", "speech_loss_mask")
LOSS_DEFAULTS = dict(text=1.0, audio=1.0)
MODALITIES = ("vision", "audio", "speech")


class OmniTask(Task):
    """Baichuan-Omni-1.5 on omni batches (text + audio-head losses). `OmniV1Task`
    (omni_jax/tasks/omni_v1.py) shares everything but the model and the audio head."""

    vision_mode = "navit"
    loss_defaults = LOSS_DEFAULTS

    def __init__(self, config: Any):
        super().__init__(config)
        self.model_cfg, self.model = self.build_model(config.model)
        self.shapes = OmniShapes.from_config(config.data)
        if self.shapes.vision_mode != self.vision_mode:
            raise ValueError(f"the {type(self).__name__} reads vision_mode={self.vision_mode!r} inputs: set "
                             f"config.data.media.vision_mode={self.vision_mode!r} (NaViT patches are the 1.5 "
                             "model's input, AnyRes tiles the v1 model's)")
        self.loss_cfg = config_section(config, "loss", self.loss_defaults, type(self).__name__)
        self.fields = self.batch_fields(self.shapes)
        self.check_data()

    def build_model(self, model_config):
        cfg = Omni15Config.from_config(model_config)
        return cfg, Omni15(cfg)

    def batch_fields(self, s: OmniShapes) -> tuple[str, ...]:
        self.max_head_positions = s.speech_frame_budget
        m = self.modalities
        return (TEXT_FIELDS + (VISION_FIELDS if s.max_patches and "vision" in m else ())
                + (AUDIO_FIELDS if s.max_audio_chunks and "audio" in m else ())
                + (SPEECH_FIELDS if s.max_speech_chunks and "speech" in m else ()))

    @property
    def modalities(self) -> tuple[str, ...]:
        """`config.modalities`: the media a stage's batches carry (a stage config sets it from its
        mixture, configs/omni15/stages.py); absent = every modality with a budget. The step then
        never runs the encoders of media the stage has none of (a text stage is ~2x faster)."""
        given = self.config.get("modalities", None)
        if given is None:
            return MODALITIES
        unknown = sorted(set(given) - set(MODALITIES))
        if unknown:
            raise ValueError(f"config.modalities: unknown {unknown}; use some of {list(MODALITIES)}")
        return tuple(given)

    def check_data(self) -> None:
        """Data shapes the model cannot read (the v1 task checks its tile and audio geometry)."""

    def text_loss(self, params, h, batch, norms):
        llm_cfg = self.model_cfg.llm
        nll, correct, z = llm_loss_sums(llm_cfg, params["llm"], h, batch["targets"], batch["loss_mask"])
        text_loss = (nll + z) / norms["text"]
        metrics = {"text_loss": text_loss, "text_accuracy": correct / norms["text"],
                   "tokens": batch["loss_mask"].sum()}
        if llm_cfg.z_loss:
            metrics["text_z_loss"] = z / norms["text"]
        return self.loss_cfg["text"] * text_loss, metrics

    # ---- parameters and state ----

    def init(self, rng):
        return self.model.init(rng, mel_frames=min(self.shapes.mel_frames, 200))

    def init_state(self, rng):
        return self.model.init_state(rng)

    def batch_spec(self, global_batch: int):
        return batch_spec(self.shapes, global_batch, fields=self.fields)

    # ---- losses ----

    def norms(self, batch):
        out = {"text": jnp.maximum(batch["loss_mask"].sum(), 1.0)}
        if "speech_loss_mask" in batch:
            frame = (batch["speech_target_index"] >= 0) & (batch["speech_target_end"] == 0)
            end = batch["speech_target_end"] > 0
            w = batch["speech_loss_mask"]
            depth = self.model_cfg.audio_head.depth
            out["audio"] = jnp.maximum((w * (frame * depth + end)).sum(), 1.0)
            out["audio_frames"] = jnp.maximum((w * (frame | end)).sum(), 1.0)
        return out

    def loss(self, params, batch, rng, norms):
        raise TypeError("the omni task needs its model state (the RVQ codebooks): the trainer calls loss_with_state")

    def loss_with_state(self, params, state, batch, rng, norms):
        del rng
        h, extras = self.model.hidden(params, state, batch)
        objective, metrics = self.text_loss(params, h, batch, norms)
        if "speech_codes" in extras:
            sizes = self.model_cfg.audio_head.codebook_sizes
            codes, w = speech_head_targets(batch, extras["speech_codes"], sizes)
            idx, valid, count = gather_frames(w, self.max_head_positions)
            wp = take_positions(w, idx) * valid[..., None]
            a_nll, per = audio_head_loss_sum(self.model.audio_embed, self.model.audio_head, params,
                                             take_positions(h, idx), take_positions(codes, idx), wp)
            audio_loss = a_nll / norms["audio"]
            objective = objective + self.loss_cfg["audio"] * audio_loss
            metrics.update(audio_loss=audio_loss, audio_accuracy_0=per["correct_0"] / norms["audio_frames"],
                           audio_frames_dropped=jnp.maximum(count - self.max_head_positions, 0).sum()
                           .astype(jnp.float32))
        metrics["loss"] = objective
        return objective, metrics, None

    # ---- data ----

    def make_data(self, stage, *, start_step, process_index, process_count, rows=None):
        from omni_jax.data.formats import mixture_needs
        from omni_jax.data.omni_pipeline import OmniPipeline, make_omni_iterator

        pipe = OmniPipeline(self.config, stage.name, process_index=process_index, process_count=process_count)
        needs = set(mixture_needs(pipe.data.get("mixture")))
        if not needs <= set(self.modalities):
            raise ValueError(f"stage {stage.name}: its data mixture uses {sorted(needs)} but its batches carry only "
                             f"{list(self.modalities)}: set config.stages.{stage.name}.task_config.modalities to "
                             f"{sorted(needs | set(self.modalities))}")
        return make_omni_iterator(self.config, stage=stage.name, start_step=start_step, process_index=process_index,
                                  process_count=process_count, fields=self.fields, pipeline=pipe, rows=rows)

    # ---- evaluation and weights ----

    def evaluate(self, params, state, workdir: str, **kw) -> dict:
        """omni_eval.evaluate: final=True (end of run: WAVs, report) or the periodic, text-only one."""
        from omni_jax.tasks.omni_eval import evaluate

        return evaluate(self, params, state, workdir, **kw)

    def _import_options(self) -> dict:
        """config.init.exclude: components to keep initialising (e.g. the training-only
        audio_text_adapter, or the vocoder when not importing one); config.init.vocoder: where
        the HiFT vocoder state dict is (default: <checkpoint>/vocoder or the release's folders)."""
        init = self.config.init
        return dict(exclude=tuple(init.get("exclude", ()) or ()), vocoder_src=init.get("vocoder", None) or None)

    def import_params(self, path, abstract_params):
        from omni_jax.convert.omni import import_release

        return import_release(path, self.model_cfg, abstract_params, None, **self._import_options())[0]

    def import_state(self, path, abstract_state):
        from omni_jax.convert.omni import import_release

        return import_release(path, self.model_cfg, None, abstract_state, **self._import_options())[1]
