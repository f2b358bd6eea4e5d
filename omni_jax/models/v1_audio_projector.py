"""Baichuan-Omni (v1) Conv-GMLP audio projector: continuous Whisper features -> LLM width (ARCHITECTURE.md 2).

v1's code is not public; this follows the report's description, with the downsampling rate n a
config value (the report's ablation: 2, 4, 8):

  drop a trailing partial group; stack n consecutive frames (n*d)
  g = gate_proj(x), u = up_proj(x)   two strided Conv1d branches (d -> n*d, kernel = stride = n, no
                                     bias): each shortens the sequence n times and widens channels n times
  h = silu(g) * u + shortcut(stacked x)   the linear residual shortcut from the input
                                     (`shortcut="identity"` uses the stacked frames as they are, as 1.5's bridge does)
  y = out_proj(h)                    projection to the LLM width

Output lengths are floor(L / n): a trailing partial group (< n encoder frames, at most 160 ms at
n = 8) is dropped, exactly as 1.5's bridge does, so one token rule serves both models
(omni_jax/data/media.py `bridge_frames`). Frames beyond a row's length are zero.
Numerical reference: the same description written with torch.nn (tests/models/test_v1_audio_projector.py).

Parameter tree (`v1_audio_projector`): gate_proj/kernel, up_proj/kernel (n, d, n*d);
shortcut/kernel (n*d, n*d), shortcut/bias; out_proj/kernel (n*d, llm), out_proj/bias.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from omni_jax.layers import Dense, dtype_of
from omni_jax.models.config import ModelConfig
from omni_jax.models.whisper import length_mask

RATES = (2, 4, 8)


@dataclasses.dataclass(frozen=True)
class V1AudioProjectorConfig(ModelConfig):
    WHERE: ClassVar[str] = "config.model.v1_audio_projector"

    d_model: int = 1280  # Whisper-large-v3 width
    llm_hidden_size: int = 3584
    rate: int = 4  # downsampling: 2, 4 or 8
    shortcut: str = "linear"  # "linear" | "identity"
    initializer_range: float = 0.02

    def validate(self) -> None:
        if self.rate not in RATES:
            raise ValueError(f"v1 audio projector: rate={self.rate}; the report's Conv-GMLP downsamples by one of {RATES}")
        if self.shortcut not in ("linear", "identity"):
            raise ValueError(f"v1 audio projector: shortcut={self.shortcut!r}; use 'linear' or 'identity'")

    def output_lengths(self, lengths):
        return lengths // self.rate


class V1AudioProjector(nn.Module):
    """(B, T, d) Whisper features + (B,) lengths -> ((B, T // n, llm), (B,) lengths // n)."""

    cfg: V1AudioProjectorConfig

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.cfg
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"v1 audio projector expects (batch, frames, {cfg.d_model}) features, got {x.shape}")
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                  kernel_init=nn.initializers.normal(cfg.initializer_range))
        b, t, d = x.shape
        n = cfg.rate
        lengths = jnp.asarray(lengths, jnp.int32)
        x = jnp.where(length_mask(lengths, t)[..., None], x, 0)
        groups = x[:, : (t // n) * n].reshape(b, t // n, n, d)
        stacked = groups.reshape(b, groups.shape[1], n * d)
        g = Dense(n * d, ("conv_window", "embed", "mlp"), in_dims=2, name="gate_proj", **kw)(groups)
        u = Dense(n * d, ("conv_window", "embed", "mlp"), in_dims=2, name="up_proj", **kw)(groups)
        short = (Dense(n * d, ("embed", "mlp"), use_bias=True, name="shortcut", **kw)(stacked)
                 if cfg.shortcut == "linear" else stacked.astype(g.dtype))
        h = nn.with_logical_constraint(nn.silu(g) * u + short, ("activation_batch", "activation_length", "activation_mlp"))
        y = Dense(cfg.llm_hidden_size, ("mlp", "embed"), use_bias=True, name="out_proj", **kw)(h)
        out_len = cfg.output_lengths(lengths)
        y = jnp.where(length_mask(out_len, y.shape[1])[..., None], y, 0)
        return nn.with_logical_constraint(y, ("activation_batch", "activation_length", "activation_embed")), out_len
