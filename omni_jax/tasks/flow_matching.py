"""Training the flow-matching mel decoder (prenet + U-Net) with conditional flow matching.

Batch fields (batch rows first, static length T mel frames at 50 Hz):
  hidden    f32 (B, T, prenet_in_dim)  the audio decoder's hidden states before dconv2
  mel       f32 (B, T, n_mels)         target 24 kHz log-mel (x1)
  mel_mask  f32 (B, T)                 1 on valid frames

Loss (omni_jax/models/flow_matching.py): loss_weight * CFM L1 + prior_loss_weight * prenet
prior L1, both sums over valid frames x bins divided by the global count (exact gradient
accumulation). The release trains this decoder in its own stage with the LLM frozen; the
params live under `flow_matching/` (the omni model's top-level name).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from omni_jax.models.flow_matching import FlowMatchingConfig, FlowMatchingDecoder, flow_matching_loss_sums
from omni_jax.tasks.base import Task
from omni_jax.train.rng import ROW_IDS, row_keys

AXES3 = ("activation_batch", "activation_length", "activation_mel")
AXES2 = ("activation_batch", "activation_length")


class FlowMatchingTask(Task):
    row_rng = True

    def __init__(self, config: Any):
        super().__init__(config)
        self.model_cfg = FlowMatchingConfig.from_dict(config.model.flow_matching.to_dict(), "config.model.flow_matching")
        self.model = FlowMatchingDecoder(self.model_cfg)
        self.frames = int(config.data.max_frames)

    def init(self, rng):
        c, t = self.model_cfg, self.frames
        return {"flow_matching": self.model.init(
            rng, jnp.zeros((1, t, c.prenet_in_dim)), jnp.ones((1, t)), jnp.zeros((1, t, c.n_mels)), jnp.zeros((1,)))["params"]}

    def batch_spec(self, global_batch: int):
        c, t, f32 = self.model_cfg, self.frames, jnp.float32
        return {
            "hidden": (jax.ShapeDtypeStruct((global_batch, t, c.prenet_in_dim), f32), AXES3),
            "mel": (jax.ShapeDtypeStruct((global_batch, t, c.n_mels), f32), AXES3),
            "mel_mask": (jax.ShapeDtypeStruct((global_batch, t), f32), AXES2),
        }

    def norms(self, batch):
        return {"values": jnp.maximum(batch["mel_mask"].sum() * self.model_cfg.n_mels, 1.0)}

    def loss(self, params, batch, rng, norms):
        c = self.model_cfg
        if ROW_IDS in batch:  # per-row noise and times: the same draws for any microbatch split
            rng = row_keys(rng, batch[ROW_IDS])
        s = flow_matching_loss_sums(self.model, params["flow_matching"], batch["hidden"], batch["mel"],
                                    batch["mel_mask"], rng)
        cfm, prior = s["cfm"] / norms["values"], s["prior"] / norms["values"]
        loss = c.loss_weight * cfm + c.prior_loss_weight * prior
        return loss, {"loss": loss, "cfm_loss": cfm, "prior_loss": prior, "prior_mae": s["prior_abs"] / norms["values"],
                      "frames": batch["mel_mask"].sum()}

    def make_data(self, stage, *, start_step, process_index, process_count, rows=None):
        from omni_jax.data.synthetic_speech import make_mel_iterator

        return make_mel_iterator(self.config, start_step=start_step, process_index=process_index,
                                 process_count=process_count, rows=rows)

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
