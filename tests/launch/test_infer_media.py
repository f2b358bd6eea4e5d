"""launch/infer.py with media files: --video as an mp4 and --audio as any FFmpeg format are
decoded through omni_jax/data/video_io.py; undecodable files are named."""

import pytest
from absl import app

pytest.importorskip("av")

from launch.infer import audio_bytes, video_frames  # noqa: E402
from tests.data.media_fixtures import write_video  # noqa: E402


def test_video_and_audio_files(tmp_path):
    write_video(tmp_path / "clip.mp4", seconds=3.0, audio_rate=44_100)
    assert len(video_frames(str(tmp_path / "clip.mp4"))) == 3
    assert audio_bytes(str(tmp_path / "clip.mp4"))[:4] == b"RIFF"
    (tmp_path / "bad.mp4").write_bytes(b"nope" * 64)
    with pytest.raises(app.UsageError, match=r"--video=.*bad.mp4: \[corrupt_media\] .*FFmpeg cannot open it"):
        video_frames(str(tmp_path / "bad.mp4"))
    (tmp_path / "bad.mp3").write_bytes(b"nope" * 64)
    with pytest.raises(app.UsageError, match=r"--audio=.*bad.mp3: \[corrupt_media\]"):
        audio_bytes(str(tmp_path / "bad.mp3"))
