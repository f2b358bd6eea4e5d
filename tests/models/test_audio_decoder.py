"""omni_jax/models/audio_decoder.py: parity with the release's OmniAudioDecoder, clip by clip and on
batches (the release's batched path: tests/audio_reference.py ReleaseAudioDecoder.hidden_batch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omni_jax import sharding as shd
from omni_jax.convert import audio as conv
from omni_jax.convert.mapping import import_params
from omni_jax.models.audio_decoder import AudioDecoder, AudioDecoderConfig
from tests.audio_reference import ReleaseAudioDecoder, randomize_
from tests.reference_models import state_dict_numpy

D, N = 32, 6  # width, 12.5 Hz frames per row
KW = dict(d_model=D, num_layers=2, num_heads=4, ffn_dim=48, num_mel_bins=16, postnet_channels=(24, 24),
          max_positions=64)


@pytest.fixture(scope="module")
def ref_and_ours():
    torch.manual_seed(0)
    ref = randomize_(ReleaseAudioDecoder(D, 4, 48, 2, 4, 2, 16, [24, 24, 24], 64)).eval()
    cfg = AudioDecoderConfig(**KW)
    model = AudioDecoder(cfg)
    abstract = shd.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, N, D)),
                                        jnp.ones((1,), jnp.int32))["params"])
    sd = state_dict_numpy(ref)
    params = import_params(sd, conv.decoder_rules(cfg, params="params/", buffers="buffers/"),
                           {"params": abstract, "buffers": {"positional_embedding": jax.ShapeDtypeStruct((64, D), np.float32)}})
    conv.check_sinusoids("positional_embedding", sd["positional_embedding"], np.asarray(params["buffers"]["positional_embedding"]))
    return ref, cfg, model, params["params"]


def test_matches_release_clip_by_clip(ref_and_ours):
    ref, cfg, model, params = ref_and_ours
    x = np.random.RandomState(0).randn(4, N, D).astype(np.float32)
    lengths = np.array([6, 4, 1, 0], np.int32)  # garbage beyond each length, and an empty row
    out = jax.jit(model.apply)({"params": params}, x, lengths)
    assert out["hidden_lengths"].tolist() == [23, 15, 3, 0] and out["hidden_before_dconv2"].shape == (4, 23, D)
    assert out["coarse_lengths"].tolist() == [46, 30, 6, 0]
    worst = {}
    for b, n in enumerate(lengths):
        if n == 0:
            assert not np.asarray(out["refined_mel"][b]).any() and not np.asarray(out["hidden_before_dconv2"][b]).any()
            continue
        with torch.no_grad():
            want = {k: v.numpy() for k, v in ref(torch.tensor(x[b, :n])).items()}
        m = int(out["mel_lengths"][b])
        assert m == want["refined"].shape[0] == cfg.mel_frames(int(out["coarse_lengths"][b]))
        pairs = dict(hidden=(out["hidden_before_dconv2"], want["hidden"]), coarse100=(out["coarse_mel_100hz"], want["coarse100"]),
                     refined=(out["refined_mel"], want["refined"]), coarse=(out["coarse_mel"], want["coarse"]))
        for k, (ours, w) in pairs.items():
            ours = np.asarray(ours[b])
            worst[k] = max(worst.get(k, 0.0), float(np.abs(ours[: w.shape[0]] - w).max()))
            assert not ours[w.shape[0]:].any(), k  # zero beyond the valid length
    print("audio decoder max abs diff vs the release (per clip): " + ", ".join(f"{k} {v:.3e}" for k, v in worst.items()))
    assert max(worst.values()) <= 2e-5


def test_given_mel_lengths_and_static_buffer(ref_and_ours):
    """Training: the post-net resamples to the target mel length (the release's mel_labels_length)."""
    ref, cfg, model, params = ref_and_ours
    x = np.random.RandomState(1).randn(2, N, D).astype(np.float32)
    lengths = np.array([6, 3], np.int32)
    out = jax.jit(model.apply, static_argnums=(4,))({"params": params}, x, lengths, np.array([40, 11], np.int32), 48)
    assert out["refined_mel"].shape == (2, 48, 16) and out["mel_lengths"].tolist() == [40, 11]
    for b in range(2):
        with torch.no_grad():
            want = ref(torch.tensor(x[b, : lengths[b]]), out_len=int(out["mel_lengths"][b]))["refined"].numpy()
        np.testing.assert_allclose(np.asarray(out["refined_mel"][b, : want.shape[0]]), want, atol=2e-5)


def test_release_config_lengths():
    cfg = AudioDecoderConfig()  # the release's shape: 375 tokens = 30 s
    assert cfg.hidden_frames(375) == 1499 and cfg.coarse_frames(375) == 2998 and cfg.mel_frames(2998) == 1873
    # lengths as python ints, numpy arrays (host code) and jax arrays (inside the step) agree; 0 stays 0
    assert [cfg.hidden_frames(n) for n in (0, 1, 375)] == [0, 3, 1499]
    np.testing.assert_array_equal(cfg.hidden_frames(np.array([0, 1, 375])), [0, 3, 1499])
    np.testing.assert_array_equal(cfg.hidden_frames(jnp.array([0, 1, 375])), [0, 3, 1499])
    np.testing.assert_array_equal(cfg.coarse_frames(np.array([0, 1, 375])), [0, 6, 2998])
    with pytest.raises(ValueError, match="max_positions"):
        m = AudioDecoder(AudioDecoderConfig(**dict(KW, max_positions=16)))
        jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, N, D)), jnp.ones((1,), jnp.int32))
    with pytest.raises(ValueError, match=r"expects \(batch, frames, 32\) embeddings"):
        m = AudioDecoder(AudioDecoderConfig(**KW))
        jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, N, 7)), jnp.ones((1,), jnp.int32))


