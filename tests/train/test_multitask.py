"""omni_jax/train/multitask.py + trainer: stages with different tasks over one parameter tree."""

import jax
import numpy as np
import pytest

from configs import audio_tokenizer_tiny, backbone_tiny
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train.metrics import read_metrics
from omni_jax.train.trainer import train


def _config():
    tok = audio_tokenizer_tiny.get_config("runlocal")
    c = backbone_tiny.get_config("runlocal")  # main task: lm on the text corpus
    c.model.audio = tok.model.audio
    c.model.llm = tok.model.llm  # the same tiny LLM for both tasks
    c.stages.pretrain.steps = 2
    c.stages.pretrain.rules = [(r"llm/.*", "llm"), (r"audio_.*", "frozen")]
    c.stages.tokenizer = dict(
        steps=2, task="audio_tokenizer",
        task_config=dict(data=tok.data.to_dict(), loss=tok.loss.to_dict()),
        rules=[(r"llm/.*", "frozen"), (r"audio_.*", "audio")],
        groups=dict(audio=dict(lr=3e-3, schedule="constant")))
    c.stage_order = ("pretrain", "tokenizer")
    return c


def _params(workdir, step):
    ck = Checkpointer(str(workdir / "checkpoints"))
    return ck.restore_tree(step)


def test_stages_of_different_tasks_share_one_tree(tmp_path):
    r = train(_config(), str(tmp_path))
    assert r["status"] == "done" and r["step"] == 4
    m = read_metrics(str(tmp_path))
    assert [x["stage"] for x in m] == ["pretrain"] * 2 + ["tokenizer"] * 2
    assert "reconstruction" in m[-1] and "accuracy" in m[0]
    s2, s4 = _params(tmp_path, 2), _params(tmp_path, 4)
    assert set(s4["params"]) == {"llm", "audio_encoder", "audio_bridge", "audio_decoder", "audio_text_adapter"}
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same(s2["params"]["llm"], s4["params"]["llm"])  # frozen in the tokenizer stage
    assert not same(s2["params"]["audio_encoder"], s4["params"]["audio_encoder"])
    assert not same(s2["model_state"], s4["model_state"])  # the EMA codebooks moved
    assert Checkpointer(str(tmp_path / "checkpoints")).read_meta(4)["task"] == "audio_tokenizer"


def test_tasks_that_disagree_on_a_component_are_named(tmp_path):
    c = _config()
    c.stages.tokenizer.task_config.model = c.model.to_dict()
    c.stages.tokenizer.task_config.model["llm"]["intermediate_size"] = 128
    with pytest.raises(ValueError, match=r"component 'llm' differs between task LanguageModelTask and task AudioTokenizerTask"):
        train(c, str(tmp_path))
