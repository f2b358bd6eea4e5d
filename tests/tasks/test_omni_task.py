"""omni_jax/tasks/omni.py end to end: start from a release-format checkpoint, train two 1.5
stages with their frozen sets, evaluate on the held-out split; then launch/infer.py on both the
release directory (image + video + audio + text in, text and speech out) and the trained workdir."""

import json
import os

import jax
import numpy as np

from configs.omni15 import pipeline
from omni_jax import sharding as shd
from omni_jax.convert.omni import save_release
from omni_jax.tasks.omni import OmniTask
from tests.reference_models import random_params
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train.trainer import train


def test_release_checkpoint_to_two_stages_and_evaluation(tmp_path):
    c = pipeline.get_config("test")
    c.stage_order = ("image_audio_text_1", "sft_2")  # both keep the LLM frozen
    task = OmniTask(c)
    params = random_params(task, 7)
    state = jax.device_get(shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(8))))
    save_release(str(tmp_path / "release"), params, state, task.model_cfg, dtype=None)
    c.init.checkpoint = str(tmp_path / "release")
    r = train(c, str(tmp_path / "run"))
    assert r["status"] == "done" and r["step"] == 4
    ev = json.load(open(tmp_path / "run" / "eval.json"))
    assert {"image_qa", "asr", "speech_qa"} <= set(ev) and 0.0 <= ev["image_qa"]["accuracy"] <= 1.0
    # every evaluated sample is listed here (2 <= 5): the accuracy is their exact-match rate
    qa, norm = ev["image_qa"], lambda s: " ".join(s.lower().replace(".", " ").replace(",", " ").split())
    assert len(qa["examples"]) == c.evaluate.num_samples == 2
    assert qa["accuracy"] == np.mean([norm(e["hypothesis"]) == norm(e["reference"]) for e in qa["examples"]])
    assert "char_error_rate" in ev["asr"] and os.path.exists(tmp_path / "run" / "eval" / "results.json")
    ck = Checkpointer(str(tmp_path / "run" / "checkpoints"))
    final = ck.restore_tree(4)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same(final["params"]["llm"], params["llm"])  # imported, then frozen in both stages
    assert same(final["params"]["visual"], params["visual"])
    assert not same(final["params"]["audio_head"], params["audio_head"])  # trained in both stages
    assert same(final["model_state"], state)  # the codebooks are frozen outside the tokenizer stage

    # inference from the trained workdir (launch/infer.py), greedy text, a spoken question only (no vision fields)
    from launch.infer import run

    m = _media(tmp_path)
    r = run(str(tmp_path / "run"), audio=[str(m / "question.wav")], greedy=True, max_new_tokens=8)
    assert r["prompt_tokens"] > 10 and isinstance(r["text"], str) and "wav" not in r


def test_evaluation_scores_known_answers(tmp_path, monkeypatch):
    """omni_eval.evaluate with a stand-in model whose answers are known: the reference for even
    samples, a wrong answer (image and video QA) or the reference with one letter changed (ASR) for
    odd ones. Accuracy / exact match must be exactly 1/2 and the CER exactly the hand-computed one."""
    from types import SimpleNamespace

    from omni_jax.generate.interleaved import SpecialIds
    from omni_jax.tasks import omni_eval

    c = pipeline.get_config("test")
    c.evaluate.update(num_samples=4, speech_reply=False)
    task = OmniTask(c)
    params = random_params(task, 5)
    state = jax.device_get(shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(6))))

    def norm(s):  # written here from the metric's definition: case, '.' and ',' ignored
        return " ".join(s.lower().replace(".", " ").replace(",", " ").split())

    def one_letter_off(ref):
        i = next(k for k, ch in enumerate(ref) if ch.isalpha())
        return ref[:i] + ("q" if ref[i].lower() != "q" else "z") + ref[i + 1:]

    seen = []

    def fake_generate(task_, params_, samples, tok, *, max_new, speech, **kw):
        ids = SpecialIds.from_tokenizer(tok)
        name = ("image_qa", "video_qa", "asr")[len(seen)]  # the order evaluate() scores the sets in
        seen.append([s["reference"] for s in samples])
        rows = []
        for i, s in enumerate(samples):
            text = s["reference"] if i % 2 == 0 else ("no answer" if name != "asr" else one_letter_off(s["reference"]))
            rows.append(SimpleNamespace(tokens=tok.encode(text) + [ids.eos], audio_chunks=[]))
        return rows, ids

    monkeypatch.setattr(omni_eval, "generate", fake_generate)
    res = omni_eval.evaluate(task, params, state, str(tmp_path))
    qa_refs, video_refs, asr_refs = seen
    assert len(qa_refs) == len(video_refs) == len(asr_refs) == 4
    assert all(norm(r) != "no answer" for r in qa_refs + video_refs)
    assert res["image_qa"]["accuracy"] == res["video_qa"]["accuracy"] == res["asr"]["exact_match"] == 0.5
    cer = sum(1 / len(norm(r)) for r in asr_refs[1::2]) / 4  # one substitution in each odd transcript
    print(f"ASR CER with one letter changed in 2 of 4 transcripts: {res['asr']['char_error_rate']:.6f} (hand: {cer:.6f})")
    assert abs(res["asr"]["char_error_rate"] - cer) < 1e-12
    ex = res["image_qa"]["examples"][1]
    assert (ex["hypothesis"], ex["reference"]) == ("no answer", qa_refs[1]) and "<C_A>" in ex["prompt"]


def _media(d):
    from PIL import Image

    from omni_jax.data.audio_features import encode_wav
    from omni_jax.data.speech_synth import synthesize

    Image.new("RGB", (84, 56), (200, 30, 30)).save(d / "image.png")
    for i in range(3):
        Image.new("RGB", (56, 56), (40 * i, 100, 200)).save(d / f"frame{i}.jpg")
    (d / "question.wav").write_bytes(encode_wav(synthesize("where is the red circle?")))
    return d


def test_inference_from_a_release_directory(tmp_path):
    import pytest
    from absl import app

    from launch.infer import run

    c = pipeline.get_config("test")
    task = OmniTask(c)
    params = random_params(task, 3)
    state = jax.device_get(shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(4))))
    save_release(str(tmp_path / "release"), params, state, task.model_cfg, dtype=None)
    m = _media(tmp_path)
    kw = dict(text="what is in the picture?", images=[str(m / "image.png")], audio=[str(m / "question.wav")],
              video=",".join(str(m / f"frame{i}.jpg") for i in range(3)), max_new_tokens=64)
    # the demo's chunking: after 50 text tokens the loop starts speaking, so a random model speaks too
    r = run(str(tmp_path / "release"), speech=True, out=str(tmp_path / "reply.wav"), **kw)
    assert r["prompt_tokens"] > 20 and r["audio_frames"] > 0 and os.path.getsize(tmp_path / "reply.wav") > 44
    assert r["seconds"] == pytest.approx(r["audio_frames"] * 0.08, rel=0.3)  # 12.5 Hz codes -> 24 kHz
    with pytest.raises(app.UsageError, match="give the model something"):
        run(str(tmp_path / "release"))
    with pytest.raises(app.UsageError, match=r"--image=.*nope.png: no such file"):
        run(str(tmp_path / "release"), images=[str(tmp_path / "nope.png")])
