"""omni_jax/convert/audio.py: the release layout of the audio tokenizer, bit-exact round trips through
PyTorch modules with the release's names, end-to-end parity (mel -> codes -> mel), and errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omni_jax import sharding as shd
from omni_jax.convert import audio as conv
from omni_jax.convert.mapping import ConversionError
from omni_jax.models.audio_decoder import AudioDecoderConfig
from omni_jax.models.audio_tokenizer import AudioBridgeConfig, AudioTokenizer, AudioTokenizerConfig
from omni_jax.models.whisper import WhisperEncoderConfig
from tests.audio_reference import Container, ReleaseAudioTokenizer
from tests.conftest import FIXTURES, read_tsv

MELS, D, SIZES = 128, 32, (16, 8, 8, 4, 4, 4, 4, 4)
T_MEL = 64  # 0.64 s buffers


def _tiny_cfg():
    return AudioTokenizerConfig(
        encoder=WhisperEncoderConfig(num_mel_bins=MELS, d_model=D, num_layers=2, num_heads=4, ffn_dim=48,
                                     max_source_positions=T_MEL // 2),
        bridge=AudioBridgeConfig(d_model=D, pool=4, codebook_sizes=SIZES),
        decoder=AudioDecoderConfig(d_model=D, num_layers=2, num_heads=4, ffn_dim=48, num_mel_bins=16,
                                   postnet_channels=(24, 24), max_positions=T_MEL))


def _abstract(cfg, t_mel):
    return jax.eval_shape(AudioTokenizer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, cfg.encoder.num_mel_bins, t_mel)),
                          jnp.full((1,), t_mel, jnp.int32))


def test_release_listing_equals_reference_state_dict():
    """The 7B release config: our export's names/shapes == the TSV rows of the three modules, in order."""
    with open(os.path.join(FIXTURES, "reference_config.json")) as f:
        cfg = AudioTokenizerConfig.from_release(json.load(f))
    assert cfg.bridge.codebook_sizes == (8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024)
    abstract = shd.unbox(_abstract(cfg, 3000))
    ours = list(conv.tokenizer_export_shapes(abstract, cfg).items())
    want = [(n, s) for n, s in read_tsv("reference_state_dict.tsv")
            if n.split(".")[1] in ("audio_model", "audio_bridge_model", "audio_decoder")]
    assert len(want) == 487 + 31 + 149
    assert ours == want
    # the codebooks are state, not parameters: Adam's regex table never sees them
    assert "vq_0" not in str(jax.tree_util.tree_structure(abstract["params"]))
    assert abstract["vq_stats"]["audio_bridge"]["vq_0"]["embed"].shape == (8192, 5120)


@pytest.fixture(scope="module")
def ours_and_torch():
    cfg = _tiny_cfg()
    r = np.random.RandomState(0)
    # random values in the abstract shapes (a real init would only cost compile time): norm scales
    # near 1, weights ~0.1, codebooks on the scale of the LayerNormed features, EMA stats consistent
    variables = jax.tree_util.tree_map_with_path(
        lambda p, a: ((1.0 if jax.tree_util.keystr(p).endswith("['scale']") else 0.0)
                      + 0.1 * r.randn(*a.shape)).astype(np.float32), _abstract_np(cfg))
    for i, st in variables["vq_stats"]["audio_bridge"].items():
        st["embed"] = r.randn(*st["embed"].shape).astype(np.float32) / (1 + int(i.split("_")[1]))
        st["embed_avg"] = st["embed"] * 2
        st["cluster_size"] = np.full(st["cluster_size"].shape, 2.0, np.float32)
    ref = Container(audio_tokenizer=ReleaseAudioTokenizer(MELS, D, 4, 48, 2, 2, 4, SIZES, 16, [24, 24, 24], T_MEL)).eval()
    return cfg, variables, ref


def test_round_trip_through_release_modules_is_bit_exact(ours_and_torch):
    cfg, variables, ref = ours_and_torch
    sd = conv.export_tokenizer(variables, cfg)
    assert list(sd) == list(ref.state_dict())  # names and registration order of the release modules
    ref.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=True)
    back = {k: v.numpy() for k, v in ref.state_dict().items()}
    again = conv.import_tokenizer(back, cfg, _abstract_np(cfg))
    for (pa, a), (pb, b) in zip(jax.tree_util.tree_flatten_with_path(variables)[0],
                                jax.tree_util.tree_flatten_with_path(again)[0]):
        assert pa == pb and a.dtype == b.dtype and np.array_equal(a, b), jax.tree_util.keystr(pa)
    # the release's bf16 format: every tensor is the bf16 rounding of ours
    bf = conv.export_tokenizer(variables, cfg, dtype="bfloat16")
    assert all(v.dtype == jnp.bfloat16 for v in bf.values())
    e = variables["vq_stats"]["audio_bridge"]["vq_1"]["embed"]
    assert np.array_equal(np.asarray(bf["audio_tokenizer.audio_bridge_model.vq_list.1.codebook.embed"]),
                          np.asarray(e.astype(jnp.bfloat16)))


