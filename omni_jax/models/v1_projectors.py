"""Baichuan-Omni v1 visual projectors (ARCHITECTURE.md 2): mean-pool + 2-layer MLP, and the
video projector (a 2x2 convolution that sets the per-frame token count).

The v1 report gives only the numbers (729 SigLIP tokens -> 182 by mean pooling, "a factor
of 4", then a 2-layer MLP; video: an extra 2x2 convolution, 182 -> 546 tokens per frame).
No code is public. Our choices, each numerically checked against the torch primitives a
PyTorch port would use (tests/models/test_v1_projectors.py):

* Pooling geometry: adaptive average pooling of the 27 x 27 patch grid to a (rows, cols)
  output grid, exactly torch's nn.AdaptiveAvgPool2d (cell i averages input rows
  [floor(i*27/rows), ceil((i+1)*27/rows)), likewise columns). 182 = 14 x 13 is the only
  factorisation of 182 into grid sides <= 27 near a 2x2 reduction, so the default grid is
  (14, 13): each token averages a window of 2-3 rows x 3 columns, neighbouring windows
  sharing one row / column (every patch is used, none dropped). A plain 2x2 pooling gives
  169 (floor) or 196 (ceil), not 182. `pool_grid` is configurable (e.g. (14, 14)).
* MLP: Linear(vision -> llm) -> GELU (exact) -> Linear(llm -> llm), LLaVA's mlp2x_gelu.
* Video: the SigLIP tokens of a frame go through `V1VideoProjector`, a 2x2 convolution
  (stride 1, no padding, vision -> vision channels, with bias) on the 27 x 27 grid
  (-> 26 x 26), then through the image projector's adaptive pooling to `video_pool_grid`
  and its MLP. The default (21, 26) = 546 tokens per frame is the report's count; any
  (rows, cols) within 26 x 26 adjusts it (e.g. (14, 13) = 182). The video stage trains only
  the convolution ("video projector only"), on top of the image projector. The convolution
  starts as a 2x2 average (each tap = identity / 4), so at initialisation video frames
  take the image path through a 2x2 moving average: the video stage starts from the image
  projector's behaviour instead of from noise.

Parameters: v1_projector/{fc1,fc2}/{kernel,bias}; v1_video_projector/conv/{kernel
(taps = kh*kw, vision, vision), bias}.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from omni_jax.layers import Dense, dtype_of
from omni_jax.models.config import ModelConfig
from omni_jax.models.navit import activation

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class V1ProjectorConfig(ModelConfig):
    WHERE: ClassVar[str] = "config.model.v1_projector"

    vision_width: int = 1152  # SigLIP so400m
    llm_width: int = 3584
    vision_grid: int = 27  # 384 px / 14 px patches
    pool_grid: tuple[int, int] = (14, 13)  # 182 image tokens per tile
    video_kernel: int = 2
    video_pool_grid: tuple[int, int] = (21, 26)  # 546 tokens per video frame
    hidden_act: str = "gelu"
    initializer_range: float = 0.02

    def validate(self) -> None:
        g, c = self.vision_grid, self.conv_grid
        for name, grid, limit in (("pool_grid", self.pool_grid, g), ("video_pool_grid", self.video_pool_grid, c)):
            if len(grid) != 2 or not all(1 <= s <= limit for s in grid):
                raise ValueError(f"{name}={grid} must be (rows, cols) with 1 <= each <= {limit} "
                                 f"(the grid it pools)")
        activation(self.hidden_act)

    @property
    def conv_grid(self) -> int:
        return self.vision_grid - self.video_kernel + 1

    @property
    def image_tokens(self) -> int:
        return math.prod(self.pool_grid)

    @property
    def video_tokens(self) -> int:
        return math.prod(self.video_pool_grid)


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging weights of torch's adaptive average pooling along one axis."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x: Array, out_grid: tuple[int, int]) -> Array:
    """(n, H, W, C) -> (n, rows, cols, C), nn.AdaptiveAvgPool2d (separable: a rectangle's mean
    is the row average of the column averages)."""
    ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], out_grid[0]), x.dtype)
    pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], out_grid[1]), x.dtype)
    return jnp.einsum("ah,bw,nhwc->nabc", ph, pw, x)


def _square(x: Array, grid: int, who: str) -> tuple[Array, tuple[int, ...]]:
    *lead, n, c = x.shape
    if n != grid * grid:
        raise ValueError(f"{who}: {n} tokens per image, expected vision_grid^2 = {grid * grid}")
    return x.reshape(-1, grid, grid, c), tuple(lead)


class V1Projector(nn.Module):
    """Image path: (..., 729, vision) -> (..., 182, llm). `video(...)`: conv output -> tokens."""

    cfg: V1ProjectorConfig

    def setup(self):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), use_bias=True,
                  kernel_init=nn.initializers.normal(cfg.initializer_range))
        self.fc1 = Dense(cfg.llm_width, kernel_axes=("embed", "mlp"), **kw)
        self.fc2 = Dense(cfg.llm_width, kernel_axes=("mlp", "embed"), **kw)

    def mlp(self, x: Array) -> Array:
        h = activation(self.cfg.hidden_act)(self.fc1(x))
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        return self.fc2(h)

    def _pool_project(self, grid_map: Array, lead: tuple[int, ...], out_grid: tuple[int, int]) -> Array:
        x = adaptive_avg_pool(grid_map.astype(dtype_of(self.cfg.dtype)), out_grid)
        x = x.reshape(*lead, out_grid[0] * out_grid[1], x.shape[-1])
        return self.mlp(x)

    def __call__(self, features: Array) -> Array:
        """SigLIP tokens (..., vision_grid^2, vision) -> (..., image_tokens, llm)."""
        x, lead = _square(features, self.cfg.vision_grid, "V1Projector")
        return self._pool_project(x, lead, self.cfg.pool_grid)

    def video(self, conv_features: Array) -> Array:
        """V1VideoProjector output (..., conv_grid^2, vision) -> (..., video_tokens, llm)."""
        x, lead = _square(conv_features, self.cfg.conv_grid, "V1Projector.video")
        return self._pool_project(x, lead, self.cfg.video_pool_grid)


def _average_taps_init(taps: int):
    def init(key, shape, dtype=jnp.float32):
        del key
        t, cin, cout = shape
        if cin != cout:
            raise ValueError("the average-taps init needs as many output as input channels")
        return jnp.broadcast_to(jnp.eye(cin, dtype=dtype) / taps, shape).astype(dtype)
    return init


class V1VideoProjector(nn.Module):
    """2x2 convolution (stride 1, valid) over a frame's SigLIP grid: (..., 729, C) -> (..., 676, C)."""

    cfg: V1ProjectorConfig

    @nn.compact
    def __call__(self, features: Array) -> Array:
        cfg = self.cfg
        k, c = cfg.video_kernel, cfg.vision_width
        x, lead = _square(features, cfg.vision_grid, "V1VideoProjector")
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        y = _Conv(k, c, name="conv", dtype=dtype, param_dtype=pdtype)(x.astype(dtype))
        g = cfg.conv_grid
        return y.reshape(*lead, g * g, c)


