"""omni_jax/tasks/omni_v1.py through the trainer: two v1 stages with their frozen sets (the
projector on captions, then the audio branch on ASR with the LLM frozen), then the held-out
evaluation (image QA and ASR; v1 does not speak)."""

import json

import jax
import numpy as np

from configs.omni_v1 import pipeline
from omni_jax.train.checkpoint import Checkpointer, ocp
from omni_jax.train.trainer import train


def test_two_v1_stages_and_evaluation(tmp_path):
    c = pipeline.get_config("test")
    c.stage_order = ("image_language_1", "audio_language")
    r = train(c, str(tmp_path))
    assert r["status"] == "done" and r["step"] == 4
    ev = json.load(open(tmp_path / "eval.json"))
    assert {"image_qa", "asr"} <= set(ev) and "speech_qa" not in ev and "char_error_rate" in ev["asr"]
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    restore = lambda s: ck._mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    first, last = restore(2), restore(4)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    for k in ("llm", "siglip", "v1_video_projector"):  # frozen in both stages
        assert same(first["params"][k], last["params"][k]), k
    assert same(first["params"]["v1_projector"], last["params"]["v1_projector"])  # frozen in the second
    assert not same(first["params"]["audio_encoder"], last["params"]["audio_encoder"])  # trained in the second
    assert not same(first["params"]["v1_audio_projector"], last["params"]["v1_audio_projector"])
