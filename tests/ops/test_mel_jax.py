"""omni_jax/ops/mel_jax.py vs transformers' WhisperFeatureExtractor and the release's extractor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from omni_jax.data import media
from transformers.audio_utils import mel_filter_bank
from omni_jax.data.speech_synth import BuiltinTTS
from omni_jax.ops import mel_jax

BUFFER = 480000  # the release's 30 s chunk


def _signals():
    r = np.random.RandomState(0)
    t = np.arange(16000 * 3) / 16000
    return {
        "speech": BuiltinTTS()("the red circle is above the blue star", 5),
        "silence": np.zeros(16000, np.float32),
        "clipping": np.clip(3 * np.sin(2 * np.pi * 220 * t) + 0.1 * r.randn(len(t)), -1, 1).astype(np.float32),
        "odd_length": r.randn(12345).astype(np.float32) * 0.1,
        "full_30s": (0.3 * np.sin(2 * np.pi * 330 * np.arange(BUFFER) / 16000) * r.rand(BUFFER)).astype(np.float32),
    }


def _release_features(x: np.ndarray, buffer: int = BUFFER) -> tuple[np.ndarray, int]:
    """The release's OmniAudioProcessor.extract_fbank_features (processor_omni.py), re-typed here
    for one chunk: zero-pad to the buffer, torch STFT, log10 clamp, (x+4)/4, zero beyond n//160+1.
    Its mel filters are the processor's: transformers' `mel_filter_bank` (Slaney scale and norm,
    0-8 kHz), independent of omni_jax's own filters."""
    n = len(x)
    valid = min(buffer // 160, n // 160 + 1)
    w = torch.nn.functional.pad(torch.tensor(x)[None], (0, buffer - n))
    stft = torch.stft(w, 400, 160, window=torch.hann_window(400), return_complex=True)
    mag = stft[..., :-1].abs() ** 2
    fb = torch.from_numpy(mel_filter_bank(num_frequency_bins=201, num_mel_filters=128, min_frequency=0.0,
                                          max_frequency=8000.0, sampling_rate=16000, norm="slaney",
                                          mel_scale="slaney")).float()
    log_spec = torch.clamp(fb.T @ mag, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    out = ((log_spec + 4.0) / 4.0)[0].numpy()
    out[:, valid:] = 0.0
    return out, valid


@pytest.fixture(scope="module")
def batch():
    sig = _signals()
    names = list(sig)
    wav = np.zeros((len(names), BUFFER), np.float32)
    n = np.array([len(sig[k]) for k in names], np.int32)
    for i, k in enumerate(names):
        wav[i, : n[i]] = sig[k]
    wav[1, n[1]:] = 0.7  # garbage beyond the valid length must be ignored
    fn = jax.jit(lambda w, n: mel_jax.whisper_log_mel(w, n))
    mel, valid = fn(wav, n)
    return names, sig, np.asarray(mel), np.asarray(valid)


def test_whisper_log_mel_matches_feature_extractor(batch):
    names, sig, mel, valid = batch
    fe = WhisperFeatureExtractor(feature_size=128)
    worst = 0.0
    for i, name in enumerate(names):
        ref = fe(sig[name], sampling_rate=16000, return_tensors="np")["input_features"][0]  # padded to 30 s
        v = media.valid_mel_frames(len(sig[name]))
        assert valid[i] == v
        ref[:, v:] = 0.0
        d = float(np.abs(mel[i] - ref).max())
        print(f"whisper log-mel (JAX) max abs diff vs WhisperFeatureExtractor ({name}): {d:.3e}")
        worst = max(worst, d)
    assert mel.shape == (len(names), 128, 3000)
    assert worst <= 1e-4


def test_whisper_log_mel_matches_release_extractor(batch):
    names, sig, mel, valid = batch
    for i, name in enumerate(names):
        ref, v = _release_features(sig[name])
        assert v == valid[i]
        d = float(np.abs(mel[i] - ref).max())
        print(f"whisper log-mel (JAX) max abs diff vs the release's extractor ({name}): {d:.3e}")
        assert d <= 1e-4
        assert not mel[i][:, v:].any()  # frames beyond the valid length are zero


def test_numpy_release_features_match(batch):
    """omni_jax/data/audio_features.py `release_chunk_features` (host side) == the JAX front end."""
    from omni_jax.data.audio_features import release_chunk_features

    names, sig, mel, valid = batch
    for i, name in enumerate(names[:3]):
        feats, v = release_chunk_features(sig[name])
        assert v == valid[i]
        assert float(np.abs(feats - mel[i]).max()) <= 1e-4


def test_fft_impl_and_short_buffer():
    """impl='fft' equals 'matmul'; a 4 s buffer equals the extractor with chunk_length=4."""
    x = BuiltinTTS()("blue ring", 3)
    wav = np.zeros((2, 64000), np.float32)
    wav[0, : len(x)] = x
    n = np.array([len(x), 0], np.int32)
    a, va = mel_jax.whisper_log_mel(wav, n, impl="matmul")
    b, _ = mel_jax.whisper_log_mel(wav, n, impl="fft")
    assert float(jnp.abs(a - b).max()) <= 1e-4
    ref = WhisperFeatureExtractor(feature_size=128, chunk_length=4)(x, sampling_rate=16000, return_tensors="np")["input_features"][0]
    ref[:, int(va[0]):] = 0
    assert float(np.abs(np.asarray(a[0]) - ref).max()) <= 1e-4
    assert int(va[1]) == 0 and not np.asarray(a[1]).any()  # an empty row is all padding


def test_target_mel_shape_and_masking():
    x = BuiltinTTS()("green star", 7)
    wav = np.zeros((2, 32000), np.float32)
    wav[0, : len(x)] = x
    wav[1, :8000] = x[:8000]
    mel, valid = jax.jit(lambda w, n: mel_jax.target_mel(w, n))(wav, np.array([len(x), 8000], np.int32))
    assert mel.shape == (2, 125, 80) and valid.tolist() == [min(len(x) // 256, 125), 31]
    assert not np.asarray(mel[1, 31:]).any()
    # the log-magnitude mel of a loud segment is well above the floor
    assert float(mel[0, : valid[0]].max()) > np.log(1e-5) + 5


def test_bad_buffer_errors():
    with pytest.raises(ValueError, match="multiple of the hop length"):
        mel_jax.whisper_log_mel(np.zeros((1, 1000), np.float32), np.array([10]))
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        mel_jax.whisper_log_mel(np.zeros((1000,), np.float32), np.array([10]))
    with pytest.raises(ValueError, match="unknown STFT impl"):
        mel_jax.whisper_log_mel(np.zeros((1, 1600), np.float32), np.array([10]), impl="dct")
