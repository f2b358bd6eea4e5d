"""Training the v1 audio-boundary head: the task of the v1 stage `audio_boundary`
(configs/omni_v1/stages.py; ARCHITECTURE.md 2, "Streaming": the model predicts the start and end
of the user's audio).

Same model and parameter tree as the `omni_v1` task (omni_jax/models/omni_v1.py: the stage's
freezing rules train `v1_boundary_head` only; the Whisper encoder it reads is the one the earlier
stages trained). Batches (omni_jax/data/boundary_streams.py): windows of streams in which the
user's speech arrives inside a video stream's audio,

  boundary_mels        f32 (B, n_mels, F)   log-mel of the window (F = config.data.shapes.mel_frames)
  boundary_mel_lengths i32 (B,)             valid mel frames
  boundary_labels      f32 (B, T, 3)        per encoder frame (20 ms): start, inside, end targets
  boundary_mask        f32 (B, T)           valid encoder frames

Loss = per-frame sigmoid cross entropy summed over the 3 targets and the valid frames / their
count. `config.boundary`: dataset_size (the embedded dataset's size, "tiny" / "default") and seed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from omni_jax.tasks.omni_v1 import OmniV1Task


class OmniV1BoundaryTask(OmniV1Task):

    def batch_fields(self, s):
        super().batch_fields(s)
        return ("boundary_mels", "boundary_mel_lengths", "boundary_labels", "boundary_mask")

    def check_data(self) -> None:
        super().check_data()
        b = self.config.get("boundary", None)
        if b is None or "dataset_size" not in b or "seed" not in b:
            raise ValueError("the omni_v1_boundary task needs config.boundary.dataset_size ('tiny' or 'default', the "
                             "embedded speech set) and config.boundary.seed (configs/omni_v1/stages.py audio_boundary "
                             "sets them in the stage's task_config)")

    @property
    def frames(self) -> int:
        return self.model_cfg.audio_encoder.output_lengths(self.shapes.mel_frames)

    def batch_spec(self, global_batch: int):
        b, f, t = global_batch, self.shapes.mel_frames, self.frames
        sds = jax.ShapeDtypeStruct
        return {
            "boundary_mels": (sds((b, self.shapes.n_mels, f), jnp.float32),
                              ("activation_batch", "activation_mel", "activation_length")),
            "boundary_mel_lengths": (sds((b,), jnp.int32), ("activation_batch",)),
            "boundary_labels": (sds((b, t, 3), jnp.float32), ("activation_batch", "activation_length", None)),
            "boundary_mask": (sds((b, t), jnp.float32), ("activation_batch", "activation_length")),
        }

    def norms(self, batch):
        return {"frames": jnp.maximum(batch["boundary_mask"].sum(), 1.0)}

    def loss(self, params, batch, rng, norms):
        del rng
        logits, _ = self.model.boundary_logits(params, batch["boundary_mels"], batch["boundary_mel_lengths"])
        y, m = batch["boundary_labels"], batch["boundary_mask"][..., None]
        ce = (optax.sigmoid_binary_cross_entropy(logits, y) * m).sum() / norms["frames"]
        right = ((logits > 0) == (y > 0.5)).astype(jnp.float32) * m
        acc = right.sum(axis=(0, 1)) / norms["frames"]
        return ce, {"loss": ce, "boundary_loss": ce, "start_accuracy": acc[0], "inside_accuracy": acc[1],
                    "end_accuracy": acc[2]}

    def make_data(self, stage, *, start_step, process_index, process_count, rows=None):
        from omni_jax.data.boundary_streams import make_boundary_iterator

        return make_boundary_iterator(self.config, start_step=start_step, process_index=process_index,
                                      process_count=process_count, rows=rows)
