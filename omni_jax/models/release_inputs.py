"""The release's way of putting media into a token sequence, for `forward_release_style`.

Baichuan-Omni-1.5's `OmniModel.forward(input_ids, audios_tokens, images, images_grid, videos,
videos_grid)` (modeling_omni.py; ARCHITECTURE.md 1.6) takes unpadded rows of token ids and the
media of the whole batch as flat lists, and builds everything else itself:

  placement  `get_multimodal_embed`: the k-th placeholder of a modality in the batch, counted in
             row-major order over (rows, positions), receives that modality's k-th embedding
             (audio codes at `<audio_pad>`, image tokens at `<img_pad>`, video-frame tokens at
             `<video_palce>`), in the order audio, images, videos; the text embedding there is
             dropped. The count of placeholders must equal the count of embeddings.
  positions  1-D `arange(T)` in every row (1.5 has no multimodal 3-D rope); the vision encoder's
             own 2-D (h, w) rotary positions come from each item's grid.
  attention  causal over the whole row (no packing): segment id 1 everywhere.
  audio      each <= 30 s chunk's log-mel gives (L - 1) // 2 + 1 encoder frames and
             floor(that / 4) codes (`inference_output_length`); `audios_tokens` is the valid
             codes of every chunk, concatenated (`valid_codes`).

Everything here is host-side (numpy) bookkeeping or a jnp index; the model parts and the one
placement function (`place`, `place_in_order`) stay in omni.py. The vision positions are
navit.py's `patch_positions` (transformers' merge-window order), which the data pipeline uses too.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.models.navit import patch_positions

Array = jax.Array

# The release's placeholder ids (reference_config.json audio_pad_token_id, image_pad_token_id,
# video_place_token_id; the same as omni_jax/data/special_tokens.py RELEASE_IDS, which models/ may
# not import: tests/models/test_omni_api.py checks they agree); a model trained with another
# tokenizer passes its own ids.
RELEASE_PLACEHOLDERS = {"audio": 151678, "image": 151681, "video": 151694}


def placeholder_ids(ids: Mapping[str, int] | None) -> dict[str, int]:
    """{audio, image, video} placeholder ids: the release's unless given; unknown keys are named."""
    out = dict(RELEASE_PLACEHOLDERS)
    if ids:
        unknown = sorted(set(ids) - set(out))
        if unknown:
            raise ValueError(f"placeholder ids: unknown key(s) {unknown}; valid: {sorted(out)}")
        out.update({k: int(v) for k, v in ids.items()})
    return out


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_count(input_ids, pad_id: int, count: int, modality: str) -> None:
    """The release's assert, as an error naming the modality and both counts (host-side; skipped
    when input_ids is traced under jit)."""
    if not is_concrete(input_ids):
        return
    n = int(np.sum(np.asarray(input_ids) == pad_id))
    if n != count:
        raise ValueError(f"{modality}: input_ids hold {n} placeholders (id {pad_id}) but {count} {modality} "
                         f"embeddings were given; each placeholder takes exactly one embedding")


def placeholder_index(input_ids: Array, pad_id: int) -> Array:
    """(1, B * T) gather index of the release's `get_multimodal_embed`: the k-th `pad_id` position
    of the batch (row-major over rows, positions) -> k, -1 elsewhere. With omni.py `place` on the
    flattened batch it puts the k-th embedding there."""
    mask = (jnp.asarray(input_ids) == pad_id).reshape(1, -1)
    return jnp.where(mask, jnp.cumsum(mask, axis=1) - 1, -1).astype(jnp.int32)


def positions_and_segments(input_ids: Array) -> tuple[Array, Array]:
    """The release's LLM positions (arange per row) and one causal segment per row."""
    b, t = input_ids.shape
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)), jnp.ones((b, t), jnp.int32)


def valid_codes(codes, code_lengths) -> np.ndarray:
    """codes (N, L, depth) + (N,) valid lengths -> (sum of lengths, depth): every chunk's valid codes
    concatenated in chunk order (the release's `audios_tokens`)."""
    codes, lengths = np.asarray(codes), np.asarray(code_lengths)
    return np.concatenate([codes[i, :int(n)] for i, n in enumerate(lengths)] or [codes[:0, 0]], axis=0)


def vision_layout(grids: Sequence[Sequence[int]], num_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """(h, w) rotary positions (P, 2) and segment ids (P,) (one per image / temporal frame, from 1)
    of items with these (t, h, w) grids packed back to back, as the release's vision encoder
    sees them (`grid_thw`); errors name a grid that does not match the patches."""
    grids = [tuple(int(g) for g in grid) for grid in np.asarray(grids).reshape(-1, 3)]
    total = sum(t * h * w for t, h, w in grids)
    if total != num_patches:
        raise ValueError(f"vision: the grids {grids} hold {total} patches but {num_patches} patches were given")
    for t, h, w in grids:
        if h % 2 or w % 2:
            raise ValueError(f"vision: grid {(t, h, w)} has an odd side; h and w must be even (2x2 merge windows)")
    pos = np.concatenate([patch_positions(g) for g in grids]) if grids else np.zeros((0, 2), np.int32)
    frames = [h * w for t, h, w in grids for _ in range(t)]
    seg = np.repeat(np.arange(1, len(frames) + 1, dtype=np.int32), frames)
    return pos.astype(np.int32), seg
