"""omni_jax/tasks/omni.py end to end: start from a release-format checkpoint, train two 1.5
stages with their frozen sets, evaluate on the held-out split."""

import json
import os

import jax
import numpy as np

from configs.omni15 import pipeline
from omni_jax import sharding as shd
from omni_jax.convert.omni import save_release
from omni_jax.tasks.omni import OmniTask
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train.trainer import train


def test_release_checkpoint_to_two_stages_and_evaluation(tmp_path):
    c = pipeline.get_config("test")
    c.stage_order = ("image_audio_text_1", "sft_2")  # both keep the LLM frozen
    task = OmniTask(c)
    params = jax.device_get(shd.unbox(jax.jit(task.init)(jax.random.PRNGKey(7))))
    state = jax.device_get(shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(8))))
    save_release(str(tmp_path / "release"), params, state, task.model_cfg, dtype=None)
    c.init.checkpoint = str(tmp_path / "release")
    r = train(c, str(tmp_path / "run"))
    assert r["status"] == "done" and r["step"] == 4
    ev = json.load(open(tmp_path / "run" / "eval.json"))
    assert {"image_qa", "asr", "speech_qa"} <= set(ev) and 0.0 <= ev["image_qa"]["accuracy"] <= 1.0
    assert "char_error_rate" in ev["asr"] and os.path.exists(tmp_path / "run" / "eval" / "results.json")
    ck = Checkpointer(str(tmp_path / "run" / "checkpoints"))
    from omni_jax.train.checkpoint import ocp
    final = ck._mgr.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same(final["params"]["llm"], params["llm"])  # imported, then frozen in both stages
    assert same(final["params"]["visual"], params["visual"])
    assert not same(final["params"]["audio_head"], params["audio_head"])  # trained in both stages
    assert same(final["model_state"], state)  # the codebooks are frozen outside the tokenizer stage
