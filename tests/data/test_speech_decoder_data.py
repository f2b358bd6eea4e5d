"""The embedded-speech rows of the flow-matching and vocoder stages (omni_jax/data/speech_decoder_data.py):
fields, lengths, the mel of the clip itself, f0 on voiced frames only, step-indexed determinism and
per-process rows that put the global batch back together."""

import ml_collections
import numpy as np
import pytest

from configs.omni15 import stages
from omni_jax.data import speech_decoder_data as sdd
from omni_jax.data.audio_features import log_mel_24k_np
from omni_jax.data.speech_synth import BuiltinTTS, voiced_mask


def _config(**data):
    return ml_collections.ConfigDict(dict(
        data=stages.speech_data(**{"chunk_seconds": 1.0, "num_utterances": 12, "frames": 8, **data}),
        model=dict(llm=dict(vocab_size=384)), train=dict(batch_size=4)))


def test_mel_rows_hold_the_clip_and_its_24k_mel():
    c = _config()
    batch = next(sdd.make_speech_mel_iterator(c, start_step=0, process_index=0, process_count=1))
    assert set(batch) == {"waveform", "num_samples", "mel", "mel_frames"}
    assert batch["waveform"].shape == (4, 16000) and batch["mel"].shape == (4, 50, 80)
    for w, n, mel, f in zip(batch["waveform"], batch["num_samples"], batch["mel"], batch["mel_frames"]):
        assert 0 < n <= 16000 and not w[n:].any()
        assert f == min(50, n // sdd.MEL_HOP_16K) and not mel[f:].any()
        np.testing.assert_array_equal(mel, sdd.mel_row(w[:n], 50)[0])
    assert batch["mel"][:, :1].min() > -12  # a log-mel (floor log 1e-5 = -11.5), not zeros


def test_voice_rows_f0_only_on_voiced_frames():
    c = _config()
    batch = next(sdd.make_speech_voice_iterator(c, start_step=3, process_index=0, process_count=1))
    assert batch["wav"].shape == (4, 8 * 480) and batch["mel"].shape == (4, 8, 80) and batch["f0"].shape == (4, 8)
    np.testing.assert_array_equal(batch["mel"], log_mel_24k_np(batch["wav"]))
    pitches = {round(v.pitch_hz, 3) for v in BuiltinTTS().voices}
    voiced = batch["f0"][batch["f0"] > 0]
    assert len(voiced) and {round(float(x), 3) for x in voiced} <= pitches
    assert (batch["f0"] == 0).any()  # pauses and unvoiced consonants


def test_voiced_mask_follows_the_synthesiser():
    tts = BuiltinTTS()
    v = tts.voices[5]
    m = voiced_mask("ab 1.", v)
    seg = int(16000 / v.chars_per_second)
    assert m[:seg].all() and m[seg:2 * seg].all()  # 'a' vowel, 'b' voiced consonant
    assert not m[2 * seg:].any()  # space, digit, full stop
    assert len(tts("ab 1.", 5)) == len(tts.pitch("ab 1.", 5)) == len(m)


@pytest.mark.parametrize("make", [sdd.make_speech_mel_iterator, sdd.make_speech_voice_iterator])
def test_step_indexed_and_split_over_processes(make):
    c = _config()
    whole = make(c, start_step=2, process_index=0, process_count=1)
    first = next(whole)
    again = next(make(c, start_step=2, process_index=0, process_count=1))
    parts = [next(make(c, start_step=2, process_index=p, process_count=2)) for p in range(2)]
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
        np.testing.assert_array_equal(first[k], np.concatenate([p[k] for p in parts]))
    assert not np.array_equal(first[next(iter(first))], next(whole)[next(iter(first))])  # step 3 differs


def test_bad_chunk_length_is_named():
    with pytest.raises(ValueError, match="chunk_seconds=1.01 must be a multiple of 0.02 s"):
        sdd.make_speech_mel_iterator(_config(chunk_seconds=1.01), start_step=0, process_index=0, process_count=1)
