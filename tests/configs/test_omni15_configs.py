"""configs/omni15: every stage of ARCHITECTURE.md 1.8 trains exactly the published parts.

Checked on abstract trees (jax.eval_shape), so the 7b configs cost no memory."""

import pytest
from flax import traverse_util

from configs import common
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


def _trained(name, tree):
    """TRAINED[name] for a stage or a curriculum block (its stage's parts), plus the tokenizer's
    training-only CTC head where the tree has one (tiny: stages.TINY_TOKENIZER_CTC)."""
    ctc = {"audio_ctc_head"} if name == "audio_tokenizer" and "audio_ctc_head" in tree else set()
    return TRAINED[stages.BLOCKS.get(name, name)] | ctc


def _union(config):
    tasks = StageTasks(config, list(config.stage_order))
    trees = [(type(t).__name__, step_lib.abstract_boxed(t)[0]) for t in tasks.unique]
    return shd.unbox(union_trees(trees))


_TREES: dict = {}


def _pipeline_tree(size):
    """The union parameter tree of every task of the `size` pipeline (computed once per size)."""
    if size not in _TREES:
        _TREES[size] = _union(pipeline.get_config(size))
    return _TREES[size]


@pytest.mark.parametrize("size", ["test", "tiny", "7b"])
def test_every_stage_trains_exactly_the_published_parts(size):
    c = pipeline.get_config(size)
    tree = _pipeline_tree(size)
    assert set(tree) >= {"llm", "visual", "visual_bridge", "audio_encoder", "audio_bridge", "audio_decoder",
                         "audio_embed", "audio_head", "flow_matching", "vocoder"}
    for name in c.stage_order:
        st = stage_from_config(name, c.stages[name])
        labels = traverse_util.flatten_dict(assign_groups(tree, st.rules, name))  # exactly one rule each
        trained = {k[0] for k, g in labels.items() if g != FROZEN}
        assert trained == _trained(name, tree), name
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


def test_the_tokenizer_ctc_head_trains_in_its_stage_only():
    """loss.ctc > 0 adds the training-only `audio_ctc_head`: the tokenizer stage trains it with the
    rest of the audio tokenizer, every other stage freezes it; 0 (the default) adds nothing."""
    c = pipeline.get_config("test")
    c.stages.audio_tokenizer.task_config.loss.ctc = 1.0
    tree = _union(c)
    assert "audio_ctc_head" in tree and "audio_ctc_head" not in _pipeline_tree("test")
    for name in c.stage_order:
        labels = traverse_util.flatten_dict(assign_groups(tree, stage_from_config(name, c.stages[name]).rules, name))
        head = {g for k, g in labels.items() if k[0] == "audio_ctc_head"}
        assert head == ({"audio"} if name == "audio_tokenizer" else {FROZEN}), name


# ARCHITECTURE.md 1.8 per stage: group -> (the components it trains, the 7b learning rate).
# Published: image_text_1/2, image_audio_text_1/2, omni_pretrain. Not published (our choice, see
# configs/omni15/stages.py): text_pretrain (the release starts from Qwen2.5), the tokenizer,
# flow-matching and vocoder stages (CosyVoice HiFT: 2e-4) and both SFT stages.
GROUPS = {
    "text_pretrain": {"llm": ({"llm"}, 1e-4)},
    "audio_tokenizer": {"audio": ({"audio_encoder", "audio_bridge", "audio_decoder", "audio_text_adapter"}, 2e-4)},
    "flow_matching": {"fm": ({"flow_matching"}, 2e-4)},
    "vocoder": {"voc": ({"vocoder"}, 2e-4)},
    "image_text_1": {"bridge": ({"visual_bridge"}, 1e-3)},
    "image_text_2": {"llm": ({"llm", "visual_bridge"}, 1e-5), "vision": ({"visual"}, 1e-6)},
    "image_audio_text_1": {"audio": ({"audio_embed", "audio_head"}, 1e-4)},
    "image_audio_text_2": {"all": ({"llm", "visual_bridge", "audio_embed", "audio_head"}, 1e-5)},
    "omni_pretrain": {"all": ({"llm", "visual_bridge", "audio_embed", "audio_head"}, 4e-6)},
    "sft_1": {"sft": ({"visual", "visual_bridge", "audio_embed", "llm"}, 1e-5)},
    "sft_2": {"speech": ({"audio_embed", "audio_head"}, 1e-5)},
}
def _expected_lr(name, group, size):
    lr = GROUPS[name][group][1]
    if size == "7b":
        return lr
    if name == "image_text_2":
        return 2e-3  # tiny: the rate at which the LLM learns to read the picture (stages.TINY_IMAGE_TEXT_2)
    if name == "image_audio_text_2":
        return 2e-3  # tiny: stages.TINY_IMAGE_AUDIO_TEXT_2_LR
    return min(lr * 30.0, 3e-3)  # tiny: LR_SCALE 30, LR_CAP 3e-3


def test_the_stage_table_names_every_stage():
    assert set(GROUPS) == set(stages.STAGES) == set(TRAINED)
    for name, groups in GROUPS.items():
        assert set().union(*(comps for comps, _ in groups.values())) == TRAINED[name], name


