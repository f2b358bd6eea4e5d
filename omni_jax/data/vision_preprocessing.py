"""Image and video-frame preprocessing for the NaViT encoder, in numpy (no torch).

Matches transformers' Qwen2VLImageProcessorPil (the release's image processor): RGB ->
bicubic resize (PIL) to the smart_resize target -> /255 -> CLIP mean/std -> patchify into
(grid_h * grid_w, 3 * 2 * 14 * 14) rows in 2x2 merge-window order, the still image repeated
over the temporal patch of 2. Video: frames sampled at 1 fps (at most `max_frames`,
uniformly subsampled), each frame preprocessed as an image with the video pixel budget.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from omni_jax.data import media
from omni_jax.models.navit import patch_positions

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
PATCH_DIM = 3 * media.TEMPORAL_PATCH * media.PATCH * media.PATCH  # 1176


def decode_image(data: bytes) -> np.ndarray:
    """Encoded PNG/JPEG/... bytes -> uint8 (H, W, 3). Raises ValueError on corrupt data."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises many types for bad data
        raise ValueError(f"cannot decode image ({len(data)} bytes): {e}") from e


def patchify(image_chw: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Normalised float (3, H, W) -> (grid_h * grid_w, 1176) rows in merge-window order."""
    c, h, w = image_chw.shape
    gh, gw, m, p = h // media.PATCH, w // media.PATCH, media.MERGE, media.PATCH
    x = image_chw.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
    x = np.broadcast_to(x[:, :, :, :, :, None], x.shape[:5] + (media.TEMPORAL_PATCH,) + x.shape[5:])
    return np.ascontiguousarray(x.reshape(gh * gw, PATCH_DIM), dtype=np.float32), gh, gw


def preprocess_image(image: np.ndarray, *, video: bool = False, min_pixels: int = media.IMAGE_MIN_PIXELS,
                     max_pixels: int | None = None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 (H, W, 3) -> (patches (grid_h * grid_w, 1176) float32, grid (1, grid_h, grid_w))."""
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if max_pixels is None:
        max_pixels = media.VIDEO_MAX_PIXELS if video else media.IMAGE_MAX_PIXELS
    h, w = media.smart_resize(image.shape[0], image.shape[1], min_pixels=min_pixels, max_pixels=max_pixels)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC), np.float32)
    x = (resized / np.float32(255.0) - CLIP_MEAN) / CLIP_STD
    patches, gh, gw = patchify(x.transpose(2, 0, 1))
    return patches, (1, gh, gw)


def sample_frame_indices(num_frames: int, fps: float, max_frames: int = 32) -> np.ndarray:
    """Indices of frames at 1 frame per second, uniformly subsampled to `max_frames`."""
    if num_frames <= 0:
        raise ValueError("video has no frames")
    step = max(fps, 1e-6)
    idx = np.arange(0, num_frames, step).astype(np.int64)
    idx = idx[idx < num_frames]
    if len(idx) > max_frames:
        idx = idx[np.linspace(0, len(idx) - 1, max_frames).round().astype(np.int64)]
    return idx


def preprocess_video(frames: np.ndarray, fps: float, max_frames: int = 32) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """uint8 (N, H, W, 3) frames -> per sampled frame (patches, grid) with grid_t = 1."""
    return [preprocess_image(frames[i], video=True) for i in sample_frame_indices(len(frames), fps, max_frames)]


# ---------------------------------------------------------------------------------
# Packing several images / frames into one padded row for the encoder (models/navit.py)
# ---------------------------------------------------------------------------------


def pack_vision_row(items, max_patches: int) -> dict[str, np.ndarray]:
    """Packs images/frames, in order, into one static encoder row (models/navit.py layout).

    items: sequence of (patches (t*h*w, 1176), grid (t, h, w)) from preprocess_image /
        preprocess_video (or transformers' processor, grid_t > 1 for its videos).
    Returns
      patches (max_patches, 1176) float32, zero padded
      positions (max_patches, 2) int32: (h, w) per patch
      segment_ids (max_patches,) int32: 1, 2, ... per image or temporal frame, 0 = padding
      token_item (max_patches / 4,) int32: index into `items` of each merged token, -1 = padding
    """
    m2 = media.MERGE * media.MERGE
    if max_patches % m2:
        raise ValueError(f"max_patches={max_patches} must be a multiple of {m2} (2x2 merge windows)")
    patches = np.zeros((max_patches, PATCH_DIM), np.float32)
    positions = np.zeros((max_patches, 2), np.int32)
    segments = np.zeros((max_patches,), np.int32)
    token_item = np.full((max_patches // m2,), -1, np.int32)
    offset, segment = 0, 0
    for i, (p, grid) in enumerate(items):
        t, h, w = (int(g) for g in grid)
        if h % media.MERGE or w % media.MERGE:
            raise ValueError(f"vision item {i}: grid {(t, h, w)} has an odd side; h and w must be "
                             f"multiples of {media.MERGE} (use smart_resize)")
        n = t * h * w
        if p.shape != (n, PATCH_DIM):
            raise ValueError(f"vision item {i}: patches have shape {p.shape}, grid {(t, h, w)} needs "
                             f"({n}, {PATCH_DIM})")
        if offset + n > max_patches:
            raise ValueError(
                f"vision item {i} ({n} patches, grid {(t, h, w)}) does not fit the row: {offset} of "
                f"max_patches={max_patches} are used. Raise max_patches or lower max_pixels.")
        patches[offset:offset + n] = p
        positions[offset:offset + n] = patch_positions((t, h, w))
        segments[offset:offset + n] = np.repeat(np.arange(segment + 1, segment + t + 1), h * w)
        token_item[offset // m2:(offset + n) // m2] = i
        offset += n
        segment += t
    return {"patches": patches, "positions": positions, "segment_ids": segments, "token_item": token_item}


def pack_vision_batch(rows, max_patches: int) -> dict[str, np.ndarray]:
    """One row per text row: `rows[b]` is the item list of row b. Fields get batch rows first."""
    packed = [pack_vision_row(items, max_patches) for items in rows]
    return {k: np.stack([p[k] for p in packed]) for k in packed[0]} if packed else {}
