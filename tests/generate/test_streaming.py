"""Streamed replies (omni_jax/generate/streaming.py, OmniRunner.respond_stream): the incremental
cross-fade equals the whole-reply one, and on a random tiny 1.5 model the streamed tokens and
the concatenated 24 kHz chunks equal `respond` + the Synthesizer's waveform of the same pieces."""

import jax
import numpy as np
import pytest

from omni_jax.generate.synthesis import crossfade_concat
from omni_jax.generate.streaming import CrossfadeStream


@pytest.mark.parametrize("overlap", [0, 5, 240])
def test_incremental_crossfade_equals_whole(overlap):
    rng = np.random.default_rng(overlap)
    pieces = [rng.standard_normal(n).astype(np.float32) for n in (300, 3, 1000, 240, 0, 17, 500)]
    fade = CrossfadeStream(overlap)
    got = np.concatenate([fade.push(p) for p in pieces] + [fade.flush()])
    want = crossfade_concat(pieces, overlap)
    assert got.shape == want.shape and np.array_equal(got, want)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    from configs.omni15 import pipeline
    from omni_jax import sharding as shd
    from omni_jax.convert.omni import save_release
    from omni_jax.generate.omni_infer import OmniRunner
    from omni_jax.tasks.omni import OmniTask
    from tests.reference_models import random_params

    d = tmp_path_factory.mktemp("stream")
    c = pipeline.get_config("test")
    task = OmniTask(c)
    params = random_params(task, 3)
    state = jax.device_get(shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(4))))
    save_release(str(d / "release"), params, state, task.model_cfg, dtype=None)
    return OmniRunner.load(str(d / "release"))


def test_streamed_reply_equals_whole_reply(runner):
    from omni_jax.generate.omni_infer import Prompt
    from omni_jax.generate.sampling import SamplingParams

    prompt, greedy = Prompt(text="what colour is the circle?"), SamplingParams(do_sample=False)
    # a random model: the demo's chunking starts speech after 50 text tokens
    whole = runner.respond(prompt, speech=True, max_new_tokens=90, text=greedy, seed=1)
    assert whole.audio_frames >= 8, whole.audio_frames
    events = list(runner.respond_stream(prompt, speech=True, max_new_tokens=90, text=greedy, seed=1,
                                        chunk_frames=4, steps_per_call=8))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and kinds.count("audio") >= 2
    assert kinds.index("text") < kinds.index("audio")  # text arrives before the speech that follows it
    streamed = events[-1][1]
    assert streamed.tokens == whole.tokens and streamed.text == whole.text
    assert "".join(v for k, v in events if k == "text").strip() == whole.text
    assert [c.tolist() for c in streamed.audio_chunks] == [c.tolist() for c in whole.audio_chunks]
    audio = np.concatenate([v for k, v in events if k == "audio"])
    synth = runner.speech_synthesizer(4)
    ref = synth.waveform(whole.audio_chunks, jax.random.PRNGKey(1))
    diff = float(np.abs(audio - ref).max()) if audio.shape == ref.shape else float("inf")
    synth.max_chunk_frames = 250
    one_piece = synth.waveform(whole.audio_chunks, jax.random.PRNGKey(1))
    print(f"streamed {len(audio)} samples ({len(audio) / 24000:.2f} s) vs whole reply in the same 4-frame pieces: "
          f"max abs diff {diff:.2e}; vs one piece per chunk (250 frames): length {len(one_piece)}, "
          f"rms {np.sqrt(np.mean(ref ** 2)):.3f}")
    assert audio.shape == ref.shape and diff <= 1e-6, diff


def test_bad_stream_settings_are_named(runner):
    from omni_jax.generate.omni_infer import Prompt

    with pytest.raises(ValueError, match="chunk_frames=0: a streamed speech piece needs at least 1 code frame"):
        next(runner.respond_stream(Prompt(text="hi"), chunk_frames=0))
    with pytest.raises(ValueError, match="steps_per_call=0: must be >= 1"):
        next(runner.respond_stream(Prompt(text="hi"), steps_per_call=0))


def test_infer_stream_writes_chunks_as_they_come(runner, tmp_path):
    """launch/infer.py --stream: text pieces to the callback, chunks appended to one WAV."""
    import wave

    from launch.infer import _stream
    from omni_jax.generate.omni_infer import Prompt
    from omni_jax.generate.sampling import SamplingParams

    pieces = []
    r = _stream(runner, Prompt(text="what colour is the circle?"), speech=True, out=str(tmp_path / "s.wav"),
                max_new_tokens=90, text=SamplingParams(do_sample=False), seed=1, chunk_frames=4, on_text=pieces.append)
    assert "".join(pieces).strip() == r["text"] and r["stream"]["audio_chunks"] >= 2
    with wave.open(str(tmp_path / "s.wav")) as w:
        assert w.getframerate() == 24000 and w.getnframes() == round(r["seconds"] * 24000) > 0
    assert 0 < r["stream"]["seconds_to_first_audio"] <= r["stream"]["seconds_total"]