@pytest.mark.parametrize("size", ["tiny", "7b"])
@pytest.mark.parametrize("name", sorted(stages.STAGES))
def test_single_stage_configs_train_the_published_groups_at_the_published_rates(name, size):
    """Each stage's own config (configs/omni15/<stage>.py; text_pretrain has none, it only runs
    inside the from-scratch pipelines) equals its pipeline entry; over the full parameter tree its
    rules give every parameter exactly one group, each group trains exactly its components at the
    stage's learning rate, everything else is frozen."""
    import importlib
    import os

    module = os.path.join(os.path.dirname(stages.__file__), f"{name}.py")
    if name == "text_pretrain":
        assert not os.path.exists(module)
        c = stages.single_stage(name, size, steps=200)
    else:
        c = importlib.import_module(f"configs.omni15.{name}").get_config(size)
    assert c.stage_order == (name,) and c.stages[name].steps > 0 and c.train.steps == c.stages[name].steps
    ref = pipeline.get_config(size)
    if name not in ref.stages:  # 7b: no text pre-training, the vocoder ships pretrained (0 steps)
        stages.STAGES[name](ref, 1)
        ref.stages[name].eval_every = -1  # what configs/common.py `pipeline` gives each of its stages
    mine, theirs = c.stages[name].to_dict(), ref.stages[name].to_dict()
    mine.pop("steps"), theirs.pop("steps")
    if name == "audio_tokenizer":  # its quantiser warm-up is half the stage's steps
        mine["task_config"]["loss"].pop("quant_warmup_steps"), theirs["task_config"]["loss"].pop("quant_warmup_steps")
    assert mine == theirs, name

    st = stage_from_config(name, c.stages[name])
    labels = traverse_util.flatten_dict(assign_groups(_pipeline_tree(size), st.rules, name))  # exactly one rule each
    got = {}
    for k, g in labels.items():
        got.setdefault(g, set()).add(k[0])
    want = {g: comps | (_trained(name, _pipeline_tree(size)) - TRAINED[name]) for g, (comps, _) in GROUPS[name].items()}
    for g, comps in want.items():
        assert got.get(g) == comps, (name, g, got.get(g))
    frozen = got.get(FROZEN, set())
    assert frozen == set(_pipeline_tree(size)) - _trained(name, _pipeline_tree(size)) | (
        {"flow_matching"} if name == "flow_matching" else set())
    assert set(got) == set(want) | {FROZEN}
    lrs = {g: v["lr"] for g, v in c.stages[name].groups.items()}
    assert lrs == pytest.approx({g: _expected_lr(name, g, size) for g in want}, rel=1e-12), name
    assert set(c.stages[name].groups) == set(want)  # no optimizer group for frozen parts


def test_the_tiny_main_job_gives_asr_its_recipe_and_the_test_pipeline_stays_the_release_objective():
    """tiny: tokenizer CTC, the audio embedding warm-started from the tokenizer, and the ASR block
    (image_audio_text_2's groups, rules and rate on ASR rows with 15% each image and video QA rows,
    omni_pretrain's components) right after image_audio_text_2; test / small / 7b: none of the three
    (the :test pipeline and its certificate are unchanged)."""
    tiny = pipeline.get_config("tiny")
    order = list(tiny.stage_order)
    assert order[order.index("image_audio_text_2") + 1:order.index("omni_pretrain")] == ["asr_block"]
    assert tiny.stages.audio_tokenizer.task_config.loss.ctc == stages.TINY_TOKENIZER_CTC > 0
    assert tiny.stages.image_audio_text_1.warm_start == "audio_embed_from_tokenizer"
    block, parent, source = tiny.stages.asr_block, tiny.stages.image_audio_text_2, tiny.stages.omni_pretrain
    assert block.steps == 800 and set(block.data.mixture) == {"asr", "image_qa", "video_qa"}
    for name, weight in (("asr", 0.7), ("image_qa", 0.15), ("video_qa", 0.15)):  # the next stage's, reweighted
        assert block.data.mixture[name].to_dict() == dict(source.data.mixture[name].to_dict(), weight=weight)
    assert block.data.mixture.asr.to_dict() == dict(parent.data.mixture.asr.to_dict(), weight=0.7)
    assert block.rules == parent.rules and block.groups.to_dict() == parent.groups.to_dict()
    assert set(block.task_config.modalities) == {"audio", "vision"}
    for size in ("test", "small", "7b"):
        c = pipeline.get_config(size)
        assert "asr_block" not in c.stage_order, size
        assert c.stages.audio_tokenizer.task_config.loss.ctc == 0.0, size
        assert not c.stages.image_audio_text_1.warm_start, size
    with pytest.raises(ValueError, match="asr_block is a curriculum block of the from-scratch sizes"):
        stages.asr_block(stages.base("7b"), 10)


def test_the_tiny_stages_after_the_asr_block_keep_asr_rows():
    """tiny: omni_pretrain, sft_1 and sft_2 carry ASR rows at TINY_ASR_ROWS (sft_2: sft_1's ASR
    component; every other component as published); test / small / 7b: the published mixtures."""
    from omni_jax.data.stage_mixtures import mixture

    assert stages.TINY_ASR_ROWS == {"omni_pretrain": 0.25, "sft_1": 1.0, "sft_2": 0.3}
    tiny = pipeline.get_config("tiny")
    for name, weight in stages.TINY_ASR_ROWS.items():
        published = mixture(name, common.dataset_config("tiny"))
        mix = tiny.stages[name].data.mixture.to_dict()
        assert mix.pop("asr") == dict(mixture("sft_1", common.dataset_config("tiny"))["asr"], weight=weight), name
        published.pop("asr", None)
        assert mix == published, name
    assert set(tiny.stages.sft_2.task_config.modalities) == {"audio", "speech"}
    assert tiny.stages.sft_2.rules == pipeline.get_config("test").stages.sft_2.rules  # still audio_embed + audio_head
    for size in ("test", "small", "7b"):
        c = pipeline.get_config(size)
        for name in stages.TINY_ASR_ROWS:
            assert c.stages[name].data.mixture.to_dict() == mixture(name, common.dataset_config(size)), (size, name)


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
