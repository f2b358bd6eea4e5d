"""omni_jax/tasks/omni_v1.py through the trainer: two v1 stages with their frozen sets (the
projector on captions, then the audio branch on ASR with the LLM frozen), then the held-out
evaluation (image QA and ASR; v1 does not speak)."""

import json

import jax
import numpy as np

from configs.omni_v1 import pipeline
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train.trainer import train


def test_two_v1_stages_and_evaluation(tmp_path):
    c = pipeline.get_config("test")
    c.stage_order = ("image_language_1", "audio_language")
    r = train(c, str(tmp_path))
    assert r["status"] == "done" and r["step"] == 4
    ev = json.load(open(tmp_path / "eval.json"))
    assert {"image_qa", "asr"} <= set(ev) and "speech_qa" not in ev and "char_error_rate" in ev["asr"]
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    restore = lambda s: ck.restore_tree(s)
    first, last = restore(2), restore(4)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    for k in ("llm", "siglip", "v1_video_projector"):  # frozen in both stages
        assert same(first["params"][k], last["params"][k]), k
    assert same(first["params"]["v1_projector"], last["params"]["v1_projector"])  # frozen in the second
    assert not same(first["params"]["audio_encoder"], last["params"]["audio_encoder"])  # trained in the second
    assert not same(first["params"]["v1_audio_projector"], last["params"]["v1_audio_projector"])

    # inference from the workdir (launch/infer.py): image + audio + text in, text out; v1 cannot speak
    import pytest
    from PIL import Image

    from launch.infer import run
    from omni_jax.data.audio_features import encode_wav
    from omni_jax.data.speech_synth import synthesize

    Image.new("RGB", (56, 112), (30, 30, 200)).save(tmp_path / "image.png")
    (tmp_path / "q.wav").write_bytes(encode_wav(synthesize("the blue square.")))
    r = run(str(tmp_path), text="what is it?", images=[str(tmp_path / "image.png")], audio=[str(tmp_path / "q.wav")],
            greedy=True, max_new_tokens=8)
    assert r["prompt_tokens"] > 10 and "wav" not in r
    with pytest.raises(ValueError, match="no speech output"):
        run(str(tmp_path), text="hi", speech=True)


def test_text_only_models_cannot_generate_speech():
    import pytest

    from omni_jax.generate.interleaved import GenerationConfig, SpecialIds, SpeechModels, check_setup
    from omni_jax.models.qwen2 import Qwen2Config, Qwen2LM

    llm = Qwen2LM(Qwen2Config(vocab_size=384, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                              intermediate_size=64))
    ids = SpecialIds(eos=1, audiogen_start=2, audiogen_end=3, audio_pad=4)
    check_setup(SpeechModels(llm), ids, GenerationConfig(speech=False))  # text generation is fine
    with pytest.raises(ValueError, match="needs the audio embedding and the audio head"):
        check_setup(SpeechModels(llm), ids, GenerationConfig(speech=True))
