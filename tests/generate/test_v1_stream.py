"""v1 streaming input (omni_jax/generate/v1_stream.py) on a random tiny v1 model: frames encoded
on arrival into a growing KV cache, the user's audio appended at its end; the streamed reply
equals `respond` on the same content all at once (greedy); end-of-audio rules; bad streams."""

import io

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def runner():
    from configs.omni_v1 import pipeline
    from omni_jax.generate.v1_stream import OmniV1Runner
    from omni_jax.tasks import get_task
    from tests.reference_models import random_params

    c = pipeline.get_config("test")
    task = get_task(c)
    return OmniV1Runner(c, random_params(task, 11), None)


def _png(i):
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (40 * i % 256, 120, 200 - 30 * i)).save(buf, format="PNG")
    return buf.getvalue()


def _events(n_sec=3, end=True):
    from omni_jax.data.speech_synth import synthesize

    speech = synthesize("where is the red circle?")
    step = 1600  # 0.1 s chunks
    ev = []
    for k in range(int(n_sec * 10)):
        t = k / 10
        if k % 5 == 0:  # frames at 2 fps: half are dropped by the 1 fps rule
            ev.append(("frame", t, _png(k // 5)))
        if k * step < len(speech):
            ev.append(("audio", t, speech[k * step:(k + 1) * step]))
    if end:
        ev.append(("audio_end", n_sec))
    return ev


def test_streamed_reply_equals_all_at_once(runner):
    from omni_jax.generate.omni_infer import Prompt
    from omni_jax.generate.sampling import SamplingParams

    r = runner.stream(iter(_events()), text="what is it?", max_new_tokens=12)
    assert r.end_reason == "audio_end" and r.frames_used == 3 and r.frames_dropped == 3
    whole = runner.respond(Prompt(video_frames=r.frames, video_fps=1.0, audio=[r.audio_wav], text="what is it?"),
                           max_new_tokens=12, text=SamplingParams(do_sample=False))
    print(f"streamed: {r.frames_used} frames, {r.audio_seconds:.2f} s audio, cache {r.cache_positions}; "
          f"prompt {whole.prompt_tokens} tokens; reply tokens {r.reply.tokens[:6]}...")
    assert r.reply.tokens == whole.tokens and len(whole.tokens) > 0
    assert r.reply.prompt_tokens - len(r.reply.tokens) <= whole.prompt_tokens


def test_never_ending_audio_times_out_and_bad_events(runner):
    ev = _events(n_sec=6, end=False)  # speech lasts ~2 s, frames keep coming: the time-out rule ends it
    r = runner.stream(iter(ev), max_new_tokens=4, audio_timeout=1.5)
    assert r.end_reason == "timeout" and r.frames_used < 6
    r = runner.stream(iter(_events(n_sec=2, end=False)), max_new_tokens=4, audio_timeout=10.0)
    assert r.end_reason == "stream_end"
    with pytest.raises(ValueError, match="stream event .*use \\('frame', t, image_bytes\\)"):
        runner.stream(iter([("video", 0.0, b"")]))
    with pytest.raises(ValueError, match="nothing to answer"):
        runner.stream(iter([]))
    with pytest.raises(ValueError, match="must be positive"):
        runner.stream(iter([]), audio_timeout=0)


def test_untrained_boundary_head_is_refused(runner):
    """A model whose v1_boundary_head was never trained (no audio_boundary stage) is not used by
    default; asking for it names the stage to train (the trained head: tests/generate/test_audio_boundary.py)."""
    assert not runner.boundary_trained
    with pytest.raises(ValueError, match="v1_boundary_head was not trained; train the v1 stage audio_boundary"):
        runner.stream(iter(_events()), boundary=True)
