"""Builders reading your own media files (omni_jax/data/builders/media_files.py): a JSONL
manifest with `video` paths and mp3-like audio, a folder of clips with sidecar texts, and
undecodable files skipped and counted (or raised)."""

import json

import numpy as np
import pytest

pytest.importorskip("av")

from omni_jax.data import media_io  # noqa: E402
from omni_jax.data.builders import ManifestConfig, prepare  # noqa: E402
from omni_jax.data.errors import DataError  # noqa: E402

from tests.data.media_fixtures import wav_bytes, write_video  # noqa: E402


def test_manifest_with_video_files_and_audio_tracks(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    write_video(root / "a.mp4", seconds=3.0, audio_rate=48_000)
    write_video(root / "b.webm", seconds=2.0, audio_rate=None)
    write_video(root / "c.mkv", seconds=2.0, audio_rate=22_050)  # its track is the speech of `d`
    (root / "speech.wav").write_bytes(wav_bytes(np.zeros(8000), 8000, channels=2))
    for split in ("train", "test"):
        with open(root / f"{split}.jsonl", "w") as f:
            f.write(json.dumps({"id": "a", "video": "a.mp4", "caption": "a clip."}) + "\n")
            f.write(json.dumps({"id": "b", "video": "b.webm", "question": "q?", "answer": "x."}) + "\n")
            f.write(json.dumps({"id": "d", "video": "c.mkv", "audio": "speech.wav"}) + "\n")
    b = prepare("omni_videos", str(tmp_path / "data"), config=ManifestConfig(name="mine", manifest=str(root / "{split}.jsonl")))
    recs = {r["id"].decode(): r for r in b.as_data_source()["train"]}
    assert len(recs["a"]["frames"]) == 3 and float(recs["a"]["fps"]) == 1.0
    assert abs(len(media_io.decode_audio(recs["a"]["audio"])) - 48_000) < 2_000  # 3 s at 16 kHz
    assert recs["b"]["audio"] == b"" and len(recs["b"]["frames"]) == 2
    assert recs["d"]["audio"] == (root / "speech.wav").read_bytes()  # the given file wins over the track
    assert media_io.VideoItem(list(recs["a"]["frames"]), float(recs["a"]["fps"])).frame_items(media_io.MediaConfig())


def test_folder_of_clips_with_sidecars_and_bad_files_counted(tmp_path, caplog):
    folder = tmp_path / "clips" / "train"
    folder.mkdir(parents=True)
    write_video(folder / "one.mp4", seconds=2.0)
    (folder / "one.txt").write_text("a red square.\n")
    write_video(folder / "two.mkv", seconds=1.0)
    (folder / "two.json").write_text(json.dumps({"question": "what?", "answer": "green."}))
    (folder / "three.mp4").write_bytes(b"garbage" * 100)  # undecodable
    (tmp_path / "clips" / "test").mkdir()
    write_video(tmp_path / "clips" / "test" / "t.webm", seconds=1.0)
    cfg = ManifestConfig(name="clips", manifest=str(tmp_path / "clips" / "{split}"))
    with caplog.at_level("WARNING"):
        b = prepare("omni_videos", str(tmp_path / "data"), config=cfg)
    recs = {r["id"].decode(): r for r in b.as_data_source()["train"]}
    assert sorted(recs) == ["one", "two"]
    assert recs["one"]["caption"] == b"a red square." and recs["two"]["answer"] == b"green."
    assert b.skipped == {"train": 1, "test": 0}
    assert any("three.mp4" in r.getMessage() and "FFmpeg cannot open it" in r.getMessage() for r in caplog.records)


def test_bad_media_raises_when_not_skipping(tmp_path):
    folder = tmp_path / "f" / "train"
    folder.mkdir(parents=True)
    (folder / "x.mp3").write_bytes(b"\x00" * 50)
    (tmp_path / "f" / "test").mkdir()
    cfg = ManifestConfig(name="strict", manifest=str(tmp_path / "f" / "{split}"), skip_bad_media=False)
    with pytest.raises(DataError, match=r"x.mp3: FFmpeg cannot open it"):
        prepare("omni_speech", str(tmp_path / "data"), config=cfg)


def test_folder_errors_name_the_fix(tmp_path):
    (tmp_path / "e" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no audio files \(.wav"):
        prepare("omni_speech", str(tmp_path / "d1"), config=ManifestConfig(name="e", manifest=str(tmp_path / "e" / "{split}")))
    with pytest.raises(ValueError, match="omni_images cannot read a folder of media files; use a JSONL manifest"):
        prepare("omni_images", str(tmp_path / "d2"), config=ManifestConfig(name="e", manifest=str(tmp_path / "e" / "{split}")))
