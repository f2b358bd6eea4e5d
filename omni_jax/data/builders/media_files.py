"""Your own media files in manifests and folders (issue 15 item 4).

Manifest records (ManifestConfig) may name real media files:

* `omni_videos`: `"video": "clip.mp4"` (mp4 / webm / mkv / mov / avi) is decoded with PyAV
  into `frames` (PNG, kept at 1 fps by presentation time), `fps` and, unless the record
  gives `audio` itself, `audio` = the file's audio track (16 kHz WAV; empty when silent).
* any audio field (`audio`, `audios`, `answer_audio`): a WAV or FLAC file is stored as is;
  any other audio file FFmpeg reads (mp3, m4a, ogg, opus, or a video's audio track) is
  decoded and stored as 16 kHz WAV. Resampling is polyphase (omni_jax/data/resampling.py).

A folder instead of a JSONL (`ManifestConfig(manifest="/data/clips/{split}")`): every media
file in it is one record (videos for omni_videos, audio files for the speech builders), sorted
by name; the other fields come from a sidecar `<stem>.json` next to the file (e.g.
`{"caption": "...", "question": "...", "answer": "..."}`, or `{"transcript": "..."}`), and a
plain `<stem>.txt` fills the builder's main text field (caption / transcript).

A file FFmpeg cannot decode, or a video without frames, is skipped and counted (a warning names
the file and the reason; `builder.skipped[split]` holds the count) when
`ManifestConfig.skip_bad_media` is true (the default), and raises the `DataError` otherwise.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

from omni_jax.data import video_io

AUDIO_FIELDS = ("audio", "audios", "answer_audio")
# builder name -> (the field a folder's media file fills, the field a `<stem>.txt` fills)
FOLDER_FIELDS = {"omni_videos": ("video", "caption"), "omni_speech": ("audio", "transcript"),
                 "omni_spoken_qa": ("audio", "transcript")}


def read_audio(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if os.path.splitext(path)[1].lower() in (".wav", ".flac"):
        return data
    return video_io.decode_audio_file(data, name=path)


def expand_video(rec: dict[str, Any], root: str, features: dict) -> dict[str, Any]:
    """Replace `video` (a path) by frames / fps / audio."""
    if "video" not in rec:
        return rec
    if "frames" not in features:
        raise ValueError(f"'video' file fields are for omni_videos, not a builder with {sorted(features)}")
    rec = dict(rec)
    path = os.path.join(root, rec.pop("video"))
    if "frames" in rec:
        raise ValueError(f"{path}: give either 'video' (a file) or 'frames' (frame files), not both")
    with open(path, "rb") as f:
        decoded = video_io.decode_video(f.read(), fps=1.0, with_audio="audio" not in rec, name=path)
    rec["frames"], rec["fps"] = decoded.frames, decoded.fps
    if "audio" not in rec:
        rec["audio"] = decoded.audio
    return rec


def folder_records(folder: str, builder_name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, manifest-like record with absolute paths) for each media file in `folder`."""
    if builder_name not in FOLDER_FIELDS:
        raise ValueError(f"{builder_name} cannot read a folder of media files; use a JSONL manifest "
                         f"(folders work for {sorted(FOLDER_FIELDS)})")
    field, text_field = FOLDER_FIELDS[builder_name]
    exts = video_io.VIDEO_EXTENSIONS if field == "video" else video_io.AUDIO_EXTENSIONS
    names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in exts)
    if not names:
        raise ValueError(f"{folder}: no {field} files ({', '.join(exts)}) in the folder")
    for i, name in enumerate(names):
        stem = os.path.join(folder, os.path.splitext(name)[0])
        rec: dict[str, Any] = {"id": os.path.splitext(name)[0], field: os.path.join(folder, name)}
        if os.path.exists(stem + ".json"):
            with open(stem + ".json") as f:
                rec.update(json.load(f))
        if os.path.exists(stem + ".txt"):
            with open(stem + ".txt") as f:
                rec.setdefault(text_field, f.read().strip())
        yield i, rec
