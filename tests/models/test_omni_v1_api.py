"""The public API of omni_jax/models/omni_v1.py in the 1.5 release's conventions:
`forward_release_style` (flat media, the k-th placeholder of the batch takes the k-th token)
equals the batch path on the same content, with the batch layout written here by hand
(slot-major audio chunks, tile slots); `encode_audio` follows the length rules; counts are named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import omni_v1_model
from omni_jax import sharding as shd
from omni_jax.models.omni_v1 import OmniV1, OmniV1Config

AUDIO, IMAGE, VIDEO = 380, 381, 382
PH = dict(audio=AUDIO, image=IMAGE, video=VIDEO)
F = 600
LENGTHS = [600, 333, 150]  # -> encoder 300, 167, 75 -> tokens 75, 41, 18 (rate 4)


@pytest.fixture(scope="module")
def setup():
    cfg = OmniV1Config.from_config(omni_v1_model("tiny"))
    m = OmniV1(cfg)
    ap = shd.unbox(jax.eval_shape(m.init, jax.ShapeDtypeStruct((2,), np.uint32)))
    rs = np.random.RandomState(0)
    params = jax.tree.map(lambda a: (0.05 * rs.randn(*a.shape)).astype(a.dtype), ap)
    mels = rs.randn(3, 128, F).astype(np.float32)
    for i, n in enumerate(LENGTHS):
        mels[i, :, n:] = 0.0
    s = cfg.siglip.image_size
    tiles = rs.randn(4, 3, s, s).astype(np.float32)
    return dict(cfg=cfg, m=m, params=params, mels=mels, tiles=tiles, video=np.array([0, 0, 1, 1]))


def test_encode_audio_length_rules(setup):
    s = setup
    h, n_enc = jax.jit(s["m"].encode_audio_states)(s["params"], s["mels"], np.array(LENGTHS, np.int32))
    y, n = jax.jit(s["m"].encode_audio)(s["params"], s["mels"], np.array(LENGTHS, np.int32))
    assert n_enc.tolist() == [300, 167, 75] and n.tolist() == [75, 41, 18] and y.shape[:2] == (3, 75)
    assert not np.asarray(y[2, 18:]).any()


def test_forward_release_style_equals_the_batch_path(setup):
    s, m, p = setup, setup["m"], setup["cfg"].v1_projector
    rs = np.random.RandomState(1)
    text = lambda k: list(rs.randint(1, 300, k))
    n_img, n_vid = 2 * p.image_tokens, 2 * p.video_tokens
    r0 = text(4) + [AUDIO] * 75 + text(2) + [IMAGE] * n_img + text(3)
    r1 = text(2) + [VIDEO] * n_vid + text(1) + [AUDIO] * (41 + 18) + text(2)
    t = max(len(r0), len(r1))
    ids = np.array([r0 + text(t - len(r0)), r1 + text(t - len(r1))], np.int32)
    # the batch layout (omni_jax/data/omni_batch.py, tiles mode), by hand
    slot, tps = m.tile_slot, 75
    k0, k1 = np.cumsum(ids[0] == AUDIO) - 1, np.cumsum(ids[1] == AUDIO) - 1
    aidx = np.stack([np.where(ids[0] == AUDIO, k0, -1),
                     np.where(ids[1] == AUDIO, np.where(k1 < 41, k1, tps + k1 - 41), -1)])
    j0, j1 = np.cumsum(ids[0] == IMAGE) - 1, np.cumsum(ids[1] == VIDEO) - 1
    vidx = np.stack([np.where(ids[0] == IMAGE, (j0 // p.image_tokens) * slot + j0 % p.image_tokens, -1),
                     np.where(ids[1] == VIDEO, (j1 // p.video_tokens) * slot + j1 % p.video_tokens, -1)])
    mels = np.zeros((2, 2, 128, F), np.float32)
    mels[0, 0], mels[1, 0], mels[1, 1] = s["mels"]
    batch = dict(tokens=ids, positions=np.tile(np.arange(t, dtype=np.int32), (2, 1)),
                 segment_ids=np.ones((2, t), np.int32), audio_mels=mels,
                 audio_mel_lengths=np.array([[600, 0], [333, 150]], np.int32), audio_token_index=aidx,
                 vision_tiles=s["tiles"].reshape(2, 2, *s["tiles"].shape[1:]),
                 vision_tile_video=s["video"].reshape(2, 2).astype(np.int32), vision_token_index=vidx)
    h_batch, _ = jax.jit(m.hidden)(s["params"], None, {k: jnp.asarray(v) for k, v in batch.items()})
    media = dict(audio_mels=s["mels"], audio_lengths=np.array(LENGTHS), tiles=s["tiles"], tile_video=s["video"],
                 placeholders=PH)
    both = jax.jit(lambda prm, i: (m.hidden_release_style(prm, None, i, **media),
                                   m.forward_release_style(prm, None, i, **media)))
    h, logits = both(s["params"], ids)
    d_h = float(jnp.abs(h - h_batch).max())
    d_l = float(jnp.abs(logits - m.logits(s["params"], h_batch)).max())
    print(f"v1 forward_release_style vs batch path: hidden max abs diff {d_h:.3e}, logits {d_l:.3e}")
    assert d_h <= 1e-6 and d_l <= 1e-6
    with pytest.raises(ValueError, match=r"image: input_ids hold 8 placeholders \(id 381\) but 4 image embeddings"):
        m.forward_release_style(s["params"], None, ids, **dict(media, tiles=s["tiles"][1:], tile_video=s["video"][1:]))
    with pytest.raises(ValueError, match=r"audio: input_ids hold 134 placeholders \(id 380\) but 0 audio"):
        m.forward_release_style(s["params"], None, ids, **dict(media, audio_mels=None, audio_lengths=None))
