"""omni_jax/models/omni.py: parts fit, placeholders receive exactly their embeddings, the
frozen tokenizer gets no gradient, audio-head targets follow the 1.5 shift."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from configs.omni15 import stages
from omni_jax import sharding as shd
from omni_jax.data.omni_pipeline import OmniPipeline
from omni_jax.models.omni import Omni15, Omni15Config, speech_head_targets
from omni_jax.tasks.omni import OmniTask
from tests.reference_models import random_params


@pytest.fixture(scope="module")
def setup():
    c = stages.base("test")
    c.data.mixture = {"qa": dict(dataset="omni_images/shapes_tiny", format="image_qa", weight=0.4, split="train"),
                      "asr": dict(dataset="omni_speech/shapes_tiny", format="asr", weight=0.3, split="train"),
                      "sqa": dict(dataset="omni_spoken_qa/shapes_tiny", format="speech_qa", weight=0.3, split="train")}
    task = OmniTask(c)
    params = random_params(task, 0)
    state = shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(1)))
    pipe = OmniPipeline(c)
    raw = pipe.build_rows(range(6))
    batch = {k: jnp.asarray(v) for k, v in raw.items() if k in task.fields}
    return task, params, state, batch


def test_placeholders_receive_exactly_their_embeddings(setup):
    """The expectation is built without the batch's placement indices and without packing: every
    placeholder is found from the tokens (the kind of the run it belongs to = the token opening
    it: <img_start>, <audio_start>, <audiogen_start>); each image is encoded alone (its own
    patches only, first in an otherwise empty buffer), each audio chunk alone (its own mel buffer, batch of one); code embeddings are the
    sum of the 8 table rows read with numpy; text is the embedding table row. Also: the packed
    path equals the gather of the batch's host-built indices exactly."""
    task, params, state, batch = setup
    m = task.model
    x, extras = m.input_embeddings(params, state, batch)
    text = m.llm.apply({"params": params["llm"]}, batch["tokens"], method=type(m.llm).embed)
    vis = m.vision_tokens(params, batch["vision_patches"], batch["vision_positions"], batch["vision_segment_ids"])
    aud = m.code_embeddings(params, m.audio_codes(params, state, batch["audio_mels"], batch["audio_mel_lengths"])[0])
    sp = m.code_embeddings(params, extras["speech_codes"])
    vi, ai, si = (np.asarray(batch[k]) for k in ("vision_token_index", "audio_token_index", "speech_token_index"))
    x, text, vis, aud, sp = (np.asarray(a) for a in (x, text, vis, aud, sp))
    rows = np.arange(x.shape[0])[:, None]
    gathered = np.where((vi >= 0)[..., None], vis[rows, np.maximum(vi, 0)],
                        np.where((ai >= 0)[..., None], aud[rows, np.maximum(ai, 0)],
                                 np.where((si >= 0)[..., None], sp[rows, np.maximum(si, 0)], text)))
    np.testing.assert_array_equal(x, gathered)

    tok = OmniPipeline(task.config).tokenizer
    kinds = {tok.special("img_start"): "vision", tok.special("audio_start"): "audio",
             tok.special("audiogen_start"): "speech"}
    pads = {tok.special("img_pad"), tok.special("audio_pad")}
    table = np.asarray(params["llm"]["embed_tokens"]["embedding"])
    code_tables = [np.asarray(params["audio_embed"][f"tables_{i}"]["embedding"]) for i in range(8)]
    codes_one = jax.jit(lambda mel, n: m.audio_codes(params, state, mel, n))
    vision_one = jax.jit(lambda pt, ps, sg: m.vision_tokens(params, pt, ps, sg))

    def image_alone(patches, positions):  # one image at the start of its own buffer (one compile)
        n, buf = len(patches), batch["vision_patches"].shape[1]
        pt = np.zeros((1, buf, patches.shape[1]), np.float32)
        ps = np.zeros((1, buf, 2), np.int32)
        pt[0, :n], ps[0, :n] = patches, positions
        return np.asarray(vision_one(pt, ps, (np.arange(buf) < n).astype(np.int32)[None]))[0, : n // 4]

    def clip_embeddings(mels, lengths):  # every chunk alone, its valid frames only
        out = []
        for mel, n in zip(np.asarray(mels), np.asarray(lengths)):
            if n:
                codes, clen = codes_one(jnp.asarray(mel[None, None]), jnp.asarray([[n]]))
                c = np.asarray(codes[0, : int(clen[0, 0])])
                out.append(sum(t[c[:, i]] for i, t in enumerate(code_tables)))
        return np.concatenate(out) if out else np.zeros((0, table.shape[1]), np.float32)

    seen, worst = {"vision": 0, "audio": 0, "speech": 0}, 0.0
    for r in range(x.shape[0]):
        toks = np.asarray(batch["tokens"][r])
        seg = np.asarray(batch["vision_segment_ids"][r])
        images = [image_alone(np.asarray(batch["vision_patches"][r])[seg == k],
                              np.asarray(batch["vision_positions"][r])[seg == k]) for k in range(1, int(seg.max()) + 1)]
        items = {"vision": np.concatenate(images) if images else np.zeros((0, table.shape[1]), np.float32),
                 "audio": clip_embeddings(batch["audio_mels"][r], batch["audio_mel_lengths"][r]),
                 "speech": clip_embeddings(batch["speech_mels"][r], batch["speech_mel_lengths"][r])}
        want, used, kind = table[toks].copy(), dict.fromkeys(items, 0), None
        for p, t in enumerate(toks):
            if t in pads and kind is not None:
                want[p] = items[kind][used[kind]]
                used[kind] += 1
            elif t not in pads:
                kind = kinds.get(int(t))
        for k in items:
            assert used[k] == len(items[k]), (r, k, used[k], len(items[k]))  # every token of every item placed
            seen[k] += used[k]
        worst = max(worst, float(np.abs(x[r] - want).max()))
    print(f"placeholders filled from per-item encodings: {seen}; max abs diff {worst:.3e}")
    assert worst <= 1e-5
    assert all(seen.values())  # all three modalities are present


def test_gradients_reach_trained_parts_and_never_the_tokenizer(setup):
    task, params, state, batch = setup
    norms = task.norms(batch)
    grads = jax.jit(jax.grad(lambda p: task.loss_with_state(p, state, batch, None, norms)[0]))(params)
    norm = {k: float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(v))) for k, v in grads.items()}
    for k in ("audio_encoder", "audio_bridge", "audio_decoder", "flow_matching", "vocoder"):
        assert norm[k] == 0.0, k
    for k in ("llm", "visual", "visual_bridge", "audio_embed", "audio_head"):
        assert norm[k] > 0.0, k
    obj, metrics, _ = task.loss_with_state(params, state, batch, None, norms)
    assert float(metrics["audio_loss"]) > 0 and abs(float(obj) - float(metrics["text_loss"] + metrics["audio_loss"])) < 1e-5


