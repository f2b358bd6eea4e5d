"""omni_jax/data/{vision_preprocessing,audio_features}.py vs transformers' processors."""

import io

import numpy as np
import pytest
from PIL import Image
from transformers import WhisperFeatureExtractor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from omni_jax.data import audio_features as af
from omni_jax.data import vision_preprocessing as vp
from omni_jax.data.speech_synth import BuiltinTTS


@pytest.mark.parametrize("hw", [(100, 150), (448, 448), (37, 300)])
def test_image_preprocessing_matches_qwen2_vl(hw):
    img = (np.random.RandomState(0).rand(*hw, 3) * 255).astype(np.uint8)
    ref = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=3211264)(images=[img], return_tensors="np")
    patches, grid = vp.preprocess_image(img)
    assert grid == tuple(ref["image_grid_thw"][0])
    d = np.abs(patches - ref["pixel_values"]).max()
    print(f"image preprocessing max abs diff vs transformers: {d:.3e}")
    assert d <= 1e-5


def test_decode_image_and_errors():
    img = (np.random.RandomState(1).rand(30, 40, 3) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    assert np.array_equal(vp.decode_image(buf.getvalue()), img)
    with pytest.raises(ValueError, match="cannot decode image"):
        vp.decode_image(b"not an image")
    with pytest.raises(ValueError, match="uint8"):
        vp.preprocess_image(img.astype(np.float32))


def test_video_frame_sampling():
    assert vp.sample_frame_indices(90, fps=30).tolist() == [0, 30, 60]
    assert len(vp.sample_frame_indices(100 * 25, fps=25, max_frames=32)) == 32
    assert vp.sample_frame_indices(5, fps=2.5).tolist() == [0, 2]


def _signals():
    r = np.random.RandomState(0)
    t = np.arange(16000 * 3) / 16000
    speech = BuiltinTTS()("the red circle is above the blue star", 5)
    return {
        "speech": speech,
        "silence": np.zeros(16000, np.float32),
        "clipping": np.clip(3 * np.sin(2 * np.pi * 220 * t) + 0.1 * r.randn(len(t)), -1, 1).astype(np.float32),
        "odd_length": r.randn(12345).astype(np.float32) * 0.1,
    }


@pytest.mark.parametrize("name", ["speech", "silence", "clipping", "odd_length"])
def test_log_mel_matches_whisper_feature_extractor(name):
    x = _signals()[name]
    fe = WhisperFeatureExtractor(feature_size=128)
    ref = fe(x, sampling_rate=16000, padding="longest", return_tensors="np")["input_features"][0]
    ours = af.log_mel(x)
    assert ours.shape == ref.shape == (128, len(x) // 160)
    d = np.abs(ours - ref).max()
    print(f"log-mel max abs diff vs WhisperFeatureExtractor ({name}): {d:.3e}")
    assert d <= 1e-4


def test_chunking_padding_and_wav_round_trip():
    x = np.random.RandomState(2).randn(16000 * 65).astype(np.float32) * 0.1
    chunks = af.clip_features(x)
    assert [c.shape[1] for c in chunks] == [3000, 3000, 500]
    padded, n = af.pad_frames(chunks[2])
    assert padded.shape == (128, 3000) and n == 500 and not padded[:, 500:].any()
    wav = af.encode_wav(x[:1600])
    assert np.abs(af.decode_wav(wav) - x[:1600]).max() < 1e-4
    with pytest.raises(ValueError, match="cannot decode WAV"):
        af.decode_wav(b"RIFF....garbage")
