"""The v1 Whisper encoder's ASR pre-training (omni_jax/tasks/omni_v1_audio_ctc.py, the from-scratch
stage `audio_encoder_pretrain` of configs/omni_v1): its rows, a loss that reads only valid frames and
labels, its errors, and a run whose later stage, inference and PyTorch export see the v1 model without
the training-only CTC head."""

import json

import jax
import numpy as np
import pytest

from configs.omni_v1 import pipeline
from omni_jax.models.omni_v1 import COMPONENTS, CTC_HEAD
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train.multitask import StageTasks
from omni_jax.train.trainer import train
from tests.reference_models import random_params

STAGE = "audio_encoder_pretrain"


def _task(**ctc):
    c = pipeline.get_config("test")
    c.stages[STAGE].task_config.ctc.update(ctc)
    return StageTasks(c, [STAGE])[STAGE]


def test_rows_are_the_speech_clips_once_per_pass_and_the_loss_reads_only_valid_frames_and_labels():
    task = _task()
    data = task.make_data(None, start_step=0, process_index=0, process_count=1)
    b = next(iter(data))
    assert b["ctc_mels"].shape == (8, 128, task.shapes.mel_frames) and b["ctc_labels"].shape == (8, 64)
    from omni_jax.data.tokenizer import make_tokenizer

    tok = make_tokenizer("byte", task.model_cfg.llm.vocab_size)
    texts = [tok.decode(r[:n]) for r, n in zip(b["ctc_labels"], b["ctc_label_lengths"])]
    assert all(t.endswith(".") and len(t) > 10 for t in texts), texts  # transcripts, no eos, no padding
    assert (b["ctc_mels"][:, :, b["ctc_mel_lengths"].max():] == 0).all()
    # a pure function of the step: a second iterator from step 0 gives the same bits
    again = next(iter(task.make_data(None, start_step=0, process_index=0, process_count=1)))
    assert all(np.array_equal(b[k], again[k]) for k in b)

    params = random_params(task, 3)
    assert set(params) == set(COMPONENTS) | {CTC_HEAD}
    loss = lambda batch: float(task.loss(params, batch, None, task.norms(batch))[0])
    base = loss(b)
    assert np.isfinite(base) and base > 0
    noisy = dict(b)
    mels, labels = b["ctc_mels"].copy(), b["ctc_labels"].copy()
    for i, (n, m) in enumerate(zip(b["ctc_mel_lengths"], b["ctc_label_lengths"])):
        mels[i, :, n:] = 7.0  # beyond the valid frames
        labels[i, m:] = 65  # beyond the transcript
    noisy.update(ctc_mels=mels, ctc_labels=labels)
    assert loss(noisy) == base
    changed = dict(b, ctc_labels=b["ctc_labels"].copy())
    changed["ctc_labels"][0, 0] = changed["ctc_labels"][0, 0] + 1  # a trained label
    assert loss(changed) != base


def test_the_mel_cache_gives_the_same_rows_and_decodes_each_record_once(monkeypatch):
    from omni_jax.data import media_io
    from omni_jax.tasks.omni_v1_audio_ctc import ctc_rows

    decoded = []
    features = media_io.AudioItem.features
    monkeypatch.setattr(media_io.AudioItem, "features", lambda self, n: decoded.append(1) or features(self, n))
    c = pipeline.get_config("test")
    ctc = dict(c.stages[STAGE].task_config.ctc.to_dict(), seed=0, max_labels=64)
    uncached = ctc_rows(c, dict(ctc, cache_mib=0))
    off = uncached(0, 12)
    uncached(0, 12)
    assert len(decoded) == 24  # no cache: every call decodes again
    decoded.clear()
    cached = ctc_rows(c, dict(ctc, cache_mib=64))
    first, again = cached(0, 12), cached(0, 12)
    assert len(decoded) == 12  # the second call read every record from the cache
    assert all(np.array_equal(off[k], first[k]) and np.array_equal(off[k], again[k]) for k in off)


def test_bad_config_and_records_name_the_fix():
    with pytest.raises(ValueError, match=r"config.ctc: unknown key\(s\) \['labels'\]"):
        _task(labels=3)
    with pytest.raises(ValueError, match=r"config.ctc.cache_mib=-1: must be >= 0"):
        _task(cache_mib=-1)
    task = _task(max_labels=8)
    with pytest.raises(ValueError, match=r"transcript is \d+ tokens, the limit is config.ctc.max_labels=8"):
        next(iter(task.make_data(None, start_step=0, process_index=0, process_count=1)))
    with pytest.raises(ValueError, match="needs config.ctc.dataset"):
        _task(dataset="")


def test_stage_trains_the_encoder_and_head_and_the_run_exports_without_the_head(tmp_path):
    c = pipeline.get_config("test")
    c.stage_order = (STAGE, "audio_language")
    r = train(c, str(tmp_path))
    assert r["status"] == "done" and r["step"] == 4
    assert "char_error_rate" in json.load(open(tmp_path / "eval.json"))["asr"]  # the main task's evaluation
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [m["stage"] for m in metrics if "ctc_loss" in m] == [STAGE, STAGE]
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    first, last = ck.restore_tree(2)["params"], ck.restore_tree(4)["params"]
    ck.close()
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same(first[CTC_HEAD], last[CTC_HEAD])  # frozen after its stage
    assert not same(first["audio_encoder"], last["audio_encoder"])  # audio_language trains the encoder

    from omni_jax.convert.export_torch import export_workdir
    from omni_jax.convert.safetensors_io import load_state_dict
    from omni_jax.generate.omni_infer import OmniRunner

    runner = OmniRunner.load(str(tmp_path))
    assert CTC_HEAD not in runner.params and set(runner.params) == set(COMPONENTS)
    export_workdir(str(tmp_path), str(tmp_path / "torch"))
    names = list(load_state_dict(str(tmp_path / "torch")))
    assert names and not any("ctc" in n for n in names)
