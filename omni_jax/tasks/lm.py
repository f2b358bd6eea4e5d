"""Causal language modelling on packed text: the backbone's own task.

Batch fields (batch rows first, static length T):
  tokens      int32 (B, T)  input ids
  targets     int32 (B, T)  next-token ids (already shifted inside each segment)
  loss_mask   f32   (B, T)  1 where a target is trained on
  segment_ids int32 (B, T)  packed sample ids (1, 2, ...), 0 = padding
  positions   int32 (B, T)  rotary positions, restarting at 0 in each segment
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from omni_jax.models.qwen2 import Qwen2Config, Qwen2LM
from omni_jax.tasks.base import Task
from omni_jax.tasks.losses import llm_loss_sums

TOKEN_AXES = ("activation_batch", "activation_length")


class LanguageModelTask(Task):
    def __init__(self, config: Any):
        super().__init__(config)
        self.model_cfg = Qwen2Config.from_dict(config.model.llm.to_dict(), "config.model.llm")
        self.model = Qwen2LM(self.model_cfg)
        self.seq_len = int(config.data.seq_len)

    def init(self, rng):
        t = jnp.zeros((1, self.seq_len), jnp.int32)
        return {"llm": self.model.init(rng, t, t, t + 1)["params"]}

    def batch_spec(self, global_batch: int):
        s = (global_batch, self.seq_len)
        i32, f32 = jnp.int32, jnp.float32
        return {
            "tokens": (jax.ShapeDtypeStruct(s, i32), TOKEN_AXES),
            "targets": (jax.ShapeDtypeStruct(s, i32), TOKEN_AXES),
            "loss_mask": (jax.ShapeDtypeStruct(s, f32), TOKEN_AXES),
            "segment_ids": (jax.ShapeDtypeStruct(s, i32), TOKEN_AXES),
            "positions": (jax.ShapeDtypeStruct(s, i32), TOKEN_AXES),
        }

    def norms(self, batch):
        return {"tokens": jnp.maximum(batch["loss_mask"].sum(), 1.0)}

    def loss(self, params, batch, rng, norms):
        del rng
        x = self.model.apply({"params": params["llm"]}, batch["tokens"], method=Qwen2LM.embed)
        h, _ = self.model.apply({"params": params["llm"]}, x, batch["positions"], batch["segment_ids"],
                                method=Qwen2LM.hidden)
        nll, correct, z = llm_loss_sums(self.model_cfg, params["llm"], h, batch["targets"], batch["loss_mask"])
        loss = (nll + z) / norms["tokens"]
        metrics = {"loss": loss, "accuracy": correct / norms["tokens"], "tokens": batch["loss_mask"].sum()}
        if self.model_cfg.z_loss:
            metrics["z_loss"] = z / norms["tokens"]
        return loss, metrics

    def make_data(self, stage, *, start_step, process_index, process_count, rows=None):
        if "mixture" in self.config.data:  # a multi-dataset text mixture (omni_jax/data/mixture.py)
            from omni_jax.data.omni_batch import TEXT_FIELDS
            from omni_jax.data.omni_pipeline import make_omni_iterator

            return make_omni_iterator(self.config, stage=getattr(stage, "name", None), start_step=start_step,
                                      process_index=process_index, process_count=process_count,
                                      fields=TEXT_FIELDS, rows=rows)
        from omni_jax.data.text import make_text_iterator

        return make_text_iterator(self.config, start_step=start_step,
                                  process_index=process_index, process_count=process_count, rows=rows)

    def import_params(self, path, abstract_params):
        from omni_jax.convert import qwen2 as conv
        from omni_jax.convert.mapping import import_params
        from omni_jax.convert.safetensors_io import load_state_dict

        flavour = self.config.init.get("flavour", "hf")
        return {"llm": import_params(load_state_dict(path), conv.rules(self.model_cfg, flavour),
                                     abstract_params["llm"], ignore=conv.IGNORE, source=path)}

    def export_state_dict(self, params, flavour: str = "release", dtype=None) -> dict:
        """Our params -> {PyTorch name: numpy array} in the given layout."""
        from omni_jax.convert import qwen2 as conv
        from omni_jax.convert.mapping import export_params

        return export_params(params["llm"], conv.rules(self.model_cfg, flavour), dtype=dtype)

    def export_config(self, flavour: str = "hf") -> dict:
        from omni_jax.convert import qwen2 as conv

        return conv.hf_config_dict(self.model_cfg)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 * matmul params + causal attention (12 L T d_attn / 2)."""
        c = self.model_cfg
        n = c.num_params() - c.vocab_size * c.hidden_size  # embedding lookup has no matmul
        attn = 6 * c.num_layers * self.seq_len * c.num_heads * c.head_dim  # QK^T and PV, fwd+bwd, causal half
        return 6.0 * n + attn
