"""omni_jax/models/whisper.py: parity with transformers' WhisperEncoder, per-clip masking, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from omni_jax import sharding as shd
from omni_jax.convert import audio as conv
from omni_jax.convert.mapping import ConversionError
from omni_jax.models.whisper import WhisperEncoder, WhisperEncoderConfig, sinusoids
from tests.audio_reference import tiny_hf_whisper_encoder, whisper_encoder_one_clip, whisper_encoder_release_batch
from tests.reference_models import state_dict_numpy

T_MEL = 32  # 2 * max_source_positions of the tiny config


def _cfg(**kw):
    return WhisperEncoderConfig(num_mel_bins=128, d_model=64, num_layers=2, num_heads=4, ffn_dim=96,
                                max_source_positions=16, **kw)


def _abstract(model, t=T_MEL):
    return shd.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 128, t)),
                                    jnp.ones((1,), jnp.int32))["params"])


@pytest.fixture(scope="module")
def ref_and_ours():
    ref = tiny_hf_whisper_encoder()
    cfg = _cfg()
    model = WhisperEncoder(cfg)
    params = conv.import_encoder(state_dict_numpy(ref), cfg, _abstract(model), flavour="hf")
    return ref, cfg, model, params


def test_sinusoids_match_transformers():
    from transformers.models.whisper.modeling_whisper import sinusoids as hf_sinusoids

    for length, ch, tol in [(16, 64, 1e-6), (1500, 1280, 5e-4), (3000, 1280, 5e-4)]:
        d = float(np.abs(sinusoids(length, ch) - hf_sinusoids(length, ch).numpy()).max())
        print(f"sinusoids({length}, {ch}) max abs diff vs transformers: {d:.3e}")
        assert d <= tol


def test_full_length_matches_transformers(ref_and_ours):
    ref, cfg, model, params = ref_and_ours
    mel = np.random.RandomState(0).randn(2, 128, T_MEL).astype(np.float32)
    ours, lengths = jax.jit(model.apply)({"params": params}, mel, np.full((2,), T_MEL, np.int32))
    with torch.no_grad():
        want = ref(torch.tensor(mel)).last_hidden_state.numpy()
    d = float(np.abs(np.asarray(ours) - want).max())
    print(f"whisper encoder max abs diff vs transformers WhisperEncoder (fp32): {d:.3e}")
    assert d <= 2e-5 and lengths.tolist() == [16, 16]


def test_clips_of_different_lengths_are_masked_per_clip(ref_and_ours):
    """Each row equals the encoder run on that clip's valid frames alone; padding is zero."""
    ref, cfg, model, params = ref_and_ours
    r = np.random.RandomState(1)
    lengths = np.array([T_MEL, 19, 8, 1], np.int32)  # odd lengths exercise conv2's right edge
    mel = r.randn(4, 128, T_MEL).astype(np.float32) * 3  # garbage beyond each valid length
    out, enc_len = jax.jit(model.apply)({"params": params}, mel, lengths)
    out = np.asarray(out)
    assert enc_len.tolist() == [16, 10, 4, 1]
    worst = 0.0
    for b, (m, n) in enumerate(zip(lengths, enc_len.tolist())):
        want = whisper_encoder_one_clip(ref, mel[b, :, :m])
        assert want.shape[0] == n
        worst = max(worst, float(np.abs(out[b, :n] - want).max()))
        assert not out[b, n:].any()
    print(f"whisper encoder, clips of lengths {lengths.tolist()}: max abs diff vs per-clip reference {worst:.3e}")
    assert worst <= 2e-5


def _padded_batch_diff(ref_and_ours, lengths):
    ref, cfg, model, params = ref_and_ours
    mel = np.random.RandomState(2).randn(len(lengths), 128, T_MEL).astype(np.float32)
    mel *= np.arange(T_MEL)[None, None, :] < lengths[:, None, None]  # the processor's zeros
    out, enc_len = jax.jit(model.apply)({"params": params}, mel, lengths)
    want = whisper_encoder_release_batch(ref, mel, lengths)
    assert enc_len.tolist() == [(n - 1) // 2 + 1 for n in lengths.tolist()]
    d = float(np.abs(np.asarray(out) - want).max())
    print(f"whisper encoder, padded batch of lengths {lengths.tolist()}: max abs diff vs the release's batched "
          f"forward {d:.3e}")
    return d


def test_padded_batch_of_even_lengths_matches_the_release_batched_forward(ref_and_ours):
    """A padded batch as the release's processor leaves it (zeros beyond each valid length)
    against the release's batched forward (conv stem over the padded batch, per-clip attention)."""
    assert _padded_batch_diff(ref_and_ours, np.array([T_MEL, 20, 8, 2], np.int32)) <= 2e-5


@pytest.mark.xfail(strict=True, reason=(
    "measured 2026-12-02: for an ODD valid length the release's conv stem, run over the padded "
    "batch, feeds gelu(conv1(zero frame)) = gelu(conv1.bias) into conv2 at the clip's last "
    "output frame, where ours (like the per-clip reference) sees zero padding: that frame "
    "differs by ~5e-2, the rest of the clip by ~1e-3 through attention (even lengths: 6e-7). "
    "Which one the release's inference sees depends on whether it cuts the mel to the valid "
    "length before the encoder; to be settled against processor_omni.py / modeling_omni.py."))
def test_padded_batch_of_odd_lengths_matches_the_release_batched_forward(ref_and_ours):
    assert _padded_batch_diff(ref_and_ours, np.array([19, 7, 1], np.int32)) <= 2e-5


def test_round_trip_and_release_names(ref_and_ours):
    ref, cfg, model, params = ref_and_ours
    sd = state_dict_numpy(ref)
    back = conv.export_encoder(params, cfg, flavour="hf")
    assert list(back) == list(sd)
    for k in sd:
        assert np.array_equal(back[k], sd[k]) or k == "embed_positions.weight", k
    again = conv.import_encoder(back, cfg, _abstract(model), flavour="hf")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)))
    rel = conv.export_encoder(params, cfg, flavour="release", prefix="audio_tokenizer.audio_model.")
    names = list(rel)
    assert names[0] == "audio_tokenizer.audio_model.positional_embedding" and names[1].endswith("conv1.weight")
    assert names[-1] == "audio_tokenizer.audio_model.layer_norm.bias"
    again = conv.import_encoder(rel, cfg, _abstract(model), flavour="release", prefix="audio_tokenizer.audio_model.")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)))


