"""The one audio reader (omni_jax/data/audio_features.py `decode_wav`, soundfile) and its
wrappers in media_io: 16-bit WAV values are int16 / 32768 exactly, 24-bit WAV and stereo FLAC
decode, header counts agree with the decoded length, bad bytes are a named data error."""

import io

import numpy as np
import pytest
import soundfile as sf

from omni_jax.data import audio_features as af
from omni_jax.data import resampling
from omni_jax.data import media_io
from omni_jax.data.errors import DataError


def _bytes(x, rate, fmt, subtype):
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_16_bit_wav_values_are_exact():
    pcm = np.array([0, 1, -1, 32767, -32768, 12345, -2222], np.int16)
    wav = _bytes(pcm, 16000, "WAV", "PCM_16")
    got = af.decode_wav(wav)
    np.testing.assert_array_equal(got, pcm.astype(np.float32) / 32768.0)  # hand-computed: int16 / 2^15
    assert af.decode_wav(af.encode_wav(got)).dtype == np.float32


def test_24_bit_wav_stereo_flac_and_header_counts():
    t = np.arange(8000) / 8000.0
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 220 * t)
    w24 = _bytes(left, 8000, "WAV", "PCM_24")  # 8 kHz: resampled to 16 kHz
    x = media_io.decode_audio(w24)
    assert len(x) == media_io.audio_num_samples(w24) == 16000
    want = resampling.resample(left.astype(np.float32), 8000, 16000)  # the polyphase resampler, unquantised input
    assert np.abs(x - want).max() < 1e-6  # 24-bit quantisation only (2^-23)
    flac = _bytes(np.stack([left, right], 1), 16000, "FLAC", "PCM_16")
    y = media_io.decode_audio(flac)
    assert len(y) == media_io.audio_num_samples(flac) == 8000
    assert np.abs(y - (left + right) / 2).max() < 1e-4  # mixdown of the 16-bit channels


def test_bad_audio_is_a_named_data_error():
    with pytest.raises(DataError, match="cannot decode WAV/FLAC audio"):
        media_io.decode_audio(b"RIFF....garbage")
    with pytest.raises(DataError, match="cannot read the audio header"):
        media_io.audio_num_samples(b"not audio at all")
    with pytest.raises(DataError, match="audio is empty"):
        media_io.decode_audio(b"")


def test_streamed_wav_header_as_espeak_ng_writes_it():
    """espeak-ng --stdout cannot seek back: its RIFF and data sizes are placeholders (0x7ffff000)."""
    import struct

    pcm = np.array([100, -200, 300, -400, 500] * 400, np.int16)
    w = bytearray(_bytes(pcm, 22050, "WAV", "PCM_16"))
    w[4:8] = struct.pack("<I", 0x7FFFF024)
    i = w.index(b"data")
    w[i + 4:i + 8] = struct.pack("<I", 0x7FFFF000)
    x = af.decode_wav(bytes(w), 22050)
    np.testing.assert_array_equal(x, pcm.astype(np.float32) / 32768.0)
    assert media_io.audio_num_samples(bytes(w), 22050) == len(pcm)