class _Conv(nn.Module):
    """A k x k, stride 1, valid convolution with bias as a sum of k*k shifted matmuls
    (kernel (taps, in, out), taps row-major over (dy, dx))."""

    k: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.k
        n, h, w, c = x.shape
        kernel = self.param("kernel", nn.with_logical_partitioning(
            _average_taps_init(k * k), ("conv_window", "embed", "mlp")), (k * k, c, self.features), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                          (self.features,), self.param_dtype)
        kernel = kernel.astype(self.dtype)
        ho, wo = h - k + 1, w - k + 1
        y = bias.astype(self.dtype)
        for dy in range(k):
            for dx in range(k):
                y = y + jnp.einsum("nhwc,cd->nhwd", x[:, dy:dy + ho, dx:dx + wo], kernel[dy * k + dx])
        return y


class V1VisionTower(nn.Module):
    """SigLIP + projectors under the omni v1 model's top-level names (`siglip`,
    `v1_projector`, `v1_video_projector`); the omni v1 model holds the same three submodules.

      images(tiles (..., 384, 384, 3))  -> (..., image_tokens, llm)   AnyRes tiles, each alone
      video(frames (..., 384, 384, 3))  -> (..., video_tokens, llm)   1 fps frames, each alone
      __call__(tiles, frames)           -> both (initialises every parameter)
      mixed(tiles, is_video, slot)      -> (..., slot, llm)   images and frames packed in one buffer
    """

    siglip_cfg: Any
    cfg: V1ProjectorConfig

    def setup(self):
        from omni_jax.models.siglip import Siglip

        if self.siglip_cfg.grid != self.cfg.vision_grid or self.siglip_cfg.hidden_size != self.cfg.vision_width:
            raise ValueError(
                f"v1 projector expects a {self.cfg.vision_grid}^2 x {self.cfg.vision_width} SigLIP output, the "
                f"SigLIP config gives {self.siglip_cfg.grid}^2 x {self.siglip_cfg.hidden_size}: set "
                "v1_projector.vision_grid / vision_width to match")
        self.siglip = Siglip(self.siglip_cfg)
        self.v1_projector = V1Projector(self.cfg)
        self.v1_video_projector = V1VideoProjector(self.cfg)

    def images(self, tiles: Array) -> Array:
        return self.v1_projector(self.siglip(tiles)[0])

    def video(self, frames: Array) -> Array:
        return self.v1_projector.video(self.v1_video_projector(self.siglip(frames)[0]))

    def __call__(self, tiles: Array, frames: Array) -> tuple[Array, Array]:
        return self.images(tiles), self.video(frames)

    def mixed(self, tiles: Array, is_video: Array, slot: int) -> Array:
        """Image tiles and video frames packed together (the omni batch's `vision_tiles` with
        `vision_tile_video`): SigLIP once per tile, then the image or the video path per tile.
        (..., S, S, 3) + (...) flags -> (..., slot, llm), each tile's tokens first, zeros after."""
        cfg = self.cfg
        if slot < max(cfg.image_tokens, cfg.video_tokens):
            raise ValueError(f"v1 tiles: slot={slot} holds fewer than the {cfg.image_tokens} image / "
                             f"{cfg.video_tokens} video tokens of a tile")
        feats = self.siglip(tiles)[0]
        pad = lambda y: jnp.pad(y, [(0, 0)] * (y.ndim - 2) + [(0, slot - y.shape[-2]), (0, 0)])
        img = pad(self.v1_projector(feats))
        vid = pad(self.v1_projector.video(self.v1_video_projector(feats)))
        return jnp.where(jnp.asarray(is_video, bool)[..., None, None], vid, img)
