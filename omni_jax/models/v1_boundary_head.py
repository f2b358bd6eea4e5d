"""Baichuan-Omni (v1) audio-boundary head: where the user's speech starts and ends in the audio of a
live stream (ARCHITECTURE.md 2, "Streaming": "the model predicts the start and end of the user's
audio").

The report gives no architecture; ours is a small head on the model's own Whisper encoder states
(50 Hz, 20 ms per frame) joined with the log-mel input averaged over each frame's 2 mel frames
(the level cues, whatever the encoder learnt): fc1 (d + n_mels -> d), exact GELU, conv (k5,
"same", d -> d: 100 ms either side), exact GELU, fc2 (d -> 3); frames beyond the valid length
are zeroed before the conv. Three logits per frame:

  0 start   the frame is within BOUNDARY_TOL_S of the start of the user's speech
  1 inside  the frame lies inside the user's speech
  2 end     the frame is within BOUNDARY_TOL_S of its end

trained with a per-frame sigmoid cross entropy (omni_jax/tasks/omni_v1_boundary.py) in the v1
stage `audio_boundary` (configs/omni_v1/stages.py) on streams where the user's speech arrives
inside a video stream's audio. Parameter tree `v1_boundary_head`: fc1/kernel (d + n_mels, d),
fc1/bias, conv/kernel (5, d, d), conv/bias, fc2/kernel (d, 3), fc2/bias. PyTorch:
`audio_boundary_head.fc1/conv/fc2` of the exported remote-code model
(omni_jax/convert/torch_v1/modeling_omni_v1.py `AudioBoundaryHead`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from omni_jax.layers import Dense, dtype_of
from omni_jax.layers.conv1d import Conv1d
from omni_jax.models.whisper import WhisperEncoderConfig

CLASSES = ("start", "inside", "end")
FRAME_S = 0.02  # Whisper encoder frames: 100 Hz mel, conv stride 2
BOUNDARY_TOL_S = 0.04  # start / end targets: frames whose centre is within 40 ms of the boundary


def pooled_mel(mels: jax.Array, frames: int) -> jax.Array:
    """(B, n_mels, F) log-mel -> (B, frames, n_mels): the mean of each encoder frame's 2 mel frames."""
    x = jnp.moveaxis(mels, 1, 2)
    x = jnp.pad(x, ((0, 0), (0, 2 * frames - x.shape[1]), (0, 0)))
    return x.reshape(x.shape[0], frames, 2, x.shape[2]).mean(2)


class V1BoundaryHead(nn.Module):
    """(B, T, d) Whisper encoder states, (B, T, n_mels) pooled log-mel, (B,) valid frames ->
    (B, T, 3) logits (start, inside, end)."""

    cfg: WhisperEncoderConfig

    @nn.compact
    def __call__(self, states: jax.Array, mel: jax.Array, lengths: jax.Array) -> jax.Array:
        c = self.cfg
        kw = dict(dtype=dtype_of(c.dtype), param_dtype=dtype_of(c.param_dtype),
                  kernel_init=nn.initializers.normal(c.initializer_range))
        valid = (jnp.arange(states.shape[1])[None, :] < lengths[:, None])[..., None]
        x = jnp.concatenate([states.astype(jnp.float32), mel.astype(jnp.float32)], -1)
        x = jax.nn.gelu(Dense(c.d_model, kernel_axes=("embed", "mlp"), use_bias=True, name="fc1", **kw)(x),
                        approximate=False)
        x = jnp.where(valid, x, 0)
        x = Conv1d(c.d_model, 5, padding=2, kernel_axes=("conv_window", "mlp", "embed"), name="conv", **kw)(x)
        x = jax.nn.gelu(x, approximate=False)
        return Dense(len(CLASSES), kernel_axes=("embed", "norm"), use_bias=True, name="fc2", **kw)(x).astype(jnp.float32)
