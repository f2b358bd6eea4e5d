"""Streamed replies (omni_jax/generate/streaming.py, OmniRunner.respond_stream): the incremental
cross-fade equals the whole-reply one; a piece decoded incrementally with its state carried
equals the piece decoded whole (causal stand-in decoder); the vocoder's right context bound
holds; on a random tiny 1.5 model the streamed tokens equal `respond`'s and the concatenated
24 kHz chunks equal `write_wav`'s whole-reply waveform within the stated tolerance."""

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


def _feed(stream, chunks, step):
    """Pushes the chunks' codes `step` frames at a time, as generation would; returns the audio."""
    codes = np.concatenate(chunks)
    ids = np.concatenate([np.full(len(c), i) for i, c in enumerate(chunks)])
    bounds = np.cumsum([len(c) for c in chunks])
    out, n_out = [], []
    for a in range(0, len(codes), step):
        b = min(a + step, len(codes))
        closed = int((bounds <= b).sum())
        got = stream.push(codes[a:b], ids[a:b], closed, done=b == len(codes))
        out += got
        n_out.append(sum(len(g) for g in got))
    out.append(stream.flush())
    return np.concatenate(out), n_out


def test_stateful_piece_stream_equals_whole_pieces():
    """Codes arrive 5 at a time (the tiny decoders' minimum); pieces of at most 20 codes carry their
    decoder state; the stream equals Synthesizer.waveform of the same chunks."""
    from omni_jax.generate.streaming import SpeechStream
    from tests.generate.test_synthesis import _codes, _synth

    synth = _synth(bucket=16, max_chunk_frames=20)
    rf = synth.stream_receptive_field()
    assert rf == dict(chunk=16, right=10, min_codes=5), rf
    chunks = [_codes(33, 0), _codes(7, 1), _codes(12, 2)]  # pieces 20 + 13, 7, 12
    rng = jax.random.PRNGKey(5)
    want = synth.waveform(chunks, rng)
    stream = SpeechStream(synth, rng, chunk_frames=5)
    got, per_push = _feed(stream, chunks, 5)
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    print(f"stateful stream {len(got)} samples in {len(per_push)} pushes ({per_push}), {stream.decodes} decodes; "
          f"vs whole pieces: max abs diff {diff:.2e} (rms {np.sqrt(np.mean(want ** 2)):.3f})")
    assert got.shape == want.shape and diff <= 1e-5, diff
    assert sum(1 for n in per_push[:4] if n > 0) >= 2  # audio of the first piece came before it was complete


def test_vocoder_right_context_bound():
    """Changing mel frames >= 20 leaves the samples of frames < 20 - hift_right_context unchanged."""
    from omni_jax.generate.synthesis import hift_right_context
    from tests.generate.test_synthesis import VOC, _synth

    synth = _synth(bucket=16)
    r = hift_right_context(VOC)
    mel = np.random.default_rng(0).standard_normal((48, 80)).astype(np.float32) - 4
    other = mel.copy()
    other[20:] = np.random.default_rng(1).standard_normal((28, 80)) - 4
    k = jax.random.PRNGKey(2)
    a, b = synth.waveform_of_mel(mel, k), synth.waveform_of_mel(other, k)
    first = int(np.flatnonzero(np.abs(a - b) > 0)[0])
    print(f"vocoder right context: bound {r} mel frames; measured: samples change from frame {first / 480:.2f} "
          f"(= {20 - first / 480:.2f} frames before the change)")
    assert first >= (20 - r) * 480


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
                                        chunk_frames=5, steps_per_call=8))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and kinds.count("audio") >= 2
    assert kinds.index("text") < kinds.index("audio")  # text arrives before the speech that follows it
    streamed = events[-1][1]
    assert streamed.tokens == whole.tokens and streamed.text == whole.text
    assert "".join(v for k, v in events if k == "text").strip() == whole.text
    assert [c.tolist() for c in streamed.audio_chunks] == [c.tolist() for c in whole.audio_chunks]
    audio = np.concatenate([v for k, v in events if k == "audio"])
    synth = runner.speech_synthesizer()
    ref = synth.waveform(whole.audio_chunks, jax.random.PRNGKey(1))  # = write_wav's whole-reply waveform
    assert audio.shape == ref.shape, (audio.shape, ref.shape)
    diff = np.abs(audio - ref)
    # The release's audio decoder normalises dconv1 with a GroupNorm over the whole piece (not causal):
    # while a piece is incomplete its statistics are those of the codes so far. On this random tiny
    # model the prefix's decoder hidden states differ by ~3e-5 (rms 0.02) and the random flow matching
    # shrinks that below float noise: measured max abs diff 4.0e-8 (a trained decoder may differ more).
    last = [len(c) for c in whole.audio_chunks]
    print(f"streamed {len(audio)} samples ({len(audio) / 24000:.2f} s, chunks of {last} codes) vs the whole-reply "
          f"waveform: max abs diff {diff.max():.2e}, mean {diff.mean():.2e}, rms of the reply "
          f"{np.sqrt(np.mean(ref ** 2)):.3f}")
    assert diff.max() <= 1e-6, diff.max()


def test_bad_stream_settings_are_named(runner):
    from omni_jax.generate.omni_infer import Prompt

    with pytest.raises(ValueError, match="chunk_frames=4 is below the speech decoder's receptive field: no audio of a "
                                         "piece is final before 5 code frames .*chunk_size=16 .*use chunk_frames >= 5 "
                                         "\\(respond_stream\\(chunk_frames=...\\), launch.infer --chunk_frames\\)"):
        next(runner.respond_stream(Prompt(text="hi"), chunk_frames=4))
    with pytest.raises(ValueError, match="chunk_frames=0 is below"):
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
                max_new_tokens=90, text=SamplingParams(do_sample=False), seed=1, chunk_frames=5, on_text=pieces.append)
    assert "".join(pieces).strip() == r["text"] and r["stream"]["audio_chunks"] >= 2
    with wave.open(str(tmp_path / "s.wav")) as w:
        assert w.getframerate() == 24000 and w.getnframes() == round(r["seconds"] * 24000) > 0
    assert 0 < r["stream"]["seconds_to_first_audio"] <= r["stream"]["seconds_total"]
