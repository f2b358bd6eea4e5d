"""omni_jax/models/audio_head.py: parity with the release's audio head (nn.MultiheadAttention,
per-depth FFN), incremental depth decoding, teacher-forcing targets, the loss and its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omni_jax import sharding as shd
from omni_jax.convert import speech as conv
from omni_jax.convert.mapping import import_params, prefixed
from omni_jax.models.audio_head import (AudioEmbed, AudioHead, AudioHeadConfig, audio_head_loss_sum, gather_frames,
                                        init_depth_cache, speech_targets, take_positions)
from tests.speech_reference import TorchAudioEmbed, TorchAudioHead, randomize_

CFG = AudioHeadConfig(hidden_size=64, codebook_sizes=(40, 30, 20, 10, 10, 10, 10, 10), num_layers=2, head_dim=16)


def _rules(cfg):
    return prefixed(conv.audio_embed_rules(cfg), ours="audio_embed/") + prefixed(conv.audio_head_rules(cfg), ours="audio_head/")


def _abstract(cfg):
    k = jax.random.PRNGKey(0)
    return shd.unbox({
        "audio_embed": jax.eval_shape(AudioEmbed(cfg).init, k, jnp.zeros((1, cfg.depth), jnp.int32))["params"],
        "audio_head": jax.eval_shape(AudioHead(cfg).init, k, jnp.zeros((1, cfg.hidden_size)),
                                     jnp.zeros((1, cfg.depth, cfg.hidden_size)))["params"],
    })


@pytest.fixture(scope="module")
def ref_and_ours():
    th = randomize_(TorchAudioHead(64, CFG.codebook_sizes, CFG.num_layers, CFG.num_heads), 0)
    te = randomize_(TorchAudioEmbed(64, CFG.codebook_sizes), 1)
    sd = {"model." + k: v.numpy() for k, v in te.state_dict().items()}
    sd.update({"audio_head." + k: v.detach().numpy() for k, v in th.state_dict().items()})
    params = import_params(sd, _rules(CFG), _abstract(CFG))
    return th, te, params


def _codes(n, seed=0):
    rs = np.random.RandomState(seed)
    return np.stack([rs.randint(0, c + 1, (n,)) for c in CFG.codebook_sizes], -1).astype(np.int32)


def test_head_logits_match_release_reference(ref_and_ours):
    th, te, params = ref_and_ours
    codes, h0 = _codes(6), np.random.RandomState(1).randn(6, 64).astype(np.float32)
    ce = AudioEmbed(CFG).apply({"params": params["audio_embed"]}, codes, method=AudioEmbed.per_codebook)
    ours = jax.jit(lambda p, h, c: AudioHead(CFG).apply({"params": p}, h, c))(params["audio_head"], h0, ce)
    with torch.no_grad():
        ref = th(torch.tensor(h0), torch.tensor(codes, dtype=torch.long), te.audio_embed_layers)
    diff = max(float(np.abs(np.asarray(a) - b.numpy()).max()) for a, b in zip(ours, ref))
    print(f"audio head logits max abs diff vs release reference (fp32): {diff:.3e}")
    assert [a.shape[-1] for a in ours] == [c + 1 for c in CFG.codebook_sizes]
    assert diff <= 1e-5
    frame = AudioEmbed(CFG).apply({"params": params["audio_embed"]}, codes)
    assert float(np.abs(np.asarray(frame) - te(torch.tensor(codes, dtype=torch.long)).detach().numpy()).max()) <= 1e-6


def test_incremental_depth_steps_equal_the_full_depth_pass(ref_and_ours):
    _, _, params = ref_and_ours
    codes, h0 = _codes(3, 2), np.random.RandomState(3).randn(3, 64).astype(np.float32)
    emb, head = AudioEmbed(CFG), AudioHead(CFG)

    @jax.jit
    def both(params, h0, codes):
        ce = emb.apply({"params": params["audio_embed"]}, codes, method=AudioEmbed.per_codebook)
        full = head.apply({"params": params["audio_head"]}, h0, ce)
        cache, x, cum, steps = init_depth_cache(CFG, 3), h0, 0.0, []
        for i in range(CFG.depth):
            lg, cache = head.apply({"params": params["audio_head"]}, x, i, cache, method=AudioHead.step)
            steps.append(lg)
            cum = cum + ce[:, i]
            x = cum
        return full, steps

    full, steps = both(params, h0, codes)
    for a, b in zip(steps, full):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_teacher_forcing_targets_follow_the_release_shift():
    S, E, P, X = 300, 301, 302, 7  # <audiogen_start>, <audiogen_end>, <audio_pad>, some text
    A_IN, A_OUT = 303, 304  # input audio markers: no loss
    tokens = np.array([[X, S, P, P, P, E, X, A_IN, P, A_OUT, S, P, P]], np.int32)
    seg = np.array([[1] * 10 + [2] * 3], np.int32)  # the last audio segment is cut by the row end
    codes = np.zeros((1, 13, 8), np.int32)
    for t in range(13):
        codes[0, t] = t + 1
    targets = jax.jit(lambda t, c, s: speech_targets(t, c, s, audiogen_start=S, audiogen_end=E, audio_pad=P,
                                                     codebook_sizes=CFG.codebook_sizes))
    tc, tm = targets(jnp.asarray(tokens), jnp.asarray(codes), jnp.asarray(seg))
    tc, tm = np.asarray(tc), np.asarray(tm)
    # <audiogen_start> (pos 1) predicts frame at 2; pads at 2, 3 predict frames at 3, 4; pad 4 predicts the end
    assert tm[0, 1].all() and (tc[0, 1] == 3).all()
    assert (tc[0, 2] == 4).all() and (tc[0, 3] == 5).all()
    assert tm[0, 4].tolist() == [1, 0, 0, 0, 0, 0, 0, 0] and tc[0, 4, 0] == CFG.codebook_sizes[0]
    # text, the end marker, input audio and the next packed sample's truncated segment: no loss
    # (position 10 starts segment 2 and predicts its pad at 11; 11 -> 12; 12 has no next position)
    assert tm[0, [0, 5, 6, 7, 8, 9, 12]].sum() == 0
    assert tm[0, 10].all() and (tc[0, 10] == 12).all() and (tc[0, 11] == 13).all()
    index, valid, count = jax.jit(gather_frames, static_argnums=1)(jnp.asarray(tm), 8)
    assert int(count[0]) == 6 and np.asarray(index)[0, :6].tolist() == [1, 2, 3, 4, 10, 11]
    assert np.asarray(valid)[0].tolist() == [True] * 6 + [False] * 2


def test_loss_trains_head_and_embeddings_and_leaves_unused_biases_untouched(ref_and_ours):
    _, _, params = ref_and_ours
    emb, head = AudioEmbed(CFG), AudioHead(CFG)
    hidden = jnp.asarray(np.random.RandomState(4).randn(2, 5, 64).astype(np.float32))
    tc = jnp.asarray(np.stack([_codes(5, 5), _codes(5, 6)]))
    tm = jnp.ones((2, 5, 8), jnp.float32).at[1, 4, 1:].set(0.0)

    def f(p, h):
        s, per = audio_head_loss_sum(emb, head, p, h, tc, tm)
        return s / tm.sum(), per

    @jax.jit
    def run(params, hidden):
        out = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, hidden)
        index, valid, _ = gather_frames(tm, 5)  # gather + take_positions: same loss on the selected positions
        s2, _ = audio_head_loss_sum(emb, head, params, take_positions(hidden, index), take_positions(tc, index),
                                    take_positions(tm, index) * valid[..., None])
        return out, s2

    ((loss, per), (g, gh)), s2 = run(params, hidden)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert abs(float(sum(per[f"nll_{i}"] for i in range(8)) / tm.sum()) - float(loss)) < 1e-5
    lay = g["audio_head"]["layers"]
    assert float(jnp.abs(lay["linear1"]["bias"]).max()) == 0.0 and float(jnp.abs(lay["linear2"]["bias"]).max()) == 0.0
    assert float(jnp.abs(lay["linear1"]["kernel"]).max()) > 0 and float(jnp.abs(gh).max()) > 0
    # the table of the last codebook is only an input of the depth sequence for codebooks < 7
    assert float(jnp.abs(g["audio_embed"]["tables_0"]["embedding"]).max()) > 0
    assert float(jnp.abs(g["audio_embed"]["tables_7"]["embedding"]).max()) == 0.0
    assert abs(float(s2) / float(tm.sum()) - float(loss)) < 1e-5


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['heads'\]"):
        AudioHeadConfig.from_dict({"heads": 3})
    with pytest.raises(ValueError, match="multiple of head_dim"):
        AudioHeadConfig.from_dict({"hidden_size": 100, "head_dim": 64})
    with pytest.raises(ValueError, match="audio codes have 7 codebooks, the model has 8"):
        AudioEmbed(CFG).init(jax.random.PRNGKey(0), jnp.zeros((2, 7), jnp.int32))
