"""Polyphase resampling (omni_jax/data/resampling.py): anti-aliasing, accuracy against an
analytic band-limited reference, lengths the header planner predicts, and the WAV/FLAC paths."""

import io

import numpy as np
import pytest

from omni_jax.data import audio_features, media_io, resampling


def _tone(freq, rate, seconds=1.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _speech_like(t, f_max=6400.0):
    """Voiced-speech stand-in with a known closed form: harmonics of a gliding 110-140 Hz pitch
    under three formant peaks, syllable-rate (4 Hz) amplitude modulation, all below `f_max`."""
    f0 = 125.0
    phase = 2 * np.pi * (f0 * t + 15.0 / (2 * np.pi * 1.5) * np.sin(2 * np.pi * 1.5 * t))
    env = 0.5 * (1 - np.cos(2 * np.pi * 4.0 * t))
    out = np.zeros_like(t)
    for k in range(1, int(f_max // 141)):  # k * max f0 (140 Hz) < f_max
        fk = k * f0
        amp = sum(a * np.exp(-((fk - fc) / bw) ** 2) for fc, bw, a in ((700, 150, 1.0), (1200, 200, 0.6), (2600, 300, 0.3)))
        out += (amp + 0.02) * np.sin(k * phase)
    return 0.1 * env * out


def _band_energy(x, rate, lo, hi):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    return spec[(f >= lo) & (f <= hi)].sum()


@pytest.mark.parametrize("rate_from", [44100, 48000])
def test_tone_above_new_nyquist_is_removed(rate_from):
    """A 10 kHz tone is above 16 kHz audio's 8 kHz Nyquist: polyphase leaves < -70 dB of it
    (it must not fold to 6 kHz); linear interpolation keeps it at about -1.5 dB (aliased)."""
    x = _tone(10_000, rate_from)
    y = resampling.resample(x, rate_from, 16_000)
    ref_power = np.mean(x ** 2)
    residual_db = 10 * np.log10(np.mean(y[2000:-2000] ** 2) / ref_power)
    n = len(y)
    lin = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x)
    lin_db = 10 * np.log10(np.mean(lin[2000:-2000] ** 2) / ref_power)
    print(f"{rate_from} Hz -> 16 kHz, 10 kHz tone: polyphase {residual_db:.1f} dB, linear {lin_db:.1f} dB")
    assert residual_db < -70, residual_db
    assert lin_db > -20, lin_db  # the reason for the change: linear interpolation aliases


def test_in_band_tone_passes():
    x = _tone(3_000, 44_100)
    y = resampling.resample(x, 44_100, 16_000)
    ref = _tone(3_000, 16_000)[: len(y)]
    err = np.abs(y - ref)[500:-500].max()
    print(f"3 kHz tone 44.1k -> 16k max abs err {err:.2e}")
    assert err < 5e-3, err


@pytest.mark.parametrize("rate_from,rate_to", [(44100, 16000), (48000, 16000), (22050, 16000), (8000, 16000), (16000, 24000)])
def test_speech_like_clip_matches_analytic_reference(rate_from, rate_to):
    """The reference is exact: the band-limited clip evaluated at the new sample times.
    Stated error: max abs < 1e-4 (clip peak ~0.25) away from the filter's edge transient
    (first/last 20 ms); linear interpolation is shown for comparison."""
    f_max = 0.4 * min(rate_from, rate_to)  # 80 % of the lower Nyquist frequency
    x = _speech_like(np.arange(rate_from) / rate_from, f_max).astype(np.float32)
    y = resampling.resample(x, rate_from, rate_to)
    ref = _speech_like(np.arange(len(y)) / rate_to, f_max)
    edge = int(0.02 * rate_to)
    err = np.abs(y - ref)[edge:-edge].max()
    rel = np.sqrt(np.mean((y - ref)[edge:-edge] ** 2) / np.mean(ref[edge:-edge] ** 2))
    lin = np.interp(np.arange(len(y)) * rate_from / rate_to, np.arange(len(x)), x)
    lin_err = np.abs(lin - ref)[edge:-edge].max()
    print(f"{rate_from}->{rate_to}: polyphase max abs {err:.2e} (rel rms {rel:.2e}), linear max abs {lin_err:.2e}, peak {np.abs(ref).max():.3f}")
    assert err < 1e-4, err
    if rate_from % rate_to:  # integer decimation: linear interpolation just picks samples
        assert err < lin_err


@pytest.mark.parametrize("rate_from", [44100, 48000, 22050, 11025, 8000, 24000])
@pytest.mark.parametrize("n", [1, 399, 44101])
def test_length_matches_header_planner(rate_from, n):
    y = resampling.resample(np.random.default_rng(0).standard_normal(n), rate_from, 16000)
    assert len(y) == resampling.output_length(n, rate_from, 16000) == int(round(n * 16000 / rate_from))


def test_multichannel_wav_any_rate_decodes_to_16k_mono():
    """A 44.1 kHz stereo 16-bit WAV: decode mixes down then resamples; the header planner agrees."""
    import wave

    left, right = _tone(440, 44_100, 0.5), _tone(10_000, 44_100, 0.5)
    pcm = (np.stack([left, right], 1) * 32767).astype(np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2); w.setsampwidth(2); w.setframerate(44_100); w.writeframes(pcm.tobytes())
    data = buf.getvalue()
    y = media_io.decode_audio(data)
    assert len(y) == media_io.audio_num_samples(data) == 8000
    # the right channel's 10 kHz tone is gone, the 440 Hz tone (halved by the mixdown) stays
    assert _band_energy(y, 16_000, 5_000, 8_000) < 1e-5 * _band_energy(y, 16_000, 400, 480)
    assert np.allclose(audio_features.decode_wav(data), y)


def test_flac_48k_mono_decodes_with_polyphase():
    sf = pytest.importorskip("soundfile")
    x = _tone(12_000, 48_000, 0.5)
    buf = io.BytesIO()
    sf.write(buf, x, 48_000, format="FLAC")
    y = media_io.decode_audio(buf.getvalue())
    assert len(y) == media_io.audio_num_samples(buf.getvalue()) == 8000
    assert np.sqrt(np.mean(y[500:-500] ** 2)) < 1e-3 * np.sqrt(np.mean(x ** 2))


@pytest.mark.parametrize("bad,msg", [(0, "rate_from=0"), (-8000, "rate_from=-8000"), (44.1, "rate_from=44.1")])
def test_bad_rate_is_named(bad, msg):
    with pytest.raises(ValueError, match=msg):
        resampling.resample(np.zeros(10), bad, 16000)
