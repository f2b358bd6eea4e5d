"""omni_jax/models/omni_v1.py: every placeholder gets exactly its modality's tokens (image tiles
through the image projector, video frames through the 2x2 conv, audio through Whisper + Conv-GMLP),
gradients reach every part, mismatched parts and data are named, the 7b tree's size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from configs.omni_v1 import stages
from omni_jax import sharding as shd
from omni_jax.data.omni_pipeline import OmniPipeline
from omni_jax.models.omni_v1 import OmniV1, OmniV1Config
from omni_jax.models.v1_projectors import V1VisionTower
from omni_jax.tasks.omni_v1 import OmniV1Task


def _config():
    c = stages.base("test")
    c.data.mixture = {"qa": dict(dataset="omni_images/shapes_tiny", format="image_qa", weight=0.4, split="train"),
                      "vid": dict(dataset="omni_videos/shapes_tiny", format="video_qa", weight=0.3, split="train"),
                      "asr": dict(dataset="omni_speech/shapes_tiny", format="asr", weight=0.3, split="train")}
    return c


@pytest.fixture(scope="module")
def setup():
    c = _config()
    task = OmniV1Task(c)
    params = shd.unbox(jax.jit(task.init)(jax.random.PRNGKey(0)))
    raw = OmniPipeline(c).build_rows(range(8))
    batch = {k: jnp.asarray(v) for k, v in raw.items() if k in task.fields}
    return task, params, batch


def test_placeholders_receive_exactly_their_embeddings(setup):
    task, params, batch = setup
    m = task.model
    x, _ = jax.jit(lambda p, b: m.input_embeddings(p, None, b))(params, batch)
    text = m.llm.apply({"params": params["llm"]}, batch["tokens"], method=type(m.llm).embed)
    vparams = {"params": {k: params[k] for k in ("siglip", "v1_projector", "v1_video_projector")}}
    tiles = jnp.moveaxis(batch["vision_tiles"], 2, -1)
    img = m.vision.apply(vparams, tiles, method=V1VisionTower.images)  # (B, K, 4, D): every tile as an image
    vid = m.vision.apply(vparams, tiles, method=V1VisionTower.video)  # (B, K, 9, D): every tile as a frame
    aud = m.audio_tokens(params, batch["audio_mels"], batch["audio_mel_lengths"])
    x, text, img, vid, aud = (np.asarray(a) for a in (x, text, img, vid, aud))
    vi, ai = np.asarray(batch["vision_token_index"]), np.asarray(batch["audio_token_index"])
    is_video = np.asarray(batch["vision_tile_video"])
    slot = m.tile_slot
    assert slot == 9 and (is_video == 1).any() and (is_video[np.asarray(batch["vision_tile_items"]) > 0] == 0).any()
    assert (ai >= 0).any()
    want = text.copy()
    for r in range(x.shape[0]):
        for t in range(x.shape[1]):
            if vi[r, t] >= 0:
                k, j = divmod(int(vi[r, t]), slot)
                want[r, t] = vid[r, k, j] if is_video[r, k] else img[r, k, j]
            elif ai[r, t] >= 0:
                want[r, t] = aud[r, ai[r, t]]
    d = float(np.abs(x - want).max())
    print(f"merged v1 embeddings vs per-modality paths: max abs diff {d:.3e}")
    assert d <= 1e-5


def test_gradients_reach_every_part(setup):
    task, params, batch = setup
    norms = task.norms(batch)
    grads = jax.jit(jax.grad(lambda p: task.loss(p, batch, None, norms)[0]))(params)
    for k, v in grads.items():  # the audio-boundary head is not in the LLM forward: its own stage trains it
        assert (float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(v))) > 0.0) == (k != "v1_boundary_head"), k


def test_parts_and_data_that_do_not_fit_are_named():
    m = common.omni_v1_model("tiny")
    m.v1_projector.llm_width = 96
    with pytest.raises(ValueError, match=r"v1_projector.llm_width=96 must equal config.model.llm.hidden_size=128"):
        OmniV1Config.from_config(m)
    m = common.omni_v1_model("tiny")
    m.v1_audio_projector.d_model = 32
    with pytest.raises(ValueError, match=r"v1_audio_projector.d_model=32 must equal config.model.audio_encoder"):
        OmniV1Config.from_config(m)
    c = _config()
    c.data.media.tokens_per_tile = 6
    with pytest.raises(ValueError, match=r"tokens_per_tile=6 must equal the projector's 4"):
        OmniV1Task(c)
    c = _config()
    c.data.media.audio_pool = 8
    with pytest.raises(ValueError, match=r"audio_pool=8 .* must equal config.model.v1_audio_projector.rate=4"):
        OmniV1Task(c)
    c = _config()
    c.data.shapes.max_speech_chunks = 1
    with pytest.raises(ValueError, match="v1 has no speech output"):
        OmniV1Task(c)
    c = _config()
    c.data.media.vision_mode = "navit"
    c.data.shapes.update(max_tiles=0, max_patches=64)
    with pytest.raises(ValueError, match="vision_mode='tiles'"):
        OmniV1Task(c)


def test_7b_tree_sizes():
    m = OmniV1(OmniV1Config.from_config(common.omni_v1_model("7b")))
    tree = shd.unbox(jax.eval_shape(m.init, jax.ShapeDtypeStruct((2,), jnp.uint32)))
    n = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in tree.items()}
    assert n["llm"] == 7_615_616_512
    assert m.cfg.v1_projector.image_tokens == 182 and m.cfg.v1_projector.video_tokens == 546  # the report's counts
    # SigLIP so400m without its pooling head and the Whisper-large-v3 encoder: checked against
    # transformers on the meta device in tests/convert/test_omni_v1_convert.py
    assert n["siglip"] == 412_987_248 and n["audio_encoder"] == 635_048_960
