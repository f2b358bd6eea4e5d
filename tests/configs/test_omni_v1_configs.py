"""configs/omni_v1: every stage of ARCHITECTURE.md 2 trains exactly the parts the report names.

Checked on abstract trees (jax.eval_shape), so the 7b configs cost no memory."""

import importlib

import pytest
from flax import traverse_util

from configs.omni_v1 import pipeline, stages
from omni_jax import sharding as shd
from omni_jax.train import step as step_lib
from omni_jax.train.multitask import StageTasks, union_trees
from omni_jax.train.optimizer import FROZEN, assign_groups, stage_from_config

ALL = set(stages.COMPONENTS)
MODEL = ALL - {stages.CTC_HEAD}  # the head of audio_encoder_pretrain is training only
TRAINED = {
    "text_pretrain": {"llm"},
    "image_language_1": {"v1_projector"},
    "image_language_2": {"v1_projector", "siglip"},
    "image_language_3": {"llm", "siglip", "v1_projector"},
    "video_language": {"v1_video_projector"},
    "audio_encoder_pretrain": {"audio_encoder", stages.CTC_HEAD},
    "audio_language": {"audio_encoder", "v1_audio_projector"},
    "omni_alignment": MODEL - {"v1_boundary_head"},
    "sft": MODEL - {"v1_boundary_head"},
    "audio_boundary": {"v1_boundary_head"},
}


@pytest.mark.parametrize("size", ["test", "tiny", "7b"])
def test_every_stage_trains_exactly_the_reported_parts(size):
    c = pipeline.get_config(size)
    tasks = StageTasks(c, list(c.stage_order))
    tree = shd.unbox(union_trees([(type(t).__name__, step_lib.abstract_boxed(t)[0]) for t in tasks.unique]))
    assert set(tree) == (MODEL if size == "7b" else ALL)  # 7b starts from Whisper-large-v3: no CTC stage
    for name in c.stage_order:
        labels = traverse_util.flatten_dict(assign_groups(tree, stage_from_config(name, c.stages[name]).rules, name))
        assert {k[0] for k, g in labels.items() if g != FROZEN} == TRAINED[stages.BLOCKS.get(name, name)], name


def test_7b_uses_the_published_learning_rates():
    c = pipeline.get_config("7b")
    lr = {n: {g: v["lr"] for g, v in c.stages[n].groups.items()} for n in c.stage_order}
    assert lr["image_language_1"] == {"projector": 1e-3}
    assert lr["image_language_2"] == {"vision": 1e-5} and lr["image_language_3"] == {"all": 1e-5}
    assert lr["video_language"] == {"video": 4e-6}
    assert "text_pretrain" not in c.stage_order  # v1 starts from a pretrained LLM
    assert "audio_encoder_pretrain" not in c.stage_order  # ... and from Whisper-large-v3
    assert c.data.media.tokens_per_tile == 182 and c.data.media.video_tokens_per_frame == 546


def test_tiny_image_language_3_reads_pictures_and_7b_keeps_the_published_mixture():
    """tiny: 2e-3 on captions + image QA + 10% text (stages.TINY_IMAGE_LANGUAGE_3, measured in the
    README); 7b: the published 1e-5 over interleaved, captions, QA and 40% text."""
    tiny, big = pipeline.get_config("tiny").stages.image_language_3, pipeline.get_config("7b").stages.image_language_3
    assert tiny.groups.all.lr == 2e-3 and big.groups.all.lr == 1e-5
    assert {k: v.weight for k, v in tiny.data.mixture.items()} == {"caption": 0.45, "image_qa": 0.45, "text": 0.1}
    assert "interleaved_image_text" in big.data.mixture and big.data.mixture.text.weight == 0.4
    assert tiny.data.mixture.caption.dataset == big.data.mixture.caption.dataset  # same records, reweighted


@pytest.mark.parametrize("size,want", [
    # tiny / test: the pre-trained encoder at TINY_AUDIO_ENCODER_LR in every stage that trains it,
    # omni_alignment at 2e-3, sft at the scaled published rate (stages.TINY_*; README); small: the
    # published rates x10; 7b: as published / our choice
    ("tiny", dict(projector=3e-3, encoder=3e-5, omni_alignment=2e-3, sft=3e-4, later_encoder=3e-5)),
    ("test", dict(projector=3e-3, encoder=3e-5, omni_alignment=2e-3, sft=3e-4, later_encoder=3e-5)),
    ("small", dict(projector=1e-3, encoder=1e-4, omni_alignment=1e-4, sft=1e-4, later_encoder=None)),
    ("7b", dict(projector=1e-4, encoder=1e-5, omni_alignment=1e-5, sft=1e-5, later_encoder=None)),
])
def test_audio_stage_rates_per_size(size, want):
    st = pipeline.get_config(size).stages
    later = {st[n].groups.encoder.lr if "encoder" in st[n].groups else None for n in ("omni_alignment", "sft")}
    got = dict(projector=st.audio_language.groups.projector.lr, encoder=st.audio_language.groups.encoder.lr,
               omni_alignment=st.omni_alignment.groups.all.lr, sft=st.sft.groups.all.lr, later_encoder=later.pop())
    assert not later, later  # omni_alignment and sft agree
    assert got == pytest.approx(want, rel=1e-12), (size, got)


def test_tiny_runs_the_asr_block_after_omni_alignment_with_its_parts_and_rates():
    """The curriculum block (stages.asr_block): omni_alignment's trainable parts, groups and rates on
    ASR, image QA and video QA rows of its mixture; tiny only (test gives it 0 steps, small and 7b
    have none); tiny's sft has ASR rows at TINY_SFT_ASR_WEIGHT."""
    tiny = pipeline.get_config("tiny")
    order = list(tiny.stage_order)
    assert order[order.index("omni_alignment") + 1] == "asr_block"
    block, parent = tiny.stages.asr_block, tiny.stages.omni_alignment
    assert block.rules == parent.rules and block.groups.to_dict() == parent.groups.to_dict()
    assert {k: v.weight for k, v in block.data.mixture.items()} == stages.TINY_ASR_BLOCK_MIXTURE
    for k, v in block.data.mixture.items():
        assert v.dataset == parent.data.mixture[k].dataset and v.format == parent.data.mixture[k].format, k
    assert tiny.stages.sft.data.mixture.asr.weight == stages.TINY_SFT_ASR_WEIGHT
    assert pipeline.get_config("7b").stages.sft.data.mixture.asr.weight == 0.15  # published
    for size in ("test", "small", "7b"):
        assert "asr_block" not in pipeline.get_config(size).stage_order, size
    with pytest.raises(ValueError, match="asr_block is a curriculum block of the from-scratch sizes"):
        stages.asr_block(stages.base("7b"), 10)
    with pytest.raises(ValueError, match="starts from Whisper-large-v3"):
        stages.audio_encoder_pretrain(stages.base("7b"), 10)


@pytest.mark.parametrize("name", sorted(n for n in stages.STAGES if n != "text_pretrain"))
def test_single_stage_configs_build(name):
    c = importlib.import_module(f"configs.omni_v1.{name}").get_config("tiny")
    assert c.stage_order == (name,) and c.stages[name].steps > 0 and c.task == "omni_v1"
