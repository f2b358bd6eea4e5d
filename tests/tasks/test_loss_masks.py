"""The loss masks are wired (issue 14 item 4): for every format of the sequence layout
(omni_jax/data/formats.py FORMATS: the 15 of Baichuan-Omni-1.5, the 12 without speech output for
v1), a batch row built from a generated record by the real format -> layout -> row code, a tiny
random model, and the gradient of the task's loss over every parameter:

  * perturbing every masked-out text target (prompt, media placeholders, delimiters, padding:
    loss_mask 0) leaves the gradient unchanged, bit for bit;
  * perturbing one trained text target (loss_mask 1) of the format's row changes it;
  * 1.5 audio head: perturbing the speech target of every position without audio loss
    (speech_loss_mask 0, e.g. all of interleaved_text_audio's history speech) leaves it unchanged;
    pointing one trained speech position (tts, speech_qa) at another frame changes it.

No training: the masks must hold for any parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.omni15 import stages as stages15
from configs.omni_v1 import stages as stages_v1
from omni_jax import sharding as shd
from omni_jax.data import default_dataset, formats
from omni_jax.data.omni_pipeline import sample_context, single_sample_rows
from omni_jax.tasks import get_task
from tests.reference_models import random_params

# the embedded dataset's subset whose records each format reads
SUBSET = {"text": "text", "text_qa": "images", "caption": "images", "image_qa": "images", "interleaved_image_text": "interleaved_images",
          "video_caption": "videos", "video_qa": "videos", "asr": "speech", "audio_qa": "spoken_qa",
          "speech_translation": "speech", "speech_qa": "spoken_qa", "tts": "speech",
          "interleaved_text_audio": "interleaved_audio", "crossmodal_image": "images", "crossmodal_video": "videos"}


def _config(stages):
    c = stages.base("test")
    c.data.seq_len = 512  # the longest single sample here (a text document) has 393 tokens
    c.data.shapes.mel_frames = 300  # 3 s audio chunks (2 per row): every clip here fits, at half the encoder cost
    return c


MODELS = {"omni15": (lambda: _config(stages15), {"vision", "audio", "speech"}),
          "omni_v1": (lambda: _config(stages_v1), {"vision", "audio"})}


def test_every_format_has_a_record_here():
    missing = sorted(set(formats.FORMATS) - set(SUBSET))
    assert not missing, f"formats {missing} have no record in this test: add them to SUBSET (format -> subset)"


def _record(subset: str) -> dict:
    # the first tiny test-split record (a video with a narration track for crossmodal_video)
    return next(iter(default_dataset.generate(subset, "test", "tiny")))[1]


def _batch(config, fmts):
    """One row per format, written by the pipeline's own format / media / row code."""
    shapes, ctx = sample_context(config)
    records = {s: _record(s) for s in sorted({SUBSET[f] for f in fmts})}
    samples = [formats.FORMATS[f].fn(records[SUBSET[f]], ctx, np.random.default_rng(0), f) for f in fmts]
    return single_sample_rows(samples, ctx, shapes)


@pytest.fixture(scope="module", params=sorted(MODELS))
def setup(request):
    make, modalities = MODELS[request.param]
    config = make()
    fmts = sorted(f for f, spec in formats.FORMATS.items() if spec.needs <= modalities)
    task = get_task(config)
    raw = _batch(config, fmts)
    rows = [{k: jnp.asarray(v[i:i + 1]) for k, v in raw.items() if k in task.fields} for i in range(len(fmts))]
    assert set(rows[0]) == set(task.fields), f"the batch lacks {sorted(set(task.fields) - set(rows[0]))}"
    params = random_params(task, 0)
    init_state = task.init_state(jax.random.PRNGKey(1))
    state = None if init_state is None else shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(1)))

    @jax.jit
    def grads(b):  # one row (one format) per call: one compilation, and each format's own gradient
        norms = task.norms(b)
        return jax.grad(lambda p: task.loss_with_state(p, state, b, jax.random.PRNGKey(3), norms)[0])(params)

    base = [grads(r) for r in rows]
    return request.param, task, fmts, rows, params, state, grads, base


