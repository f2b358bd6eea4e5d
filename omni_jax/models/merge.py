"""Merging modality embeddings into the text embedding sequence (ARCHITECTURE.md 1.6).

The release fills each modality's placeholder positions, in order, with that modality's
embeddings (audio first, then images, then video frames: `OmniModel.get_multimodal_embed`)
and drops the text embedding there; the counts must match. Here the merge is split so the
device side is one static-shape gather:

  host (numpy, per batch):
    index = build_merge_index(input_ids, [MergeSource("audio", ...), MergeSource("image", ...), ...])
        (B, T) int32: for every text position, -1 (keep the token embedding) or the position
        of its embedding in the row's concatenated source buffers. Raises a ValueError naming
        the modality, the row and both counts when placeholders and embeddings disagree.
  device (jit):
    x = merge_embeddings(text_embeds (B, T, D), [buffer_0 (B, N_0, D), ...], index)

Row b's placeholders take row b's source tokens: every batch field has the batch rows
first (the vision rows of omni_jax/data/vision_preprocessing.pack_vision_batch, AnyRes tile
rows, audio clip rows are per text row), so the gather never crosses rows or devices.
Several modalities may share one buffer (images and video frames both come out of the
same NaViT row): give them the same `buffer` and disjoint `token_mask`s.

Gradients reach exactly the source tokens that were placed (and no placeholder token
embedding), as in the release.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# Which special token (omni_jax/data/special_tokens.py name) holds each modality's embeddings.
PLACEHOLDER_TOKENS: Mapping[str, str] = {"audio": "audio_pad", "image": "img_pad", "video": "video_place"}
# The release's merge order.
OMNI_ORDER = ("audio", "image", "video")


@dataclasses.dataclass(frozen=True)
class MergeSource:
    """One modality's embeddings for a batch.

    modality: name used in error messages ("audio", "image", "video", ...).
    placeholder_ids: token ids whose positions this modality fills.
    token_mask: (B, N) bool, True for the buffer tokens that are real embeddings of this
        modality, in the order they fill the placeholders (row-major within the row).
    buffer: which of merge_embeddings' buffers holds them (default: this source's position
        in the list). Sources sharing a buffer must have the same N and disjoint masks.
    """

    modality: str
    placeholder_ids: tuple[int, ...]
    token_mask: np.ndarray
    buffer: int | None = None


def token_mask_from_items(token_item: np.ndarray, items: Sequence[Sequence[int]]) -> np.ndarray:
    """(B, N) bool: tokens whose item index (pack_vision_row's `token_item`, or an AnyRes
    tile row's tile_item repeated per token) is in `items[b]` for row b."""
    token_item = np.asarray(token_item)
    if len(items) != token_item.shape[0]:
        raise ValueError(f"items has {len(items)} rows, token_item has {token_item.shape[0]}")
    return np.stack([np.isin(token_item[b], np.asarray(list(items[b]), np.int64)) & (token_item[b] >= 0)
                     for b in range(token_item.shape[0])])


def build_merge_index(input_ids: np.ndarray, sources: Sequence[MergeSource]) -> np.ndarray:
    """(B, T) int32 gather index into the rows' concatenated buffers; -1 = text. See module doc."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {ids.shape}")
    b_rows, t = ids.shape
    lengths: dict[int, int] = {}
    for k, s in enumerate(sources):
        m = np.asarray(s.token_mask)
        if m.ndim != 2 or m.shape[0] != b_rows:
            raise ValueError(f"{s.modality}: token_mask has shape {m.shape}, expected ({b_rows}, tokens) "
                             f"for {b_rows} text rows")
        buf = k if s.buffer is None else s.buffer
        if lengths.setdefault(buf, m.shape[1]) != m.shape[1]:
            raise ValueError(f"{s.modality}: buffer {buf} has {lengths[buf]} tokens per row in another "
                             f"source but {m.shape[1]} here")
    order = sorted(lengths)
    if order != list(range(len(order))):
        raise ValueError(f"sources use buffers {order}; buffers must be numbered 0..{len(order) - 1}")
    offsets = dict(zip(order, np.cumsum([0] + [lengths[i] for i in order[:-1]])))

    used: dict[int, np.ndarray] = {}
    owner: dict[int, str] = {}
    for k, s in enumerate(sources):  # structure first, then counts
        buf = k if s.buffer is None else s.buffer
        for pid in s.placeholder_ids:
            if pid in owner:
                raise ValueError(f"placeholder id {pid} is claimed by both {owner[pid]!r} and {s.modality!r}")
            owner[pid] = s.modality
        mask = np.asarray(s.token_mask, bool)
        taken = used.setdefault(buf, np.zeros_like(mask))
        if (taken & mask).any():
            raise ValueError(f"{s.modality}: its token_mask overlaps another source's tokens in buffer {buf}")
        taken |= mask

    index = np.full((b_rows, t), -1, np.int32)
    for k, s in enumerate(sources):
        buf = k if s.buffer is None else s.buffer
        mask = np.asarray(s.token_mask, bool)
        ph = np.isin(ids, np.asarray(s.placeholder_ids, ids.dtype))
        for b in range(b_rows):
            pos = np.flatnonzero(ph[b])
            tok = np.flatnonzero(mask[b])
            if len(pos) != len(tok):
                raise ValueError(
                    f"{s.modality}: row {b} has {len(pos)} placeholder tokens (ids {list(s.placeholder_ids)}) "
                    f"but {len(tok)} {s.modality} embeddings. The text's {s.modality} spans and the "
                    f"{s.modality} inputs disagree (a span cut by truncation, or a wrong token count).")
            index[b, pos] = offsets[buf] + tok
    return index


def merge_embeddings(text_embeds: jax.Array, buffers: Sequence[jax.Array], index: jax.Array) -> jax.Array:
    """(B, T, D) text embeddings with index >= 0 positions replaced from the buffers (jit-safe)."""
    if not buffers:
        return text_embeds
    for i, b in enumerate(buffers):
        if b.ndim != 3 or b.shape[0] != text_embeds.shape[0] or b.shape[2] != text_embeds.shape[2]:
            raise ValueError(f"merge buffer {i} has shape {b.shape}; expected ({text_embeds.shape[0]}, tokens, "
                             f"{text_embeds.shape[2]}) (batch rows and width of the text embeddings)")
    buf = jnp.concatenate([b.astype(text_embeds.dtype) for b in buffers], axis=1)
    gathered = jax.vmap(lambda row, i: jnp.take(row, i, axis=0))(buf, jnp.maximum(index, 0))
    out = jnp.where((index >= 0)[..., None], gathered, text_embeds)
    return nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_embed"))
