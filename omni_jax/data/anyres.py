"""AnyRes tiling for Baichuan-Omni v1's SigLIP encoder (ARCHITECTURE.md 2), in numpy + PIL.

An image is cut into 384 px tiles on a (rows, cols) grid chosen from candidate resolutions,
plus one global view of the whole image; video frames are global views only. Numerical
reference: transformers' LlavaOnevisionImageProcessorPil (LLaVA-NeXT / OneVision AnyRes,
the design the v1 report describes) with SigLIP's normalisation and our candidate list.

The report does not list its candidate grids. Ours: every (rows, cols) with
rows * cols <= max_tiles (default 4: 1x1, 1x2, 2x1, 1x3, 3x1, 2x2, 1x4, 4x1), i.e.
LLaVA-NeXT's grids plus the 1x1 and the long 1x4 / 4x1 strips, in pixels rows*384 x
cols*384. With 182 tokens per tile (models/v1_projectors.py) an image costs
(1 + rows*cols) * 182 <= 910 LLM tokens. `max_tiles` is a knob; any explicit list of
(height, width) resolutions can be passed instead.

Procedure (LLaVA-NeXT's): pick the resolution that keeps the most of the image's pixels
(effective resolution = min(scaled area, original area)), ties broken by the least padding;
resize with the aspect ratio kept so the image touches the canvas on one side (bicubic);
centre it on a black canvas; cut row-major into tiles. The global view is the whole image
resized (bicubic, aspect ratio not kept) to 384 x 384 and comes FIRST. Every tile is
scaled to [0, 1] and normalised with SigLIP's mean = std = 0.5. Output is channels-last.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from omni_jax.data.vision_preprocessing import sample_frame_indices

TILE = 384
SIGLIP_MEAN = np.array([0.5, 0.5, 0.5], np.float32)
SIGLIP_STD = np.array([0.5, 0.5, 0.5], np.float32)
TOKENS_PER_TILE = 182
V1_MAX_FRAMES = 48


def candidate_grids(max_tiles: int = 4) -> list[tuple[int, int]]:
    """Every (rows, cols) with rows * cols <= max_tiles, by tile count then rows."""
    if max_tiles < 1:
        raise ValueError(f"max_tiles={max_tiles} must be >= 1")
    grids = [(r, c) for r in range(1, max_tiles + 1) for c in range(1, max_tiles + 1) if r * c <= max_tiles]
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


def candidate_resolutions(max_tiles: int = 4, tile: int = TILE) -> list[tuple[int, int]]:
    """(height, width) in pixels of candidate_grids."""
    return [(r * tile, c * tile) for r, c in candidate_grids(max_tiles)]


def select_best_resolution(height: int, width: int, resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The candidate (height, width) keeping the most image pixels, then wasting the fewest."""
    best, best_eff, best_waste = None, -1, math.inf
    for h, w in resolutions:
        scale = min(w / width, h / height)
        eff = min(int(width * scale) * int(height * scale), width * height)
        waste = h * w - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(h), int(w)), eff, waste
    if best is None:
        raise ValueError("no candidate resolutions given")
    return best


def _fit_size(height: int, width: int, th: int, tw: int) -> tuple[int, int]:
    """Size that fits (th, tw) with the aspect ratio kept, one side touching."""
    sw, sh = tw / width, th / height
    if sw < sh:
        return min(math.ceil(height * sw), th), tw
    return th, min(math.ceil(width * sh), tw)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def _normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)


def _check(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")


def anyres_tiles(image: np.ndarray, *, max_tiles: int = 4, tile: int = TILE,
                 resolutions: Sequence[tuple[int, int]] | None = None,
                 mean: np.ndarray = SIGLIP_MEAN, std: np.ndarray = SIGLIP_STD) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 (H, W, 3) -> (tiles (1 + rows*cols, tile, tile, 3) float32, (rows, cols)).

    tiles[0] is the global view; tiles[1:] the grid, row-major."""
    _check(image)
    resolutions = candidate_resolutions(max_tiles, tile) if resolutions is None else resolutions
    for h, w in resolutions:
        if h % tile or w % tile:
            raise ValueError(f"candidate resolution {(h, w)} is not a multiple of the {tile} px tile")
    th, tw = select_best_resolution(image.shape[0], image.shape[1], resolutions)
    nh, nw = _fit_size(image.shape[0], image.shape[1], th, tw)
    resized = _resize(image, nh, nw)
    top, left = (th - nh) // 2, (tw - nw) // 2
    canvas = np.zeros((th, tw, 3), np.uint8)
    canvas[top:top + nh, left:left + nw] = resized
    rows, cols = th // tile, tw // tile
    grid = canvas.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, tile, tile, 3)
    views = np.concatenate([_resize(image, tile, tile)[None], grid])
    return _normalise(views, mean, std), (rows, cols)


def anyres_token_count(grid: tuple[int, int], tokens_per_tile: int = TOKENS_PER_TILE) -> int:
    """LLM tokens of one AnyRes image: (global view + rows*cols tiles) * tokens per tile."""
    return (1 + grid[0] * grid[1]) * tokens_per_tile


def preprocess_frame(frame: np.ndarray, *, tile: int = TILE, mean: np.ndarray = SIGLIP_MEAN,
                     std: np.ndarray = SIGLIP_STD) -> np.ndarray:
    """A v1 video frame: its global view only, (tile, tile, 3) float32."""
    _check(frame)
    return _normalise(_resize(frame, tile, tile), mean, std)


def preprocess_video(frames: np.ndarray, fps: float, max_frames: int = V1_MAX_FRAMES, **kw) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (n, tile, tile, 3): frames at 1 fps, at most `max_frames` (v1: 48)."""
    return np.stack([preprocess_frame(frames[i], **kw) for i in sample_frame_indices(len(frames), fps, max_frames)])


def pack_tiles(items: Sequence[np.ndarray], max_tiles: int) -> dict[str, np.ndarray]:
    """Packs the tiles / frames of several images or videos, in order, into one static row.

    items: (n_i, tile, tile, 3) arrays (anyres_tiles' tiles, or preprocess_video's frames).
    Returns pixels (max_tiles, tile, tile, 3) zero padded and tile_item (max_tiles,) int32
    (the item of each tile, -1 = padding). The SigLIP encoder treats every tile alone, so the
    projector's tokens of tile k are the item's tokens in order.
    """
    if not items:
        raise ValueError("pack_tiles needs at least one item (pad rows with a dummy tile upstream)")
    shape = items[0].shape[1:]
    pixels = np.zeros((max_tiles,) + shape, np.float32)
    tile_item = np.full((max_tiles,), -1, np.int32)
    n = 0
    for i, t in enumerate(items):
        if t.shape[1:] != shape:
            raise ValueError(f"item {i}: tiles of shape {t.shape[1:]}, item 0 has {shape}")
        if n + len(t) > max_tiles:
            raise ValueError(f"item {i} ({len(t)} tiles) does not fit the row: {n} of max_tiles={max_tiles} "
                             "are used. Raise max_tiles or lower the AnyRes max_tiles.")
        pixels[n:n + len(t)] = t
        tile_item[n:n + len(t)] = i
        n += len(t)
    return {"pixels": pixels, "tile_item": tile_item}
