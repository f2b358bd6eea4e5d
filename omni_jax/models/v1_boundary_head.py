"""Baichuan-Omni (v1) audio-boundary head: where the user's speech starts and ends in the audio of a
live stream (ARCHITECTURE.md 2, "Streaming": "the model predicts the start and end of the user's
audio").

The report gives no architecture; ours is a small head on the model's own Whisper encoder states
(50 Hz, 20 ms per frame): fc1 (d -> d) + exact GELU + fc2 (d -> 3), three logits per frame:

  0 start   the frame is within BOUNDARY_TOL_S of the start of the user's speech
  1 inside  the frame lies inside the user's speech
  2 end     the frame is within BOUNDARY_TOL_S of its end

trained with a per-frame sigmoid cross entropy (omni_jax/tasks/omni_v1_boundary.py) in the v1
stage `audio_boundary` (configs/omni_v1/stages.py) on streams where the user's speech arrives
inside a video stream's audio. Parameter tree `v1_boundary_head`: fc1/kernel (d, d), fc1/bias,
fc2/kernel (d, 3), fc2/bias. PyTorch: `audio_boundary_head.fc1/fc2` of the exported remote-code
model (omni_jax/convert/torch_v1/modeling_omni_v1.py `AudioBoundaryHead`; nn.Linear weights are
the transpose of our kernels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from omni_jax.layers import Dense, dtype_of
from omni_jax.models.whisper import WhisperEncoderConfig

CLASSES = ("start", "inside", "end")
FRAME_S = 0.02  # Whisper encoder frames: 100 Hz mel, conv stride 2
BOUNDARY_TOL_S = 0.04  # start / end targets: frames whose centre is within 40 ms of the boundary


class V1BoundaryHead(nn.Module):
    """(B, T, d) Whisper encoder states -> (B, T, 3) logits (start, inside, end)."""

    cfg: WhisperEncoderConfig

    @nn.compact
    def __call__(self, states: jax.Array) -> jax.Array:
        c = self.cfg
        kw = dict(dtype=dtype_of(c.dtype), param_dtype=dtype_of(c.param_dtype), use_bias=True,
                  kernel_init=nn.initializers.normal(c.initializer_range))
        x = Dense(c.d_model, kernel_axes=("embed", "mlp"), name="fc1", **kw)(states)
        x = jax.nn.gelu(x, approximate=False)
        return Dense(len(CLASSES), kernel_axes=("mlp", "norm"), name="fc2", **kw)(x).astype(jnp.float32)
