"""The end-of-run report (omni_jax/tasks/eval_report.py) and the periodic evaluation (trainer
`_PeriodicEval`): a tiny two-stage run of the 1.5 pipeline's `:test` size writes
<workdir>/eval/report.md with the held-out table, examples and PNG plots, TensorBoard events with
image and audio summaries, and metrics.jsonl lines with the evaluation numbers, periodic ones
exactly at the configured steps."""

import json
import os
import re
import struct

import jax
import numpy as np
import pytest

from configs.omni15 import pipeline
from omni_jax.tasks import omni_eval
from omni_jax.train.metrics import read_metrics

pytestmark = pytest.mark.xdist_group("eval_report_run")  # tests/conftest.py: one worker builds the run

PNG = b"\x89PNG\r\n\x1a\n"


def _tb_events(logdir):
    """Every Event of the TFRecord event files under `logdir` (tensorboardX's protos, no TensorFlow)."""
    from tensorboardX.proto import event_pb2

    events = []
    for name in sorted(os.listdir(logdir)):
        data = open(os.path.join(logdir, name), "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            e = event_pb2.Event()
            e.ParseFromString(data[i + 12:i + 12 + n])
            events.append(e)
            i += 12 + n + 4
    return events


@pytest.fixture(scope="module")
def run(eval_report_run):
    """tests/conftest.py `eval_report_run` (session-wide: notebooks/omni_tour.ipynb loads the same run)."""
    return eval_report_run


def test_report_has_the_table_examples_and_plots(run):
    c, workdir, result, _ = run
    assert result["status"] == "done" and result["step"] == 4
    ev = json.load(open(workdir / "eval.json"))
    report = (workdir / "eval" / "report.md").read_text()
    print(report)
    assert report.startswith("# Held-out evaluation of `run`") and "At step 4, the end of the run." in report
    # every row of the table shows the number of eval.json, to 2 decimals
    for skill, label, value in (("image QA", "accuracy (exact match)", ev["image_qa"]["accuracy"]),
                                ("video QA", "accuracy (exact match)", ev["video_qa"]["accuracy"]),
                                ("ASR", "exact match", ev["asr"]["exact_match"]),
                                ("ASR", "character error rate", ev["asr"]["char_error_rate"]),
                                ("ASR", "word error rate", ev["asr"]["word_error_rate"]),
                                ("spoken QA", "reply text exact match", ev["speech_qa"]["text_exact_match"]),
                                ("spoken replies", "intelligibility: CER of the model's own ASR of its spoken reply "
                                 "vs the reply text", ev["speech_qa"]["intelligibility_cer"])):
        assert f"| {skill} | {label} | {value:.2f} |" in report, (skill, label)
    replies = ev["speech_qa"]["replies"]  # every question's text reply; the first SPOKEN_REPLIES spoken
    assert len(replies) == ev["speech_qa"]["samples"] == c.evaluate.num_samples
    spoken = replies[:omni_eval.SPOKEN_REPLIES]
    assert spoken and all(x["wav"] and "heard" in x for x in spoken)
    assert not any(x["wav"] for x in replies[omni_eval.SPOKEN_REPLIES:])
    cers = [omni_eval.char_error_rate(x["heard"], x["text"]) for x in spoken]
    assert ev["speech_qa"]["intelligibility_cer"] == pytest.approx(np.mean(cers), abs=1e-12)
    # the control: the same ASR of each reply's samples shuffled in time, scored against the reply text
    control = [omni_eval.char_error_rate(x["heard_shuffled"], x["text"]) for x in spoken]
    assert ev["speech_qa"]["intelligibility_cer_shuffled"] == pytest.approx(np.mean(control), abs=1e-12)
    assert f"| spoken replies | control: the same ASR of each reply's samples in random order vs the reply text " \
           f"(the ASR's prior) | {np.mean(control):.2f} | {len(spoken)} |" in report
    # the swapped control: each transcript against the other spoken replies' texts where they differ
    omni_eval.swapped_control(spoken_copy := [dict(x) for x in spoken], list(range(len(spoken))))
    swapped = [x["intelligibility_cer_swapped"] for x in spoken_copy if "intelligibility_cer_swapped" in x]
    if swapped:
        assert ev["speech_qa"]["intelligibility_cer_swapped"] == pytest.approx(np.mean(swapped), abs=1e-12)
        assert f"| spoken replies | control: the same transcripts vs the other spoken replies' texts (where they " \
               f"differ) | {np.mean(swapped):.2f} | {len(swapped)} |" in report
    else:  # every spoken reply of the tiny run says the same: no swapped control, and the report says why
        assert "intelligibility_cer_swapped" not in ev["speech_qa"]
        assert "Every spoken reply has the same text" in report
    assert "### image QA" in report and "### spoken QA" in report and "<C_A>" in report  # example prompts
    for name in ("loss_curves.png", "accuracy_vs_step.png", "speech_reply_0_mel.png"):
        data = (workdir / "eval" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
        assert f"]({name})" in report
    assert (workdir / "eval" / "speech_reference_0.wav").stat().st_size > 44


def test_tensorboard_has_the_plots_replies_and_numbers(run):
    _, workdir, result, _ = run
    events = _tb_events(workdir / "tensorboard")
    values = [(e.step, v) for e in events for v in e.summary.value]
    images = {v.tag for _, v in values if v.HasField("image")}
    audio = {v.tag: v.audio for _, v in values if v.HasField("audio")}
    assert {"report/loss_curves", "report/accuracy_vs_step", "report/speech_reply_0_mel"} <= images
    assert audio["eval/speech_reply_0"].sample_rate == 24000 and audio["eval/speech_reference_0"].sample_rate == 16000
    assert audio["eval/speech_reply_0"].encoded_audio_string.startswith(b"RIFF")  # a WAV, playable in TensorBoard
    scalars = {(s, v.tag) for s, v in values if v.HasField("simple_value") or v.tag.startswith("eval/")}
    assert {(1, "eval/image_qa/accuracy"), (2, "eval/asr/char_error_rate"), (4, "eval/image_qa/accuracy"),
            (4, "eval/speech_qa/intelligibility_cer")} <= scalars


def test_metrics_jsonl_has_periodic_and_final_evaluations(run):
    c, workdir, result, calls = run
    rows = [r for r in read_metrics(str(workdir)) if r.get("kind") == "eval"]
    # every step of image_text_1 (every_steps=1), none of sft_2 (eval_every=0), then the final one
    assert [(r["step"], r["stage"], bool(r.get("final"))) for r in rows] == [
        (1, "image_text_1", False), (2, "image_text_1", False), (4, "sft_2", True)]
    ev = json.load(open(workdir / "eval.json"))
    final = rows[-1]
    assert final["eval/image_qa/accuracy"] == ev["image_qa"]["accuracy"]
    assert final["eval/asr/char_error_rate"] == ev["asr"]["char_error_rate"]
    assert final["eval/speech_qa/intelligibility_cer"] == ev["speech_qa"]["intelligibility_cer"]
    for r in rows[:2]:  # the periodic ones: periodic_samples=1 per set, text scores only
        assert {"eval/image_qa/accuracy", "eval/video_qa/accuracy", "eval/asr/exact_match",
                "eval/speech_qa/text_exact_match"} <= set(r) and "eval/speech_qa/intelligibility_cer" not in r
        assert r["eval/image_qa/samples"] == 1
    # the training lines are untouched: one per step
    assert [r["step"] for r in read_metrics(str(workdir)) if r.get("kind") != "eval"] == [1, 2, 3, 4]
    # generate calls: 2 periodic x 4 sets of 1 sample, then the final 4 sets and one transcription batch
    assert calls[:8] == [(1, False), (1, False), (1, False), (1, True)] * 2 and calls[-1][1] is False


def test_transcribe_resamples_the_reply_to_16k_and_uses_the_asr_prompt(monkeypatch):
    """transcribe(): a 24 kHz waveform of n samples reaches the model as round(n * 2 / 3) samples at
    16 kHz (the audio placeholder count of that many samples), after the ASR prompt's layout."""
    from omni_jax import sharding as shd
    from omni_jax.data import media
    from omni_jax.tasks.omni import OmniTask
    from tests.reference_models import random_params

    task = OmniTask(pipeline.get_config("test"))
    params = random_params(task, 5)
    state = jax.device_get(shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(6))))
    tok = omni_eval._pipeline(task, {"dataset": "omni_speech/shapes_tiny", "split": "test", "format": "asr",
                                     "weight": 1.0}).tokenizer
    got = []

    def fake_generate(task_, params_, samples, tok_, *, max_new, speech, **kw):
        from types import SimpleNamespace

        from omni_jax.generate.interleaved import SpecialIds

        got.extend(samples)
        ids = SpecialIds.from_tokenizer(tok_)
        return [SimpleNamespace(tokens=tok_.encode("heard"), audio_chunks=[]) for _ in samples], ids

    monkeypatch.setattr(omni_eval, "generate", fake_generate)
    n = 36000  # 1.5 s at 24 kHz
    wav = (0.3 * np.sin(np.arange(n) * 2 * np.pi * 300 / 24000)).astype(np.float32)
    assert omni_eval.transcribe(task, params, state, [wav], 24000, tok, max_new=8) == ["heard"]
    ids = got[0]["prompt_ids"]
    assert int((ids == tok.special("audio_pad")).sum()) == media.audio_token_count(24000)  # 1.5 s at 16 kHz
    text = omni_eval.readable_prompt(ids, tok)
    print(text)
    assert re.search(r"<audio_pad[^>]*>x\d+.*transcribe the speech\.<C_A>$", text.replace("\n", " "))