def _same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_masked_out_text_targets_do_not_reach_the_gradient(setup):
    name, task, fmts, rows, params, state, grads, base = setup
    vocab = task.model_cfg.llm.vocab_size
    for f, row, g in zip(fmts, rows, base):
        masked = row["loss_mask"] == 0
        n_in, n_trained = int((masked & (row["segment_ids"] > 0)).sum()), int((~masked).sum())
        print(f"{name} {f}: {n_trained} trained targets, {n_in} masked-out inside the sample, "
              f"{int(masked.sum()) - n_in} padding")
        assert n_trained > 0 and int(masked.sum()) > 0, f"{name} {f}: a row needs trained and masked-out targets"
        targets = jnp.where(masked, (row["targets"] + 1 + row["targets"] % 7) % vocab, row["targets"])
        assert int((targets != row["targets"]).sum()) == int(masked.sum())
        assert _same(grads(dict(row, targets=targets)), g), f"{name} {f}: a masked-out text target changed the gradient"


def test_each_formats_trained_text_target_reaches_the_gradient(setup):
    name, task, fmts, rows, params, state, grads, base = setup
    vocab = task.model_cfg.llm.vocab_size
    for f, row, g in zip(fmts, rows, base):
        t = int(np.flatnonzero(np.asarray(row["loss_mask"][0]) > 0)[-1])  # the reply's last target (eos)
        targets = row["targets"].at[0, t].set((row["targets"][0, t] + 1) % vocab)
        d = _max_diff(grads(dict(row, targets=targets)), g)
        print(f"{name} {f}: one trained target perturbed, max gradient change {d:.3e}")
        assert d > 0, f"{name} {f}: the trained target at position {t} does not reach the gradient"


def test_audio_head_targets_follow_the_speech_loss_mask(setup):
    name, task, fmts, rows, params, state, grads, base = setup
    if "speech_loss_mask" not in rows[0]:
        pytest.skip(f"{name} has no speech output (no audio head)")
    frames = int(rows[0]["speech_mel_lengths"].shape[1] * task.shapes.tokens_per_chunk)
    speech = [f for f in fmts if "speech" in formats.FORMATS[f].needs]
    assert speech == ["interleaved_text_audio", "speech_qa", "tts"]
    for f in speech:
        i = fmts.index(f)
        row = rows[i]
        w, tidx, end = row["speech_loss_mask"], row["speech_target_index"], row["speech_target_end"]
        # every position without audio loss points at a real frame (a different one where it had
        # one) and has its end-of-audio flag flipped
        moved = jnp.where(w == 0, jnp.where(tidx >= 0, (tidx + 1) % frames, 0), tidx)
        flipped = jnp.where(w == 0, 1 - end, end)
        assert int((moved != tidx).sum()) > 0
        g = grads(dict(row, speech_target_index=moved, speech_target_end=flipped))
        assert _same(g, base[i]), f"{name} {f}: a speech target without audio loss changed the gradient"
        if f == "interleaved_text_audio":
            assert bool((tidx >= 0).any()) and not bool(w.any()), f"{f}: its history speech must carry no audio loss"
            continue
        codes, _ = jax.jit(task.model.audio_codes)(params, state, row["speech_mels"], row["speech_mel_lengths"])
        codes = np.asarray(codes[0])
        pos = np.flatnonzero((np.asarray(w[0]) > 0) & (np.asarray(tidx[0]) >= 0) & (np.asarray(end[0]) == 0))
        assert len(pos), f"{f}: no trained speech frame"
        p, j = int(pos[0]), int(tidx[0, pos[0]])
        other = next(k for k in range(codes.shape[0]) if not np.array_equal(codes[k], codes[j]))
        d = _max_diff(grads(dict(row, speech_target_index=tidx.at[0, p].set(other))), base[i])
        print(f"{name} {f}: one trained speech target moved from frame {j} to {other}, max gradient change {d:.3e}")
        assert d > 0, f"{f}: the trained speech target at position {p} does not reach the gradient"
