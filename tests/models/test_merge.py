"""omni_jax/models/merge.py: placeholder filling in order, shared buffers, gradients, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.data import vision_preprocessing as vp
from omni_jax.models.merge import (MergeSource, build_merge_index, merge_embeddings,
                                   token_mask_from_items)

# small ids standing for the special tokens (tests build sequences by hand)
T, A_S, A_E, A, I_S, I_E, I, V_S, V_E, V = 5, 10, 11, 12, 13, 14, 15, 16, 17, 18
D = 4


def _batch():
    ids = np.array([
        [T, A_S, A, A, A, A_E, T, I_S, I, I, I_E, V_S, I_S, V, I_E, I_S, V, I_E, V_E, T],
        [T, I_S, I, I_E, T, A_S, A, A, A_E, T, T, T, T, T, T, T, T, T, T, T],
    ], np.int32)
    audio_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)  # (B, 4) audio tokens, padded
    # vision rows: row 0 = [image (2 tokens), frame, frame], row 1 = [image (1 token)], then padding
    token_item = np.array([[0, 0, 1, 2, -1, -1], [0, -1, -1, -1, -1, -1]], np.int32)
    return ids, audio_mask, token_item


def _sources(audio_mask, token_item):
    return [
        MergeSource("audio", (A,), audio_mask),
        MergeSource("image", (I,), token_mask_from_items(token_item, [[0], [0]]), buffer=1),
        MergeSource("video", (V,), token_mask_from_items(token_item, [[1, 2], []]), buffer=1),
    ]


def test_placeholders_are_filled_in_order_from_their_rows_buffers():
    ids, audio_mask, token_item = _batch()
    index = build_merge_index(ids, _sources(audio_mask, token_item))
    rs = np.random.RandomState(0)
    text = rs.randn(2, ids.shape[1], D).astype(np.float32)
    audio = rs.randn(2, 4, D).astype(np.float32)
    vision = rs.randn(2, 6, D).astype(np.float32)
    out = np.asarray(jax.jit(merge_embeddings)(text, [audio, vision], index))
    want = text.copy()
    for b in range(2):
        queues = {A: list(audio[b][audio_mask[b]]),
                  I: [vision[b][k] for k in range(6) if token_item[b, k] == 0],
                  V: [vision[b][k] for k in range(6) if token_item[b, k] in (1, 2)] if b == 0 else []}
        for t, tok in enumerate(ids[b]):
            if tok in queues:
                want[b, t] = queues[tok].pop(0)
        assert all(not q for q in queues.values())
    assert np.array_equal(out, want)
    assert (index >= 0).sum() == (np.isin(ids, [A, I, V])).sum()


def test_gradients_reach_only_placed_tokens():
    ids, audio_mask, token_item = _batch()
    index = jnp.asarray(build_merge_index(ids, _sources(audio_mask, token_item)))
    text = jnp.ones((2, ids.shape[1], D))
    audio, vision = jnp.ones((2, 4, D)), jnp.ones((2, 6, D))
    g_text, g_audio, g_vision = jax.grad(lambda t, a, v: merge_embeddings(t, [a, v], index).sum(), (0, 1, 2))(
        text, audio, vision)
    assert np.array_equal(np.asarray(g_audio[..., 0]) > 0, audio_mask)
    assert np.array_equal(np.asarray(g_vision[..., 0]) > 0, token_item >= 0)
    assert np.array_equal(np.asarray(g_text[..., 0]) == 0, np.isin(ids, [A, I, V]))


def test_works_with_pack_vision_row_token_items():
    rs = np.random.RandomState(1)
    img = (rs.randn(16, vp.PATCH_DIM).astype(np.float32), (1, 4, 4))  # 4 tokens
    frame = (rs.randn(8, vp.PATCH_DIM).astype(np.float32), (1, 2, 4))  # 2 tokens
    batch = vp.pack_vision_batch([[img, frame, frame]], 48)
    ids = np.array([[T, I_S] + [I] * 4 + [I_E, V_S] + [I_S, V, V, I_E] * 2 + [V_E, T]], np.int32)
    srcs = [MergeSource("image", (I,), token_mask_from_items(batch["token_item"], [[0]])),
            MergeSource("video", (V,), token_mask_from_items(batch["token_item"], [[1, 2]]), buffer=0)]
    index = build_merge_index(ids, srcs)
    assert index[0][ids[0] == I].tolist() == [0, 1, 2, 3] and index[0][ids[0] == V].tolist() == [4, 5, 6, 7]


def test_count_mismatch_names_the_modality_and_both_counts():
    ids, audio_mask, token_item = _batch()
    ids = ids.copy()
    ids[0, 9] = T  # one image placeholder lost (e.g. truncation)
    with pytest.raises(ValueError, match=r"image: row 0 has 1 placeholder tokens \(ids \[15\]\) but 2 image embeddings"):
        build_merge_index(ids, _sources(audio_mask, token_item))
    bad_audio = audio_mask.copy()
    bad_audio[1, 2] = True
    with pytest.raises(ValueError, match=r"audio: row 1 has 2 placeholder tokens .* but 3 audio embeddings"):
        build_merge_index(_batch()[0], _sources(bad_audio, token_item))


def test_configuration_errors():
    ids, audio_mask, token_item = _batch()
    with pytest.raises(ValueError, match="placeholder id 12 is claimed by both 'audio' and 'speech'"):
        build_merge_index(ids, [MergeSource("audio", (A,), audio_mask), MergeSource("speech", (A,), audio_mask)])
    with pytest.raises(ValueError, match="video: its token_mask overlaps"):
        build_merge_index(ids, [MergeSource("image", (I,), token_item >= 0),
                                MergeSource("video", (V,), token_item >= 0, buffer=0)])
    with pytest.raises(ValueError, match=r"audio: token_mask has shape \(1, 4\), expected \(2, tokens\)"):
        build_merge_index(ids, [MergeSource("audio", (A,), audio_mask[:1])])
    with pytest.raises(ValueError, match=r"merge buffer 0 has shape \(2, 4, 3\)"):
        merge_embeddings(jnp.zeros((2, 5, D)), [jnp.zeros((2, 4, 3))], jnp.zeros((2, 5), jnp.int32))
