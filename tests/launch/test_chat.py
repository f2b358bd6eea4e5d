"""launch/chat.py: three turns (text, a WAV question, text) on a random tiny 1.5 model, text and
a 24 kHz WAV per spoken reply, the history growing in the KV cache; bad input named."""

import os

import jax
import pytest
from absl import app


def test_three_turns(tmp_path):
    from configs.omni15 import pipeline
    from launch.chat import chat
    from omni_jax import sharding as shd
    from omni_jax.convert.omni import save_release
    from omni_jax.data.audio_features import encode_wav
    from omni_jax.data.speech_synth import synthesize
    from omni_jax.tasks.omni import OmniTask
    from tests.reference_models import random_params

    c = pipeline.get_config("test")
    task = OmniTask(c)
    params = random_params(task, 3)
    state = jax.device_get(shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(4))))
    save_release(str(tmp_path / "release"), params, state, task.model_cfg, dtype=None)
    (tmp_path / "q.wav").write_bytes(encode_wav(synthesize("where is the red circle?")))
    printed = []
    res = chat(str(tmp_path / "release"), ["hello", str(tmp_path / "q.wav"), "thanks", "", "never reached"],
               out_dir=str(tmp_path / "replies"), max_new_tokens=64, max_context=512, out=printed.append)
    assert [r["turn"] for r in res] == [1, 2, 3] and [r["input"] for r in res] == ["text", "audio", "text"]
    assert [p.split("]")[0] for p in printed] == ["[turn 1", "[turn 2", "[turn 3"]
    assert res[0]["cache_positions"] < res[1]["cache_positions"] < res[2]["cache_positions"]
    spoken = [r for r in res if "wav" in r]
    assert spoken and all(os.path.getsize(r["wav"]) > 44 for r in spoken)
    with pytest.raises(app.UsageError, match=r"--audio=.*nope.wav: no such file"):
        chat(str(tmp_path / "release"), [str(tmp_path / "nope.wav")], out_dir=str(tmp_path / "r2"))