def _abstract_np(cfg):
    return shd.unbox(_abstract(cfg, T_MEL))


def test_end_to_end_matches_release_modules(ours_and_torch):
    """mel -> codes -> coarse/refined mel, batched with different lengths, vs the release clip by clip."""
    cfg, variables, ref = ours_and_torch
    ref.load_state_dict({k: torch.tensor(v) for k, v in conv.export_tokenizer(variables, cfg).items()})
    r = np.random.RandomState(3)
    mel = r.randn(3, MELS, T_MEL).astype(np.float32)
    mel_len = np.array([64, 45, 23], np.int32)

    def run(v, mel, n):
        m = AudioTokenizer(cfg)
        codes, lengths = m.apply(v, mel, n, method=AudioTokenizer.encode)
        hidden = m.apply(v, codes, lengths, method=AudioTokenizer.hidden_states_before_dconv2)
        return codes, lengths, m.apply(v, codes, lengths, method=AudioTokenizer.decode), hidden

    codes, lengths, out, (hidden, hidden_len) = jax.jit(run)(variables, mel, mel_len)
    np.testing.assert_array_equal(hidden, out["hidden_before_dconv2"])  # the flow-matching input, alone
    np.testing.assert_array_equal(hidden_len, out["hidden_lengths"])
    worst = 0.0
    for b in range(3):
        with torch.no_grad():
            want_codes, want = ref.audio_tokenizer(torch.tensor(mel[b, :, : mel_len[b]]))
        n = int(lengths[b])
        assert np.array_equal(np.asarray(codes[b, :n]), want_codes.numpy())
        m = int(out["mel_lengths"][b])
        assert m == want["refined"].shape[0]
        h = int(hidden_len[b])
        np.testing.assert_allclose(np.asarray(hidden[b, :h]), want["hidden"].numpy(), atol=5e-5)
        worst = max(worst, float(np.abs(np.asarray(out["refined_mel"][b, :m]) - want["refined"].numpy()).max()))
    print(f"audio tokenizer end to end (mel -> codes -> refined mel): codes identical, mel max abs diff {worst:.3e}")
    assert worst <= 5e-5


def test_import_errors_name_the_tensor(ours_and_torch):
    cfg, variables, _ = ours_and_torch
    sd = conv.export_tokenizer(variables, cfg)
    abstract = _abstract_np(cfg)
    bad = dict(sd)
    bad["audio_tokenizer.audio_bridge_model.vq_list.2.codebook.embed"] = np.zeros((9, 128), np.float32)
    with pytest.raises(ConversionError, match=r"vq_list.2.codebook.embed: got \(9, 128\), expected \(8, 128\)"):
        conv.import_tokenizer(bad, cfg, abstract)
    bad = {k: v for k, v in sd.items() if "vq_list.7" not in k}
    with pytest.raises(ConversionError, match=r"(?s)3 tensor\(s\) missing.*vq_list.7.codebook.cluster_size"):
        conv.import_tokenizer(bad, cfg, abstract)
    bad = dict(sd, **{"model.layers.0.mlp.up_proj.weight": np.zeros((2, 2))})
    with pytest.raises(ConversionError, match="(?s)unexpected tensor.*model.layers.0.mlp.up_proj.weight"):
        conv.import_tokenizer(bad, cfg, abstract)
    assert conv.import_tokenizer(bad, cfg, abstract, ignore=[r"model\..*"])  # other release modules are ignorable
    bad = dict(sd)
    bad["audio_tokenizer.audio_decoder.positional_embedding"] = sd["audio_tokenizer.audio_decoder.positional_embedding"] * 0.5
    with pytest.raises(ConversionError, match="audio_decoder.positional_embedding is not the Whisper sinusoid table"):
        conv.import_tokenizer(bad, cfg, abstract)
    with pytest.raises(ValueError, match="unknown audio module"):
        conv.tokenizer_rules(cfg, ["audio_head"])


def test_partial_module_export(ours_and_torch):
    """The omni model can mount the encoder+bridge (understanding) and the decoder separately."""
    cfg, variables, _ = ours_and_torch
    enc = conv.export_tokenizer(variables, cfg, modules=("audio_encoder", "audio_bridge"))
    assert all(k.startswith(("audio_tokenizer.audio_model.", "audio_tokenizer.audio_bridge_model.")) for k in enc)
    dec = conv.export_tokenizer({"params": {"audio_decoder": variables["params"]["audio_decoder"]}}, cfg,
                                modules=("audio_decoder",))
    assert next(iter(dec)) == "audio_tokenizer.audio_decoder.positional_embedding"
    with pytest.raises(ValueError, match=r"needs its codebooks: variables\['vq_stats'\]\['audio_bridge'\]"):
        conv.export_tokenizer({"params": variables["params"]}, cfg, modules=("audio_bridge",))
