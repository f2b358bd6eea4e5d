r"""Talk to a trained or imported omni model: text, images, a video and audio in; text and speech out.

  python -m launch.infer --src=runs/omni15_tiny --text="what colour is the circle?" --image=shape.png
  python -m launch.infer --src=runs/omni15_tiny --audio=question.wav --speech --out=reply.wav
  python -m launch.infer --src=runs/omni15_tiny --video=clip.mp4 --audio=q.mp3 --speech --stream --out=reply.wav
  python -m launch.infer --src=Baichuan-Omni-1.5/ --vocoder_src=hift.safetensors --tokenizer=Baichuan-Omni-1.5/ \
      --video=frames_dir/ --video_fps=2 --text="what happens?" --speech --out=reply.wav

--src: an omni_jax workdir (the trainer's --workdir; 1.5 or v1) or a release-format directory
(config.json + safetensors [+ vocoder/]; omni_jax/convert/omni.py). --image and --audio may be
repeated; --video is a video file (mp4/webm/mkv, decoded with PyAV at 1 fps), a directory of frame images
(sorted by name) or a comma-separated list of them, sampled at --video_fps. --audio may be any
file FFmpeg reads (resampled to 16 kHz, polyphase). --stream prints text pieces (stderr) and
appends 24 kHz speech chunks to --out while the reply is generated. Sampling follows the release (text T 0.8, top-k 20, top-p 0.85,
repetition penalty 1.1; audio T 0.5, top-k 5) unless --greedy. With --speech (1.5 only) the
reply is spoken too and written to --out (24 kHz WAV). Prints the reply and a JSON summary.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _read(path: str, what: str) -> bytes:
    if not os.path.isfile(path):
        raise app.UsageError(f"--{what}={path}: no such file")
    with open(path, "rb") as fh:
        return fh.read()


def video_frames(spec: str) -> list[bytes]:
    """A directory of frames (sorted by name), a comma-separated list of frame files, or a
    video file (mp4/webm/mkv/...: decoded with PyAV at 1 fps, omni_jax/data/video_io.py)."""
    from omni_jax.data import video_io

    if os.path.isfile(spec) and spec.lower().endswith(video_io.VIDEO_EXTENSIONS):
        try:
            return video_io.decode_video(_read(spec, "video"), fps=1.0, with_audio=False, name=spec).frames
        except ValueError as e:
            raise app.UsageError(f"--video={spec}: {e}") from None
    if os.path.isdir(spec):
        names = sorted(n for n in os.listdir(spec) if n.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise app.UsageError(f"--video={spec}: the directory holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
        return [_read(os.path.join(spec, n), "video") for n in names]
    return [_read(p.strip(), "video") for p in spec.split(",") if p.strip()]


def audio_bytes(path: str) -> bytes:
    """WAV/FLAC as is; any other audio (or video) file decoded to 16 kHz WAV with PyAV."""
    data = _read(path, "audio")
    if path.lower().endswith((".wav", ".flac")):
        return data
    from omni_jax.data import video_io

    try:
        return video_io.decode_audio_file(data, name=path)
    except ValueError as e:
        raise app.UsageError(f"--audio={path}: {e}") from None


def run(src: str, *, text: str = "", images=(), video: str = "", video_fps: float = 1.0, audio=(),
        speech: bool = False, out: str = "reply.wav", greedy: bool = False, max_new_tokens: int = 512,
        seed: int = 0, tokenizer: str = "", vocoder_src: str = "", system: str = "", step=None,
        stream: bool = False, chunk_frames: int = 25, on_text=None) -> dict:
    from omni_jax.generate.omni_infer import OmniRunner, Prompt
    from omni_jax.generate.sampling import TEXT_RELEASE, SamplingParams

    if not (text or images or video or audio):
        raise app.UsageError("give the model something: --text, --image, --video and/or --audio")
    is_file = bool(video) and os.path.isfile(video) and not video.lower().endswith(IMAGE_SUFFIXES)
    prompt = Prompt(text=text, images=[_read(p, "image") for p in images],  # inputs first: cheap to check
                    video_frames=video_frames(video) if video else (), video_fps=1.0 if is_file else video_fps,
                    audio=[audio_bytes(p) for p in audio], system=system)
    runner = OmniRunner.load(src, tokenizer=tokenizer or None, step=step, vocoder_src=vocoder_src or None,
                             speech=speech)
    sampling = SamplingParams(do_sample=False) if greedy else TEXT_RELEASE
    if stream:
        return _stream(runner, prompt, speech=speech, out=out, max_new_tokens=max_new_tokens, text=sampling,
                       seed=seed, chunk_frames=chunk_frames, on_text=on_text)
    reply = runner.respond(prompt, speech=speech, max_new_tokens=max_new_tokens, text=sampling, seed=seed)
    result = {"text": reply.text, "prompt_tokens": reply.prompt_tokens, "audio_frames": reply.audio_frames}
    if speech:
        if reply.audio_frames:
            result["wav"], result["seconds"] = out, runner.write_wav(out, reply, seed)
        else:
            result["wav"] = None  # the model answered in text only
    return result


def _stream(runner, prompt, *, speech, out, max_new_tokens, text, seed, chunk_frames, on_text) -> dict:
    """respond_stream: text pieces go to `on_text` as they come, audio chunks are appended to
    the WAV at `out` as they come (the header is completed when the reply ends)."""
    import time
    import wave

    import numpy as np

    t0, first_audio, n_chunks, samples, w = time.perf_counter(), None, 0, 0, None
    try:
        for kind, value in runner.respond_stream(prompt, speech=speech, max_new_tokens=max_new_tokens, text=text,
                                                 seed=seed, chunk_frames=chunk_frames):
            if kind == "text" and on_text is not None:
                on_text(value)
            elif kind == "audio":
                if w is None:
                    first_audio = time.perf_counter() - t0
                    w = wave.open(out, "wb")
                    w.setnchannels(1), w.setsampwidth(2), w.setframerate(24000)
                w.writeframes((np.clip(value, -1, 1) * 32767).astype(np.int16).tobytes())
                n_chunks, samples = n_chunks + 1, samples + len(value)
            elif kind == "done":
                reply = value
    finally:
        if w is not None:
            w.close()
    result = {"text": reply.text, "prompt_tokens": reply.prompt_tokens, "audio_frames": reply.audio_frames,
              "stream": {"audio_chunks": n_chunks, "seconds_to_first_audio": first_audio,
                         "seconds_total": time.perf_counter() - t0}}
    if speech:
        result["wav"] = out if n_chunks else None
        if n_chunks:
            result["seconds"] = samples / 24000
    return result


def _main(argv):
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    from omni_jax import distributed

    distributed.initialize_single_process_tool("launch.infer")  # first: before anything touches jax devices
    try:
        r = _run_flags()
    except (FileNotFoundError, ValueError) as e:  # bad checkpoints and inputs: the message says what to fix
        raise SystemExit(f"launch.infer: {type(e).__name__}: {e}") from None
    print(r["text"])
    if r.get("wav"):
        print(f"[speech: {r['audio_frames']} frames, {r['seconds']:.2f} s -> {r['wav']}]")
    elif FLAGS.speech:
        print("[the reply has no speech]")
    print(json.dumps(r))
    return 0


def _run_flags() -> dict:
    return run(FLAGS.src, text=FLAGS.text, images=FLAGS.image or (), video=FLAGS.video, video_fps=FLAGS.video_fps,
            audio=FLAGS.audio or (), speech=FLAGS.speech, out=FLAGS.out, greedy=FLAGS.greedy,
            max_new_tokens=FLAGS.max_new_tokens, seed=FLAGS.seed, tokenizer=FLAGS.tokenizer,
            vocoder_src=FLAGS.vocoder_src, system=FLAGS.system, step=FLAGS.step, stream=FLAGS.stream,
            chunk_frames=FLAGS.chunk_frames,
            on_text=(lambda piece: print(piece, end="", file=sys.stderr, flush=True)) if FLAGS.stream else None)


def _define_flags() -> None:
    from omni_jax import distributed

    distributed.define_flags(flags)
    flags.DEFINE_string("src", None, "An omni_jax workdir or a release-format directory.")
    flags.DEFINE_string("text", "", "The user's text.")
    flags.DEFINE_multi_string("image", None, "An image file (repeatable).")
    flags.DEFINE_string("video", "", "A video file (mp4/webm/mkv, sampled at 1 fps), a directory of video frames, "
                        "or a comma-separated list of frame files.")
    flags.DEFINE_float("video_fps", 1.0, "The rate the --video frames were sampled at.")
    flags.DEFINE_multi_string("audio", None, "An audio file: WAV/FLAC, or anything FFmpeg reads (repeatable).")
    flags.DEFINE_bool("stream", False, "Stream the reply: text pieces to stderr and speech chunks appended to --out "
                      "as they are generated.")
    flags.DEFINE_integer("chunk_frames", 25, "--stream: new speech codes between decodes of the current piece (12.5 Hz: "
                         "25 = 2 s); at least the decoder's receptive field (26 for the release's decoders, 5 tiny).")
    flags.DEFINE_bool("speech", False, "Answer in speech too (Baichuan-Omni-1.5), written to --out.")
    flags.DEFINE_string("out", "reply.wav", "Where the spoken reply goes.")
    flags.DEFINE_bool("greedy", False, "Greedy text decoding instead of the released sampling settings.")
    flags.DEFINE_integer("max_new_tokens", 512, "LLM positions to generate at most (text tokens + audio frames).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_string("tokenizer", "", "The released tokenizer's directory (release checkpoints without one).")
    flags.DEFINE_string("vocoder_src", "", "The HiFT vocoder as safetensors (release checkpoints without vocoder/).")
    flags.DEFINE_string("system", "", "System prompt (default: the run's config.data.system).")
    flags.DEFINE_integer("step", None, "Checkpoint step of a workdir (default: the latest).")
    flags.mark_flag_as_required("src")


def main():
    _define_flags()
    app.run(_main)


if __name__ == "__main__":
    sys.exit(main())