def test_speech_head_targets_shift_and_end_code():
    sizes = (5, 4, 3)
    codes = jnp.arange(2 * 6 * 3).reshape(1, 12, 3) % 3  # 12 frames of 3 codebooks
    # positions: <audiogen_start> predicts frame 0, pad k predicts frame k + 1, the last pad ends
    batch = {"speech_target_index": jnp.array([[-1, 0, 1, 2, -1, -1]]), "speech_target_end": jnp.array([[0, 0, 0, 0, 1, 0]]),
             "speech_loss_mask": jnp.array([[0, 1, 1, 1, 1, 0]], jnp.float32)}
    t, w = speech_head_targets(batch, codes, sizes)
    assert t[0, 2].tolist() == codes[0, 1].tolist() and t[0, 4].tolist() == [5, 4, 3]
    assert w[0, 4].tolist() == [1, 0, 0] and w[0, 1].tolist() == [1, 1, 1] and w[0, 0].sum() == 0


def test_parts_that_do_not_fit_are_named():
    m = common.omni15_model("tiny")
    m.vision.out_hidden_size = 96
    with pytest.raises(ValueError, match=r"config.model.vision.out_hidden_size=96 must equal config.model.llm.hidden_size=128"):
        Omni15Config.from_config(m)
    m = common.omni15_model("tiny")
    m.audio_head.codebook_sizes = (8,) * 8
    with pytest.raises(ValueError, match="audio_head.codebook_sizes"):
        Omni15Config.from_config(m)
    with pytest.raises(ValueError, match=r"missing \['vocoder'\]"):
        Omni15Config.from_config({k: v for k, v in common.omni15_model("tiny").items() if k != "vocoder"})


def test_7b_tree_has_the_release_parameter_count():
    m = Omni15(Omni15Config.from_config(common.omni15_model("7b")))
    tree = shd.unbox(jax.eval_shape(m.init, jax.ShapeDtypeStruct((2,), jnp.uint32)))
    n = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in tree.items()}
    assert n["llm"] == 7_615_616_512
    assert n["visual"] + n["visual_bridge"] == 675_759_104  # Qwen2-VL-7B vision + merger, bridge to 3584


@pytest.mark.parametrize("impl", ["splash", "blockwise"])
def test_init_does_not_depend_on_the_attention_kernel(impl):
    """init traces 4-token / 16-patch dummies, too short for kernel blocks: it uses xla attention."""
    def tree(impl):
        m = common.omni15_model("tiny")
        m.llm.update(attention_impl=impl, attention_block_size=128)
        m.vision.attention_impl = impl
        model = Omni15(Omni15Config.from_config(m))
        return jax.tree.map(lambda x: (x.shape, x.dtype),
                            shd.unbox(jax.eval_shape(model.init, jax.ShapeDtypeStruct((2,), jnp.uint32))))

    assert tree(impl) == tree("xla")
