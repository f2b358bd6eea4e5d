"""Video / audio files through PyAV (omni_jax/data/video_io.py): 1-fps frame sampling by
presentation time, the audio track as 16 kHz WAV, the per-stage frame cap, bad files."""

import io

import numpy as np
import pytest

pytest.importorskip("av")

from omni_jax.data import audio_features, media_io, vision_preprocessing  # noqa: E402
from omni_jax.data.errors import DataError  # noqa: E402
from omni_jax.data.video_io import decode_audio_file, decode_video  # noqa: E402
from PIL import Image  # noqa: E402

from tests.data.media_fixtures import frame_color, write_video  # noqa: E402


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _dominant_freq(wav: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / rate)[spec.argmax()])


@pytest.mark.parametrize("fmt", ["mp4", "webm", "mkv"])
def test_video_file_frames_at_1fps_and_audio_track(tmp_path, fmt):
    path = tmp_path / f"clip.{fmt}"
    write_video(path, seconds=3.0, fps=10, audio_rate=44_100, tone_hz=440.0)
    v = decode_video(path.read_bytes(), name=str(path))
    assert v.fps == 1.0 and len(v.frames) == 3  # t = 0, 1, 2 s of a 3 s clip at 10 fps
    for k, png in enumerate(v.frames):  # kept frames are source frames 0, 10, 20 (colours survive lossy coding)
        got = _rgb(png)[8:-8, 8:-8].reshape(-1, 3).mean(0)
        assert np.abs(got - np.array(frame_color(10 * k))).max() < 12, (k, got)
    wav = media_io.decode_audio(v.audio)
    assert abs(len(wav) / 16_000 - 3.0) < 0.1, len(wav)
    assert abs(_dominant_freq(wav[1600:-1600], 16_000) - 440.0) < 3.0


def test_video_without_audio_and_audio_disabled(tmp_path):
    write_video(tmp_path / "a.mp4", seconds=2.0, audio_rate=None)
    assert decode_video((tmp_path / "a.mp4").read_bytes()).audio == b""
    write_video(tmp_path / "b.mp4", seconds=2.0)
    assert decode_video((tmp_path / "b.mp4").read_bytes(), with_audio=False).audio == b""


def test_long_video_capped_per_stage_by_the_pipeline(tmp_path):
    """60 s at 1 fps stores 60 frames; VideoItem keeps 32 (1.5) or 48 (v1), uniformly."""
    path = tmp_path / "long.mp4"
    write_video(path, seconds=60.0, fps=2, size=(32, 32), audio_rate=None)
    v = decode_video(path.read_bytes())
    assert len(v.frames) == 60
    for cap in (32, 48):
        cfg = media_io.MediaConfig(video_max_frames=cap)
        items = media_io.VideoItem(v.frames, v.fps).frame_items(cfg)
        want = vision_preprocessing.sample_frame_indices(60, 1.0, cap)
        assert len(items) == cap and [it.data for it in items] == [v.frames[i] for i in want]


def test_audio_file_any_format_to_16k_wav(tmp_path):
    """The audio track of an mkv (pcm, 44.1 kHz stereo) and an mp4 (AAC) as 16 kHz WAV."""
    for fmt in ("mkv", "mp4"):
        write_video(tmp_path / f"s.{fmt}", seconds=1.0, audio_rate=44_100, tone_hz=1000.0)
        wav_bytes = decode_audio_file((tmp_path / f"s.{fmt}").read_bytes())
        wav = audio_features.decode_wav(wav_bytes)
        assert abs(len(wav) - 16_000) < 1_200 and abs(_dominant_freq(wav[800:-800], 16_000) - 1000.0) < 5


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"\[corrupt_media\] bad.mp4: FFmpeg cannot open it"):
        decode_video(b"\x00not a video at all" * 10, name="bad.mp4")
    with pytest.raises(DataError, match="empty.mp4: the file is empty"):
        decode_video(b"", name="empty.mp4")
    write_video(tmp_path / "ok.mp4", seconds=2.0)
    good = (tmp_path / "ok.mp4").read_bytes()
    with pytest.raises(DataError) as e:  # truncated: header fine, no frame data
        decode_video(good[: len(good) // 8], name="cut.mp4")
    assert e.value.kind in ("corrupt_media", "missing_field") and "cut.mp4" in str(e.value)
    wav = (np.sin(np.arange(16000) / 5) * 0.1).astype(np.float32)
    with pytest.raises(DataError, match=r"\[missing_field\] speech.wav: the file has no video stream"):
        decode_video(audio_features.encode_wav(wav), name="speech.wav")
    write_video(tmp_path / "mute.mp4", seconds=1.0, audio_rate=None)
    with pytest.raises(DataError, match="mute.mp4: the file has no decodable audio"):
        decode_audio_file((tmp_path / "mute.mp4").read_bytes(), name="mute.mp4")
    with pytest.raises(DataError, match="fps must be positive"):
        decode_video(good, fps=0.0)


def test_video_with_zero_frames_is_named(tmp_path):
    """A container with a video stream but no frame in it."""
    import av

    out = av.open(str(tmp_path / "empty.mkv"), "w", format="matroska")
    vs = out.add_stream("mpeg4", rate=10)
    vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
    out.start_encoding()  # the header only, no packet
    out.close()
    assert (tmp_path / "empty.mkv").stat().st_size > 0
    with pytest.raises(DataError) as e:
        decode_video((tmp_path / "empty.mkv").read_bytes(), name="empty.mkv")
    assert e.value.kind in ("missing_field", "corrupt_media") and "empty.mkv" in str(e.value)
    print(e.value)
