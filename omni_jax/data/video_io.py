"""Video and audio files (mp4 / webm / mkv / mov / avi, mp3 / m4a / ogg / opus ...) through PyAV.

`decode_video(data)` decodes a video file with FFmpeg (PyAV, the `media` extra) and keeps
one frame per 1 / `fps` seconds of presentation time (ARCHITECTURE.md 1.2 / 2: 1 frame per
second; the per-stage cap, at most 32 frames for 1.5 and 48 for v1, is applied by the
pipeline's `VideoItem`, which subsamples the stored 1-fps frames uniformly exactly as
`vision_preprocessing.sample_frame_indices` does for any video). Frames are returned as PNG
bytes (lossless) so a record stores them like pre-extracted frames; the file's first audio
track, if any, is mixed down to mono, resampled to 16 kHz with the polyphase resampler
(`resampling.resample`) and returned as 16-bit WAV bytes, the audio element of the
video formats (`omni_videos.audio`).

`decode_audio_file(data)` turns any audio file FFmpeg reads into the same 16 kHz WAV bytes.

Bad input is a `DataError`: 'corrupt_media' for a file FFmpeg cannot open or decode (the
error names the file and FFmpeg's message), 'missing_field' for a video without a video
stream or without a single decodable frame. Decoding never waits on anything but the bytes
given, so it cannot hang.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from omni_jax.data import audio_features, media, resampling
from omni_jax.data.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - the media extra is installed by .ci/run
        raise DataError("corrupt_media", "video/audio files need PyAV: pip install 'omni_jax[media]' (or pip install av)") from e
    return av


@dataclasses.dataclass
class DecodedVideo:
    frames: list[bytes]  # PNG bytes, one per kept frame
    fps: float  # frames per second of `frames`
    audio: bytes  # 16 kHz mono 16-bit WAV of the first audio track, b"" when there is none
    duration: float  # seconds covered by the video stream


def _open(data: bytes, name: str):
    av = _av()
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise DataError("corrupt_media", f"{name}: the file is empty")
    try:
        return av.open(io.BytesIO(bytes(data)), "r")
    except Exception as e:  # av.error.InvalidDataError and friends
        raise DataError("corrupt_media", f"{name}: FFmpeg cannot open it ({len(data)} bytes): {e}") from e


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _audio_track(container, name: str) -> np.ndarray | None:
    """The first audio stream as float32 (n, channels) at its own rate, and the rate."""
    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    pieces, rate = [], None
    try:
        for frame in container.decode(stream):
            x = frame.to_ndarray()
            fmt = frame.format.name
            if frame.format.is_planar:  # (channels, n)
                x = x.T
            else:  # (1, n * channels) interleaved
                x = x.reshape(-1, len(frame.layout.channels))
            if fmt.startswith("s16"):
                x = x.astype(np.float32) / 32768.0
            elif fmt.startswith("s32"):
                x = x.astype(np.float32) / 2147483648.0
            elif fmt.startswith("u8"):
                x = (x.astype(np.float32) - 128.0) / 128.0
            pieces.append(np.asarray(x, np.float32))
            rate = frame.sample_rate
    except Exception as e:
        raise DataError("corrupt_media", f"{name}: cannot decode the audio track: {e}") from e
    if not pieces:
        return None
    wav = resampling.resample(resampling.to_mono(np.concatenate(pieces, 0)), int(rate), media.SAMPLE_RATE)
    return np.clip(wav, -1.0, 1.0)


def decode_video(data: bytes, *, fps: float = 1.0, with_audio: bool = True, name: str = "video") -> DecodedVideo:
    """Video file bytes -> frames kept at `fps` (by presentation time) + the audio track."""
    if not fps > 0:
        raise DataError("invalid", f"{name}: fps must be positive, got {fps}")
    container = _open(data, name)
    try:
        if not container.streams.video:
            raise DataError("missing_field", f"{name}: the file has no video stream (an audio file? use decode_audio_file)")
        stream = container.streams.video[0]
        frames, next_t, last_t = [], 0.0, 0.0
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(frames) / fps
                last_t = max(last_t, t)
                if t + 1e-6 >= next_t:
                    frames.append(_png(frame.to_ndarray(format="rgb24")))
                    next_t = (int(t * fps + 1e-6) + 1) / fps
        except DataError:
            raise
        except Exception as e:
            raise DataError("corrupt_media", f"{name}: cannot decode video frame {len(frames)}: {e}") from e
        if not frames:
            raise DataError("missing_field", f"{name}: the video stream has no decodable frame")
        audio = b""
        if with_audio:
            container.seek(0)
            wav = _audio_track(container, name)
            audio = b"" if wav is None or len(wav) == 0 else audio_features.encode_wav(wav)
        return DecodedVideo(frames=frames, fps=float(fps), audio=audio, duration=last_t)
    finally:
        container.close()


def decode_audio_file(data: bytes, *, name: str = "audio") -> bytes:
    """Any audio (or the audio track of a video) file -> 16 kHz mono 16-bit WAV bytes."""
    container = _open(data, name)
    try:
        wav = _audio_track(container, name)
    finally:
        container.close()
    if wav is None or len(wav) == 0:
        raise DataError("missing_field", f"{name}: the file has no decodable audio")
    return audio_features.encode_wav(wav)
