"""omni_jax/data/media.py (shape arithmetic) and speech_synth.py (built-in TTS)."""

import numpy as np
import pytest
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from omni_jax.data import media
from omni_jax.data.speech_synth import BuiltinTTS, synthesize, voices


@pytest.mark.parametrize("hw", [(480, 640), (28, 28), (10, 1000), (4000, 3000), (1080, 1920), (57, 29)])
def test_smart_resize_matches_qwen2_vl(hw):
    assert media.smart_resize(*hw) == tuple(hf_smart_resize(*hw, factor=28, min_pixels=3136, max_pixels=3211264))


def test_token_counts():
    assert media.image_token_count(*media.image_grid(448, 448)) == 256  # 32x32 patches / 4
    assert media.image_grid(1080, 1920, video=True)[1:] == tuple(
        s // 14 for s in hf_smart_resize(1080, 1920, factor=28, min_pixels=3136, max_pixels=602112))
    assert media.audio_token_count(16000 * 30) == 375  # 30 s -> 1500 encoder frames -> 375 at 12.5 Hz
    # the release's count (processor_omni.py): valid mel n//160 + 1, encoder (L-1)//2 + 1, tokens floor(/4)
    assert media.audio_token_count(16000 * 31) == 375 + 12  # 1 s tail: 101 mel -> 51 enc -> 12 tokens
    assert media.audio_token_count(16000 * 30 + 399) == 375  # a tail shorter than n_fft is dropped
    assert media.audio_token_count(1120) == 1  # 8 mel frames -> 4 encoder frames -> 1 token
    assert media.audio_token_count(959) == 0  # 6 mel -> 3 encoder frames: no complete group of 4
    with pytest.raises(ValueError, match="empty"):
        media.audio_token_count(0)


def test_speech_synth_is_deterministic_and_voice_dependent():
    tts = BuiltinTTS()
    a, b = tts("red star 3", 0), tts("red star 3", 0)
    assert np.array_equal(a, b) and a.dtype == np.float32 and np.abs(a).max() <= 1
    assert not np.array_equal(a[: min(len(a), len(tts("red star 3", 1)))], tts("red star 3", 1)[: len(a)])
    assert len(voices()) == 44


def test_characters_have_distinct_spectra():
    """A learnable code: different letters give clearly different average spectra."""
    def spec(ch):
        x = synthesize(ch * 3)
        return np.abs(np.fft.rfft(x[:2048]))
    s = {c: spec(c) / np.linalg.norm(spec(c)) for c in "aeiostr5"}
    sims = [float(s[x] @ s[y]) for x in s for y in s if x < y]
    assert max(sims) < 0.9
