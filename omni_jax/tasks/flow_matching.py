"""Training the flow-matching mel decoder (prenet + U-Net) with conditional flow matching.

Batch fields (batch rows first, static length T mel frames at 50 Hz):
  hidden    f32 (B, T, prenet_in_dim)  the audio decoder's hidden states before dconv2
  mel       f32 (B, T, n_mels)         target 24 kHz log-mel (x1)
  mel_mask  f32 (B, T)                 1 on valid frames

Loss (omni_jax/models/flow_matching.py): loss_weight * CFM L1 + prior_loss_weight * prenet
prior L1, both sums over valid frames x bins divided by the global count (exact gradient
accumulation). The release trains this decoder in its own stage with the LLM frozen; the
params live under `flow_matching/` (the omni model's top-level name).

`config.data.source` says what the rows are:
  "synthetic" (default)  the fields above from a synthetic set (omni_jax/data/synthetic_speech.py:
                         random condition vectors standing in for the decoder states), `max_frames`;
  "speech"               utterances of the embedded speech (omni_jax/data/speech_decoder_data.py):
                         waveform f32 (B, S) 16 kHz, num_samples i32 (B,), mel f32 (B, T, n_mels)
                         their 24 kHz vocoder log-mel, mel_frames i32 (B,), T = S / 320. The
                         condition is computed here, as the model will see it when it speaks: the
                         run's audio tokenizer (audio_encoder / audio_bridge / audio_decoder and its
                         RVQ codebooks, read from the run's parameters and model state, frozen by the
                         stage's rules) encodes the clip to codes and decodes them to the 50 Hz states
                         before dconv2 (AudioTokenizer.hidden_states_before_dconv2), the decoder's input
                         at generation (omni_jax/tasks/omni_eval.py `synthesizer`). Valid frames: the
                         fewer of the states' (4 x codes - 1) and the mel's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from omni_jax.models.flow_matching import FlowMatchingConfig, FlowMatchingDecoder, flow_matching_loss_sums
from omni_jax.ops import mel_jax
from omni_jax.tasks.base import Task
from omni_jax.train.rng import ROW_IDS, row_keys

AXES3 = ("activation_batch", "activation_length", "activation_mel")
AXES2 = ("activation_batch", "activation_length")
SOURCES = ("synthetic", "speech")
TOKENIZER_MODULES = ("audio_encoder", "audio_bridge", "audio_decoder")


class FlowMatchingTask(Task):
    row_rng = True

    def __init__(self, config: Any):
        super().__init__(config)
        self.model_cfg = FlowMatchingConfig.from_dict(config.model.flow_matching.to_dict(), "config.model.flow_matching")
        self.model = FlowMatchingDecoder(self.model_cfg)
        self.source = str(config.data.get("source", "synthetic"))
        if self.source not in SOURCES:
            raise ValueError(f"config.data.source={self.source!r}; use one of {SOURCES}")
        self.tokenizer = None
        if self.source == "synthetic":
            self.frames = int(config.data.max_frames)
            return
        from omni_jax.data.speech_decoder_data import MEL_HOP_16K, SOURCE_RATE
        from omni_jax.models.audio_tokenizer import AudioTokenizer, AudioTokenizerConfig

        if "audio" not in config.model:
            raise ValueError("config.data.source='speech' encodes the clips with the run's audio tokenizer: "
                             "config.model.audio is missing (use it in an omni run, after the tokenizer stage)")
        self.tok_cfg = AudioTokenizerConfig.from_dict(config.model.audio.to_dict(), "config.model.audio")
        if self.tok_cfg.decoder.d_model != self.model_cfg.prenet_in_dim:
            raise ValueError(f"config.model.flow_matching.prenet_in_dim={self.model_cfg.prenet_in_dim} must equal the "
                             f"audio decoder's width config.model.audio.decoder.d_model={self.tok_cfg.decoder.d_model}")
        self.tokenizer = AudioTokenizer(self.tok_cfg)
        self.samples = int(round(float(config.data.chunk_seconds) * SOURCE_RATE))
        self.frames = self.samples // MEL_HOP_16K
        self.mel_frames = self.samples // mel_jax.WHISPER_HOP

    def init(self, rng):
        c, t = self.model_cfg, self.frames
        out = {"flow_matching": self.model.init(
            rng, jnp.zeros((1, t, c.prenet_in_dim)), jnp.ones((1, t)), jnp.zeros((1, t, c.n_mels)), jnp.zeros((1,)))["params"]}
        if self.tokenizer is not None:  # the run's tokenizer: the union with the omni tree gives the trained one
            mel = jnp.zeros((1, self.tok_cfg.encoder.num_mel_bins, self.mel_frames))
            v = self.tokenizer.init(jax.random.fold_in(rng, 1), mel, jnp.full((1,), self.mel_frames, jnp.int32))
            out.update({k: v["params"][k] for k in TOKENIZER_MODULES})
        return out

    def init_state(self, rng):
        if self.tokenizer is None:
            return None
        from omni_jax.models.audio_tokenizer import AudioTokenizer

        return self.tokenizer.init(rng, method=AudioTokenizer.init_codebooks)["vq_stats"]

    def batch_spec(self, global_batch: int):
        c, t, f32, i32 = self.model_cfg, self.frames, jnp.float32, jnp.int32
        if self.tokenizer is not None:
            return {
                "waveform": (jax.ShapeDtypeStruct((global_batch, self.samples), f32), ("activation_batch", None)),
                "num_samples": (jax.ShapeDtypeStruct((global_batch,), i32), ("activation_batch",)),
                "mel": (jax.ShapeDtypeStruct((global_batch, t, c.n_mels), f32), AXES3),
                "mel_frames": (jax.ShapeDtypeStruct((global_batch,), i32), ("activation_batch",)),
            }
        return {
            "hidden": (jax.ShapeDtypeStruct((global_batch, t, c.prenet_in_dim), f32), AXES3),
            "mel": (jax.ShapeDtypeStruct((global_batch, t, c.n_mels), f32), AXES3),
            "mel_mask": (jax.ShapeDtypeStruct((global_batch, t), f32), AXES2),
        }

    def _speech_mask(self, batch):
        """(B, T) valid frames of speech rows: the fewer of the decoder states' (4 x codes - 1) and
        the mel's frames (from the counts alone, so `norms` and the loss agree)."""
        codes = self.tok_cfg.code_lengths(mel_jax.whisper_valid_frames(batch["num_samples"], self.mel_frames))
        n = jnp.minimum(self.tok_cfg.decoder.hidden_frames(codes), batch["mel_frames"])
        return (jnp.arange(self.frames)[None] < n[:, None]).astype(jnp.float32)

    def norms(self, batch):
        mask = batch["mel_mask"] if self.tokenizer is None else self._speech_mask(batch)
        return {"values": jnp.maximum(mask.sum() * self.model_cfg.n_mels, 1.0)}

    def speech_condition(self, params, state, batch):
        """Speech rows -> the tokenizer decoder's 50 Hz states (B, T, prenet_in_dim), no gradient."""
        mel, mel_len = mel_jax.whisper_log_mel(batch["waveform"], batch["num_samples"])

        def states(tok, mel, mel_len):
            codes, lengths = tok.encode(mel, mel_len)
            return tok.hidden_states_before_dconv2(codes, lengths)

        variables = {"params": {k: params[k] for k in TOKENIZER_MODULES}, "vq_stats": state}
        h, _ = self.tokenizer.apply(variables, mel, mel_len, method=states)
        h = h[:, :self.frames]
        h = jnp.pad(h, ((0, 0), (0, self.frames - h.shape[1]), (0, 0)))
        return jax.lax.stop_gradient(h.astype(jnp.float32))

    def loss(self, params, batch, rng, norms):
        if self.tokenizer is not None:
            raise TypeError("speech rows read the tokenizer's codebooks (model state): the train step calls "
                            "loss_with_state(params, state, batch, rng, norms)")
        return self._loss(params, batch["hidden"], batch["mel"], batch["mel_mask"], batch, rng, norms)

    def loss_with_state(self, params, state, batch, rng, norms):
        if self.tokenizer is None:
            return super().loss_with_state(params, state, batch, rng, norms)
        mask = self._speech_mask(batch)
        hidden = self.speech_condition(params, state, batch) * mask[..., None]
        loss, metrics = self._loss(params, hidden, batch["mel"] * mask[..., None], mask, batch, rng, norms)
        return loss, metrics, None

    def update_state(self, state, stats, rng):
        return state, {}  # the tokenizer's codebooks are read, never updated here

    def _loss(self, params, hidden, mel, mask, batch, rng, norms):
        c = self.model_cfg
        if ROW_IDS in batch:  # per-row noise and times: the same draws for any microbatch split
            rng = row_keys(rng, batch[ROW_IDS])
        s = flow_matching_loss_sums(self.model, params["flow_matching"], hidden, mel, mask, rng)
        cfm, prior = s["cfm"] / norms["values"], s["prior"] / norms["values"]
        loss = c.loss_weight * cfm + c.prior_loss_weight * prior
        return loss, {"loss": loss, "cfm_loss": cfm, "prior_loss": prior, "prior_mae": s["prior_abs"] / norms["values"],
                      "frames": mask.sum()}

    def make_data(self, stage, *, start_step, process_index, process_count, rows=None):
        from omni_jax.data.speech_decoder_data import make_speech_mel_iterator
        from omni_jax.data.synthetic_speech import make_mel_iterator

        make = make_mel_iterator if self.tokenizer is None else make_speech_mel_iterator
        return make(self.config, start_step=start_step, process_index=process_index, process_count=process_count,
                    rows=rows)

    def import_params(self, path, abstract_params):
        """A safetensors checkpoint with the release names (the full omni checkpoint or just the
        decoder's tensors, with or without the `audio_tokenizer.audio_flow_matching_decoder.` prefix)."""
        from omni_jax.convert import speech as conv
        from omni_jax.convert.mapping import import_params, prefixed
        from omni_jax.convert.safetensors_io import load_state_dict

        sd = load_state_dict(path)
        rules = conv.flow_matching_rules(self.model_cfg)
        ignore = ()
        if any(k.startswith(conv.RELEASE_FM_PREFIX) for k in sd):
            rules = prefixed(rules, theirs=conv.RELEASE_FM_PREFIX)
            ignore = (r"(?!audio_tokenizer\.audio_flow_matching_decoder\.).*",)
        return {"flow_matching": import_params(sd, rules, abstract_params["flow_matching"], ignore=ignore, source=path)}

    def export_state_dict(self, params, flavour: str = "release", dtype=None) -> dict:
        """Our params -> {PyTorch name: array}: "release" = full release names
        (audio_tokenizer.audio_flow_matching_decoder.*), "module" = names inside the decoder."""
        from omni_jax.convert import speech as conv
        from omni_jax.convert.mapping import export_params, prefixed

        flavours = ("release", "module")
        if flavour not in flavours:
            raise ValueError(f"flow-matching export flavour {flavour!r}; use one of {flavours}")
        rules = conv.flow_matching_rules(self.model_cfg)
        if flavour == "release":
            rules = prefixed(rules, theirs=conv.RELEASE_FM_PREFIX)
        return export_params(params["flow_matching"], rules, dtype=dtype)

    def export_config(self, flavour: str = "release") -> dict:
        return {"flow_matching_config": dataclasses.asdict(self.model_cfg)}
