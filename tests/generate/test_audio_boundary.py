"""v1 audio-boundary head (omni_jax/models/v1_boundary_head.py) trained in the v1 stage
`audio_boundary` by the trainer (configs/omni_v1/audio_boundary.py at the test size, 120 steps,
batch 8, head only): the other components stay bit-identical, the head is checkpointed and
restored by OmniV1Runner.load, boundary accuracy on held-out streams (test-split speech arriving
inside a video stream's audio) is stated and asserted, and the streamed reply with the predicted
end equals the all-at-once reply."""

import io

import jax
import numpy as np
import pytest
from PIL import Image

STEPS = 120


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from configs.omni_v1 import audio_boundary
    from omni_jax.generate.v1_stream import OmniV1Runner
    from omni_jax.train.trainer import train

    c = audio_boundary.get_config("test")
    c.stages.audio_boundary.steps = c.train.steps = STEPS
    c.train.update(log_every=STEPS, progress_bar=False)
    c.checkpoint.update(every=STEPS // 2, keep=3)
    wd = str(tmp_path_factory.mktemp("boundary"))
    train(c, wd)
    return OmniV1Runner.load(wd), wd


def test_stage_trains_and_checkpoints_the_head_only(trained):
    from omni_jax.convert.workdir import restore_params
    from omni_jax.generate.v1_stream import boundary_stage_done

    runner, wd = trained
    assert runner.boundary_trained and not boundary_stage_done(runner.config, wd, step=STEPS // 2)
    mid, last = restore_params(runner.config, wd, step=STEPS // 2), restore_params(runner.config, wd, step=STEPS)
    for k in last:  # the stage's freezing rules: between its two checkpoints only the head moved
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(mid[k]), jax.tree.leaves(last[k])))
        assert same == (k != "v1_boundary_head"), k
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(last), jax.tree.leaves(runner.params)))


def test_boundary_accuracy_on_held_out_streams(trained):
    from omni_jax.data.boundary_streams import held_out_streams
    from omni_jax.generate.audio_boundary import boundary_accuracy

    runner, _ = trained
    streams = held_out_streams("tiny", per_clip=2)  # 8 test-split clips x 2 streams, never trained on
    acc = boundary_accuracy(runner.boundary_tracker, streams, tol=0.2, step_s=0.2)
    errs = np.abs(np.array([e for e in acc["errors"] if None not in e]))
    print(f"held-out streams {acc['streams']}: start within 0.2 s {acc['start']:.3f}, end {acc['end']:.3f}, both "
          f"{acc['both']:.3f}; |error| start mean {errs[:, 0].mean() * 1000:.0f} ms max {errs[:, 0].max() * 1000:.0f} ms, "
          f"end mean {errs[:, 1].mean() * 1000:.0f} ms max {errs[:, 1].max() * 1000:.0f} ms")
    # measured: 15/16 both within 0.2 s; start mean 72 ms (max 891 ms: one early false start), end mean
    # 36 ms (max 172 ms)
    assert acc["streams"] == 16 and acc["both"] >= 0.9 and errs.mean(0).max() <= 0.1 and errs[:, 1].max() <= 0.25
    tracker = runner.boundary_tracker()  # video-stream noise alone: no speech is found
    noise = np.random.default_rng(0).standard_normal(16000 * 4).astype(np.float32) * 3e-3
    assert [tracker.update(noise[:n]) for n in range(3200, len(noise) + 1, 3200)][-1] == (None, None)


def _png(i):
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (40 * i % 256, 120, 200 - 30 * i)).save(buf, format="PNG")
    return buf.getvalue()


def test_predicted_end_streamed_reply_equals_all_at_once(trained):
    """No audio_end event: the trained head ends the user's audio; frames keep arriving at 1 fps."""
    from omni_jax.data.boundary_streams import held_out_streams
    from omni_jax.generate.omni_infer import Prompt
    from omni_jax.generate.sampling import SamplingParams

    runner, _ = trained
    x, start, end = held_out_streams("tiny", per_clip=1, seed=7)[0]
    ev = []
    for k in range(len(x) // 1600):
        if k % 10 == 0:
            ev.append(("frame", k / 10, _png(k // 10)))
        ev.append(("audio", k / 10, x[k * 1600:(k + 1) * 1600]))
    r = runner.stream(iter(ev), max_new_tokens=8, audio_timeout=30.0)  # boundary=None: the trained head
    print(f"true speech {start:.2f}-{end:.2f} s, fed {r.audio_seconds:.2f} s, reason {r.end_reason}, "
          f"frames {r.frames_used}")
    assert r.end_reason == "predicted_end" and abs(r.audio_seconds - (end - start)) < 0.4
    whole = runner.respond(Prompt(video_frames=r.frames, video_fps=1.0, audio=[r.audio_wav]), max_new_tokens=8,
                           text=SamplingParams(do_sample=False))
    assert r.reply.tokens == whole.tokens and len(whole.tokens) > 0
    # explicit events and the time-out still rule without the head
    r2 = runner.stream(iter(ev[:20] + [("audio_end", 1.0)]), max_new_tokens=2, boundary=False)
    assert r2.end_reason == "audio_end"
