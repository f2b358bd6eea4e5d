"""Inference on a release-format directory follows the release's audio rules (omni_jax/generate/
omni_infer.py `release_audio_rules`): a 7.5 s question is ONE chunk (3000-frame buffer, 751 valid
frames), not two 6 s pieces of the tiny presets' 600-frame buffer, and its codes equal a
single-chunk encoding of the whole clip; a 35 s clip is cut at 30 s like the release cuts it."""

import json

import jax
import numpy as np
import pytest

from configs.omni15 import pipeline
from omni_jax import sharding as shd
from omni_jax.convert.omni import save_release
from omni_jax.data import media
from omni_jax.data.audio_features import encode_wav, release_chunk_features, decode_wav
from omni_jax.generate.omni_infer import OmniRunner, Prompt, release_audio_rules
from omni_jax.models.release_inputs import valid_codes
from omni_jax.tasks.omni import OmniTask
from tests.reference_models import random_params


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    d = tmp_path_factory.mktemp("release")
    task = OmniTask(pipeline.get_config("test"))
    params = random_params(task, 3, scale=0.05)
    rs = np.random.RandomState(4)
    state = jax.tree.map(lambda a: (0.05 * rs.randn(*a.shape)).astype(a.dtype),  # codewords on the features' scale
                         shd.unbox(jax.eval_shape(task.init_state, jax.ShapeDtypeStruct((2,), np.uint32))))
    save_release(str(d), params, state, task.model_cfg, dtype=None, exclude=("vocoder",))
    assert task.config.data.shapes.mel_frames == 600  # the tiny presets' 6 s buffer the release dir must not use
    return OmniRunner.load(str(d), speech=False), str(d)


def _clip(seconds, seed=0):
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * t)) + 0.05 * np.random.RandomState(seed).randn(len(t))
    return encode_wav(x)


def _codes(runner, mels, lengths):
    m = runner.task.model
    codes, n = jax.jit(m.encode_audio)(runner.params, runner.state, np.asarray(mels), np.asarray(lengths))
    return valid_codes(codes, n)


@pytest.mark.parametrize("seconds,chunks", [(7.5, [751]), (35.0, [3000, 501])])
def test_release_directory_audio_is_chunked_as_the_release_does(runner, seconds, chunks):
    r, _ = runner
    wav = _clip(seconds)
    b = r.prompt_batch(Prompt(text="what was said?", audio=[wav]), speech=False)
    n = int(seconds * 16000)
    assert b["audio_mels"].shape[1:] == (len(chunks), 128, 3000)
    assert b["audio_mel_lengths"][0].tolist() == chunks  # min(3000, samples // 160 + 1) per 30 s chunk
    placeholders = int((b["audio_token_index"] >= 0).sum())
    assert placeholders == media.audio_token_count(n)  # the release processor's token count
    got = _codes(r, b["audio_mels"][0], b["audio_mel_lengths"][0])
    # the release's encoding: each <= 30 s piece of the clip alone, features on a 30 s buffer
    x = decode_wav(wav)
    pieces = [release_chunk_features(x[s:s + 480000]) for s in range(0, n, 480000)]
    want = _codes(r, np.stack([f for f, _ in pieces]), [v for _, v in pieces])
    assert len(got) == placeholders and np.array_equal(got, want)
    assert len(np.unique(got, axis=0)) > 10 and len(np.unique(got[:, 0])) > 3  # informative codes
    if len(chunks) == 1:  # what the 600-frame buffer did: the first 6 s alone give other codes
        six, valid = release_chunk_features(x[:96000], 96000)
        old = _codes(r, six[None], [valid])
        assert len(old) < len(got) and not np.array_equal(old, got[:len(old)])


def test_release_audio_rules_read_the_config_and_name_what_is_unsupported(runner, tmp_path):
    _, d = runner
    assert release_audio_rules(d) == (30, 3000)
    cfg = json.load(open(f"{d}/config.json"))
    cfg["audio_config"].update(split_overlap=1.0, sampling_rate=8000)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"sampling_rate=8000 \(supported: 16000\); split_overlap=1.0 \(supported: 0"):
        release_audio_rules(str(tmp_path))