@pytest.mark.xfail(strict=True, reason=(
    "measured 2026-12-02: the release's batched decoder path (CasualConvTranspose1d on a padded "
    "batch) takes its GroupNorm(1) statistics over the whole padded row, so a clip's output "
    "depends on the longest clip in its batch (hidden states of the shorter clips differ by 0.79); ours "
    "normalises each clip over its own frames, like the release run on one clip. Inference runs "
    "one clip; batched tokenizer training would differ: to be decided against the release."))
def test_padded_batch_matches_the_release_batched_forward(ref_and_ours):
    ref, cfg, model, params = ref_and_ours
    x = np.random.RandomState(3).randn(3, N, D).astype(np.float32)
    lengths = np.array([6, 4, 1], np.int32)
    out = jax.jit(model.apply)({"params": params}, x, lengths)
    with torch.no_grad():
        want, n = ref.hidden_batch(torch.tensor(x), torch.tensor(lengths))
    assert n.tolist() == out["hidden_lengths"].tolist()
    d = float(np.abs(np.asarray(out["hidden_before_dconv2"])[:, : want.shape[1]] - want.numpy()).max())
    print(f"audio decoder hidden states, padded batch of lengths {lengths.tolist()}: max abs diff vs the "
          f"release's batched forward {d:.3e}")
    assert d <= 2e-5


def test_full_length_batch_matches_the_release_batched_forward(ref_and_ours):
    """Where no clip is padded the release's batched path and ours agree."""
    ref, cfg, model, params = ref_and_ours
    x = np.random.RandomState(4).randn(2, N, D).astype(np.float32)
    lengths = np.array([N, N], np.int32)
    out = jax.jit(model.apply)({"params": params}, x, lengths)
    with torch.no_grad():
        want, _ = ref.hidden_batch(torch.tensor(x), torch.tensor(lengths))
    d = float(np.abs(np.asarray(out["hidden_before_dconv2"]) - want.numpy()).max())
    print(f"audio decoder hidden states, full-length batch: max abs diff vs the release's batched forward {d:.3e}")
    assert d <= 2e-5
