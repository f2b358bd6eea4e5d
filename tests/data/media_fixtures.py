"""Small media files encoded locally with PyAV for the video/audio file tests."""

from __future__ import annotations

import io

import numpy as np

CODECS = {"mp4": ("mpeg4", "aac"), "webm": ("libvpx", "libopus"), "mkv": ("mpeg4", "pcm_s16le")}


def frame_color(i: int) -> tuple[int, int, int]:
    """A colour per source frame so tests can tell which frames were kept."""
    return (8 * i % 256, 255 - 8 * i % 256, 128)


def write_video(path, *, seconds: float = 3.0, fps: int = 10, size=(48, 64), audio_rate: int | None = 44_100,
                channels: int = 2, tone_hz: float = 440.0, fmt: str | None = None) -> None:
    """A video of `seconds` at `fps` whose frame i is filled with frame_color(i), plus a
    `tone_hz` sine audio track at `audio_rate` (None: no audio)."""
    import av

    fmt = fmt or str(path).rsplit(".", 1)[-1]
    vcodec, acodec = CODECS[fmt]
    out = av.open(str(path), "w", format={"mkv": "matroska"}.get(fmt, fmt))
    vs = out.add_stream(vcodec, rate=fps)
    vs.height, vs.width = size
    vs.pix_fmt = "yuv420p"
    ast = None
    if audio_rate:
        rate = 48_000 if acodec == "libopus" else audio_rate
        ast = out.add_stream(acodec, rate=rate)
        ast.layout = "stereo" if channels == 2 else "mono"
    for i in range(int(seconds * fps)):
        img = np.empty(size + (3,), np.uint8)
        img[:] = frame_color(i)
        for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(p)
    for p in vs.encode():
        out.mux(p)
    if ast is not None:
        rate = ast.codec_context.sample_rate
        t = np.arange(int(seconds * rate)) / rate
        x = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
        fmt_name = ast.codec_context.codec.audio_formats[0].name if ast.codec_context.codec.audio_formats else "fltp"
        resampler = av.AudioResampler(format=fmt_name, layout=ast.layout.name, rate=rate)
        step = ast.codec_context.frame_size or 1024
        for s in range(0, len(x), step):
            fr = av.AudioFrame.from_ndarray(np.stack([x[s:s + step]] * channels), format="fltp", layout=ast.layout.name)
            fr.sample_rate, fr.pts = rate, s
            for r in resampler.resample(fr):
                for p in ast.encode(r):
                    out.mux(p)
        for p in ast.encode():
            out.mux(p)
    out.close()


def wav_bytes(x: np.ndarray, rate: int, channels: int = 1) -> bytes:
    import wave

    pcm = (np.clip(np.asarray(x, np.float32), -1, 1) * 32767).astype(np.int16)
    pcm = np.repeat(pcm[:, None], channels, 1)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels); w.setsampwidth(2); w.setframerate(rate); w.writeframes(pcm.tobytes())
    return buf.getvalue()