def test_bad_inputs_give_clear_errors(ref_and_ours):
    ref, cfg, model, params = ref_and_ours
    with pytest.raises(ValueError, match=r"expects mel features \(batch, 128, frames\)"):
        model.apply({"params": params}, np.zeros((1, 80, T_MEL), np.float32), np.ones(1, np.int32))
    with pytest.raises(ValueError, match="max_source_positions"):
        model.apply({"params": params}, np.zeros((1, 128, 40), np.float32), np.ones(1, np.int32))
    sd = state_dict_numpy(ref)
    bad = dict(sd, **{"embed_positions.weight": sd["embed_positions.weight"] + 0.5})
    with pytest.raises(ConversionError, match="not the Whisper sinusoid table"):
        conv.import_encoder(bad, cfg, _abstract(model), flavour="hf")
    bad = dict(sd, **{"layers.1.fc1.weight": np.zeros((95, 64), np.float32)})
    with pytest.raises(ConversionError, match=r"layers.1.fc1.weight: got \(95, 64\), expected \(96, 64\)"):
        conv.import_encoder(bad, cfg, _abstract(model), flavour="hf")
    with pytest.raises(ValueError, match="unknown key"):
        WhisperEncoderConfig.from_dict({"d_modle": 3})


def test_sharded_remat_equals_plain(ref_and_ours):
    """8-device mesh (data 2, fsdp 2, tensor 2), full remat: same output and gradient."""
    _, cfg, plain, params = ref_and_ours
    model = WhisperEncoder(_cfg(remat_policy="full"))
    mel = np.random.RandomState(2).randn(4, 128, T_MEL).astype(np.float32)
    lengths = np.array([32, 20, 9, 32], np.int32)

    def loss(p, m, model=model):
        h, _ = model.apply({"params": p}, m, lengths)
        return jnp.sum(h ** 2), h

    g0, h0 = jax.jit(jax.grad(lambda p, m: loss(p, m, plain), has_aux=True))(params, mel)
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 128, T_MEL)), jnp.ones((1,), jnp.int32))["params"]
        shard = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, shd.LOGICAL_AXIS_RULES)
        p = jax.device_put(params, shard)
        g1, h1 = jax.jit(jax.grad(loss, has_aux=True))(p, mel)
    assert p["layers"]["fc1"]["kernel"].sharding.spec == jax.P(None, ("fsdp", "context"), "tensor")
    np.testing.assert_allclose(np.asarray(h1), np.asarray(h0), atol=2e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-4, rtol=1e-4)


def test_causal_rmsnorm_layer_variant():
    """The layer variant other audio branches reuse (causal, RMSNorm without bias: the flow-matching
    prenet's OmniWhisperTransformerLayer(ln_type='RMSNorm')): future frames never leak into the past."""
    from omni_jax.models.whisper import AudioLayerSpec, AudioTransformerLayer

    spec = AudioLayerSpec(d_model=16, num_heads=2, ffn_dim=32, causal=True, norm="rmsnorm", norm_eps=1e-6)
    layer = AudioTransformerLayer(spec)
    x = np.random.RandomState(0).randn(1, 10, 16).astype(np.float32)
    seg = np.ones((1, 10), np.int32)
    v = layer.init(jax.random.PRNGKey(0), x, seg)
    assert set(v["params"]["self_attn_layer_norm"]) == {"scale"}
    y, _ = layer.apply(v, x, seg)
    x2 = x.copy()
    x2[:, 6:] += 5.0
    y2, _ = layer.apply(v, x2, seg)
    np.testing.assert_allclose(np.asarray(y2[:, :6]), np.asarray(y[:, :6]), atol=1e-6)
    assert not np.allclose(np.asarray(y2[:, 6:]), np.asarray(y[:, 6:]))
