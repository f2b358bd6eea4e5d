"""configs/omni15: every stage of ARCHITECTURE.md 1.8 trains exactly the published parts.

Checked on abstract trees (jax.eval_shape), so the 7b configs cost no memory."""

import pytest
from flax import traverse_util

from configs.omni15 import pipeline, stages
from omni_jax import sharding as shd
from omni_jax.train import step as step_lib
from omni_jax.train.multitask import StageTasks, union_trees
from omni_jax.train.optimizer import FROZEN, assign_groups, stage_from_config

# ARCHITECTURE.md 1.8: the components each stage trains (everything else frozen)
TRAINED = {
    "text_pretrain": {"llm"},
    "audio_tokenizer": {"audio_encoder", "audio_bridge", "audio_decoder", "audio_text_adapter"},
    "flow_matching": {"flow_matching"},
    "vocoder": {"vocoder"},
    "image_text_1": {"visual_bridge"},
    "image_text_2": {"llm", "visual_bridge", "visual"},
    "image_audio_text_1": {"audio_embed", "audio_head"},
    "image_audio_text_2": {"llm", "visual_bridge", "audio_embed", "audio_head"},
    "omni_pretrain": {"llm", "visual_bridge", "audio_embed", "audio_head"},
    "sft_1": {"visual", "visual_bridge", "audio_embed", "llm"},
    "sft_2": {"audio_embed", "audio_head"},
}


def _union(config):
    tasks = StageTasks(config, list(config.stage_order))
    trees = [(type(t).__name__, step_lib.abstract_boxed(t)[0]) for t in tasks.unique]
    return shd.unbox(union_trees(trees))


@pytest.mark.parametrize("size", ["test", "tiny", "7b"])
def test_every_stage_trains_exactly_the_published_parts(size):
    c = pipeline.get_config(size)
    tree = _union(c)
    assert set(tree) >= {"llm", "visual", "visual_bridge", "audio_encoder", "audio_bridge", "audio_decoder",
                         "audio_embed", "audio_head", "flow_matching", "vocoder"}
    for name in c.stage_order:
        st = stage_from_config(name, c.stages[name])
        labels = traverse_util.flatten_dict(assign_groups(tree, st.rules, name))  # exactly one rule each
        trained = {k[0] for k, g in labels.items() if g != FROZEN}
        assert trained == TRAINED[name], name
        partly = {k[0] for k, g in labels.items() if g == FROZEN} & trained
        assert partly <= {"flow_matching"}, name  # only the unused prenet position table


def test_7b_pipeline_uses_the_published_learning_rates():
    c = pipeline.get_config("7b")
    lr = {n: {g: v["lr"] for g, v in c.stages[n].groups.items()} for n in c.stage_order}
    assert lr["image_text_1"] == {"bridge": 1e-3}
    assert lr["image_text_2"] == {"llm": 1e-5, "vision": 1e-6}
    assert lr["image_audio_text_1"] == {"audio": 1e-4}
    assert lr["image_audio_text_2"] == {"all": 1e-5} and lr["omni_pretrain"] == {"all": 4e-6}
    assert "text_pretrain" not in c.stage_order and "vocoder" not in c.stage_order  # pretrained Qwen2.5 / HiFT


@pytest.mark.parametrize("name", sorted(stages.STAGES))
def test_single_stage_configs_build(name):
    import importlib

    if name == "text_pretrain":
        pytest.skip("text pre-training is a pipeline stage of the from-scratch sizes only")
    c = importlib.import_module(f"configs.omni15.{name}").get_config("tiny")
    assert c.stage_order == (name,) and c.stages[name].steps > 0


def test_unknown_size_is_named():
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        pipeline.get_config("huge")


def test_stage_batches_carry_only_the_media_of_their_mixture():
    from omni_jax.data.omni_batch import TEXT_FIELDS
    from omni_jax.tasks.omni import AUDIO_FIELDS, SPEECH_FIELDS, VISION_FIELDS

    c = pipeline.get_config("test")
    tasks = StageTasks(c, list(c.stage_order))
    assert tasks["text_pretrain"].fields == TEXT_FIELDS
    assert tasks["image_text_1"].fields == TEXT_FIELDS + VISION_FIELDS
    assert tasks["image_audio_text_1"].fields == TEXT_FIELDS + AUDIO_FIELDS + SPEECH_FIELDS
    assert tasks["omni_pretrain"].fields == tasks.main.fields == TEXT_FIELDS + VISION_FIELDS + AUDIO_FIELDS + SPEECH_FIELDS
    # a stage mixture changed on the command line without its modalities is an error, never a silent drop
    c.stages.image_text_1.data.mixture["asr"] = dict(dataset="omni_speech/shapes_tiny", format="asr", weight=0.5)
    task = StageTasks(c, ["image_text_1"])["image_text_1"]
    with pytest.raises(ValueError, match=r"stage image_text_1: its data mixture uses \['audio', 'vision'\] but its "
                                         r"batches carry only \['vision'\]: set "
                                         r"config.stages.image_text_1.task_config.modalities to \['audio', 'vision'\]"):
        task.make_data(stage_from_config("image_text_1", c.stages.image_text_1), start_step=0, process_index=0,
                       process_count=1)
