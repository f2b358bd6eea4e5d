"""The stages of Baichuan-Omni v1 (ARCHITECTURE.md 2) as config, over the v1 parameter tree.

Each stage = which top-level components train (every other one is `frozen`: no optimizer
state, bit-identical), learning rates and its data mixture (omni_jax/data/stage_mixtures.py
`v1_*` over the embedded dataset). Shared helpers (run defaults, regex partition, learning-rate
scaling for the from-scratch sizes) are configs/common.py's, as for the 1.5 stages.

Published rates: image-language 1e-3 (projector), 1e-5 (+ SigLIP), 1e-5 (everything visual +
LLM); video-language 4e-6 (video projector only). Not published, our choices: audio-language
1e-4 for the fresh Conv-GMLP projector and 1e-5 for the pretrained Whisper encoder (LLM
frozen), omni-alignment and SFT 1e-5 for everything. The from-scratch sizes scale these
(common.stage_group); tiny sets its own rates for image-language 3, the encoder in audio-language
and omni-alignment (the TINY_* constants below, each measured in benchmarks/main_job_history.md).
"Everything" in image-language 3 is the visual side and the LLM: the audio branch has not been
aligned yet (it joins in audio-language).
"Everything" in omni-alignment and SFT is every component of the LLM's forward (LM_COMPONENTS);
the audio-boundary head (`v1_boundary_head`, streaming input) trains in its own last stage,
`audio_boundary`, with everything else frozen: it reads the Whisper states the earlier stages leave.
"""

from __future__ import annotations

import ml_collections

from configs import common
from omni_jax.data.stage_mixtures import mixture
from omni_jax.models.omni_v1 import CTC_HEAD

LM_COMPONENTS = ("llm", "siglip", "v1_projector", "v1_video_projector", "audio_encoder", "v1_audio_projector")
COMPONENTS = LM_COMPONENTS + ("v1_boundary_head", CTC_HEAD)
SIZES = common.STAGE_SIZES


def base(size: str = "tiny") -> ml_collections.ConfigDict:
    """Model, data and run defaults shared by every v1 stage config."""
    c = common.stage_base(
        size, "omni_v1", common.omni_v1_model,
        seq={"tiny": 512, "test": 256, "small": 1024, "7b": 4096},
        small_shapes=dict(max_patches=0, max_tiles=16, max_vision_items=8, max_audio_chunks=2, max_speech_chunks=0,
                          mel_frames=600),
        large_shapes=dict(max_patches=0, max_tiles=64, max_vision_items=48, max_audio_chunks=4, max_speech_chunks=0,
                          mel_frames=3000),
        bf16_parts=("llm", "siglip", "audio_encoder"), speech_reply=False)
    m = c.model
    c.data.media.update(vision_mode="tiles", tile_size=m.siglip.image_size, video_max_frames=48,
                        tokens_per_tile=m.v1_projector.pool_grid[0] * m.v1_projector.pool_grid[1],
                        video_tokens_per_frame=m.v1_projector.video_pool_grid[0] * m.v1_projector.video_pool_grid[1],
                        audio_pool=m.v1_audio_projector.rate)
    c.loss = ml_collections.ConfigDict(dict(text=1.0))
    if size == "test":
        # the tiny dataset's interleaved image documents are 262-378 tokens in v1's tiles and never fit
        # the test size's 256-token rows: omni_alignment skips 9 of the 336 records it reads (2.7%, the
        # first 5 logged), above the default 1% budget that otherwise stops the `:test` pipeline
        c.data.errors.max_fraction = 0.05
    return c


def _stage(c, name: str, steps: int, groups: dict, rates: dict, mix: dict | None = None):
    mix = mix or mixture(f"v1_{name}", common.dataset_config(c.size))
    c.stages[name] = common.stage_entry(c, steps, groups, rates, mix, COMPONENTS)


def text_pretrain(c, steps):
    """tiny/small only: the LLM learns the text of the embedded world first (v1 starts from a
    pretrained 7B LLM instead)."""
    _stage(c, "text_pretrain", steps, {"llm": ("llm",)}, {"llm": 1e-4},
           mix={"text": dict(dataset=f"omni_text/{common.dataset_config(c.size)}", format="text", weight=1.0, split="train")})


def image_language_1(c, steps):
    """The visual projector only, on captions (lr 1e-3)."""
    _stage(c, "image_language_1", steps, {"projector": ("v1_projector",)}, {"projector": 1e-3})


def image_language_2(c, steps):
    """Projector + SigLIP (lr 1e-5), adding QA (OCR / chart data in the report)."""
    _stage(c, "image_language_2", steps, {"vision": ("v1_projector", "siglip")}, {"vision": 1e-5})


# tiny (from scratch): as the 1.5 pipeline's TINY_IMAGE_TEXT_2, the LLM learns to read the picture
# at 2e-3 on captions + QA; a 10% text share keeps its text (README "What limits each skill", v1 rows)
TINY_IMAGE_LANGUAGE_3 = dict(lr=2e-3, mixture={"caption": 0.45, "image_qa": 0.45, "text": 0.1})


def image_language_3(c, steps):
    """SigLIP, projector and LLM (lr 1e-5), adding interleaved and pure text.
    tiny / test: 2e-3 on captions, image QA and 10% text (TINY_IMAGE_LANGUAGE_3)."""
    mix = common.from_scratch_mixture(c, "v1_image_language_3", TINY_IMAGE_LANGUAGE_3["mixture"])
    _stage(c, "image_language_3", steps, {"all": ("llm", "siglip", "v1_projector")}, {"all": 1e-5}, mix)
    if mix is not None:
        common.set_stage_lr(c.stages.image_language_3, TINY_IMAGE_LANGUAGE_3["lr"])


def video_language(c, steps):
    """The video projector only (lr 4e-6), images first then video (the mixture keeps captions)."""
    _stage(c, "video_language", steps, {"video": ("v1_video_projector",)}, {"video": 4e-6})


# tiny / small (from scratch): the 7B starts its Whisper encoder from Whisper-large-v3, a trained
# recogniser; these sizes train theirs first, as text_pretrain stands in for Qwen2.5. The encoder and
# a linear CTC head (training only) learn the transcripts of the embedded speech's train clips (task
# omni_v1_audio_ctc); AdamW as benchmarks/speech_ctc_baseline.py fits it (warm-up, cosine to 1/20,
# weight decay 0.01).
AUDIO_ENCODER_PRETRAIN = dict(lr=1e-3, warmup_steps=80, min_lr_ratio=0.05, weight_decay=0.01, max_labels=64)

# tiny (from scratch), measured on 6 Dec, late (benchmarks/main_job_history.md "v1: an encoder that
# hears, kept"): the tiny LLM learns to read the audio only with three pieces together, as in the 1.5
# pipeline (README "What limits each skill"): (1) the pre-trained encoder above, which later stages
# leave almost as it is (TINY_AUDIO_ENCODER_LR: it stays in every stage's trainable group, as the
# report's rules say, at 1/67 of the LLM's rate in omni_alignment, 1/10 in sft; the old 3e-3 for
# the random encoder, or 3e-4, wash out what it heard: held-out ASR CER 0.34 and 0.18 against 0.05
# frozen);
# (2) a curriculum block of omni_alignment mostly of ASR rows (`asr_block`, TINY_ASR_BLOCK_MIXTURE;
# without it CER 0.46; 1000 steps at ASR 0.6 / image QA 0.25 since 7 Dec: with 800 at 0.7 / 0.15 the
# picture paid, image QA 0.51 over the 100 test pictures against 0.63 now, and 0.30 image QA
# rows in 800 steps cost the hearing, CER 0.17); (3) ASR rows at about half of sft's (TINY_SFT_ASR_WEIGHT,
# 0.15 published).
# omni_alignment, the first stage where the LLM hears audio, runs at 2e-3 as the 1.5 pipeline's
# image_audio_text_2 does; sft at 2e-3 was measured and not kept (image QA 0.40, video QA 0.27;
# benchmarks/main_job_history.md "v1 stage variants measured on 5 Dec").
TINY_AUDIO_ENCODER_LR = 3e-5
TINY_OMNI_ALIGNMENT_LR = 2e-3
TINY_ASR_BLOCK_MIXTURE = {"asr": 0.6, "image_qa": 0.25, "video_qa": 0.15}  # omni_alignment's components
TINY_SFT_ASR_WEIGHT = 1.0


def audio_encoder_pretrain(c, steps):
    """tiny / small only: the Whisper encoder + a CTC head on ASR (AUDIO_ENCODER_PRETRAIN), everything
    else frozen; the stand-in for Whisper-large-v3's weights."""
    if c.size not in ("tiny", "test", "small"):
        raise ValueError(f"audio_encoder_pretrain stands in for Whisper-large-v3 at the from-scratch sizes (tiny, "
                         f"test, small); {c.size!r} starts from Whisper-large-v3 (--config.init.checkpoint=DIR with "
                         "audio_encoder/): give it 0 steps")
    p = AUDIO_ENCODER_PRETRAIN
    c.stages["audio_encoder_pretrain"] = ml_collections.ConfigDict(dict(
        steps=steps, task="omni_v1_audio_ctc", grad_clip_norm=1.0,
        rules=common.partition({"encoder": ("audio_encoder", CTC_HEAD)}, COMPONENTS),
        groups={"encoder": dict(lr=p["lr"], schedule="cosine", warmup_steps=p["warmup_steps"],
                                weight_decay=p["weight_decay"], min_lr_ratio=p["min_lr_ratio"])},
        task_config=dict(ctc=dict(dataset=f"omni_speech/{common.dataset_config(c.size)}", split="train", seed=0,
                                  max_labels=p["max_labels"], cache_mib=1024)),
    ))


def audio_language(c, steps):
    """Whisper encoder + Conv-GMLP projector with the LLM frozen, on audio-text data.
    tiny / test: the encoder at TINY_AUDIO_ENCODER_LR."""
    _stage(c, "audio_language", steps, {"projector": ("v1_audio_projector",), "encoder": ("audio_encoder",)},
           {"projector": 1e-4, "encoder": 1e-5})
    if c.size in ("tiny", "test"):
        c.stages.audio_language.groups.encoder.lr = TINY_AUDIO_ENCODER_LR


def _everything(c, name: str, steps: int, lr: float, mix: dict | None = None):
    """Every LM component trains (the report's omni-alignment and SFT); tiny / test: the LLM side at
    `lr` (None: the scaled published 1e-5) and the pre-trained encoder in its own group at
    TINY_AUDIO_ENCODER_LR."""
    if c.size not in ("tiny", "test"):
        _stage(c, name, steps, {"all": LM_COMPONENTS}, {"all": 1e-5}, mix)
        return
    rest = tuple(x for x in LM_COMPONENTS if x != "audio_encoder")
    _stage(c, name, steps, {"all": rest, "encoder": ("audio_encoder",)}, {"all": 1e-5, "encoder": 1e-5}, mix)
    if lr is not None:
        c.stages[name].groups.all.lr = lr
    c.stages[name].groups.encoder.lr = TINY_AUDIO_ENCODER_LR


def omni_alignment(c, steps):
    """Everything, on image, video, audio and text together. tiny / test: at TINY_OMNI_ALIGNMENT_LR,
    the encoder at TINY_AUDIO_ENCODER_LR."""
    _everything(c, "omni_alignment", steps, TINY_OMNI_ALIGNMENT_LR)


def asr_block(c, steps):
    """A curriculum block of omni-alignment for the from-scratch sizes (the tiny pipeline runs it just
    after that stage): the same trainable parts, groups and rates, on 70% ASR rows and 15% each image
    and video QA rows, components of omni_alignment's mixture (TINY_ASR_BLOCK_MIXTURE)."""
    mix = common.from_scratch_mixture(c, "v1_omni_alignment", TINY_ASR_BLOCK_MIXTURE)
    if mix is None:
        raise ValueError(f"asr_block is a curriculum block of the from-scratch sizes (tiny, test), not of "
                         f"{c.size!r}: give it 0 steps there")
    _everything(c, "asr_block", steps, TINY_OMNI_ALIGNMENT_LR, mix)


def sft(c, steps):
    """Supervised fine-tuning on omni instructions, packed with per-sample attention isolation.
    tiny: ASR rows at TINY_SFT_ASR_WEIGHT (0.15 published); tiny / test: the encoder at
    TINY_AUDIO_ENCODER_LR."""
    mix = None
    if c.size == "tiny":
        mix = mixture("v1_sft", common.dataset_config(c.size))
        mix["asr"] = dict(mix["asr"], weight=TINY_SFT_ASR_WEIGHT)
    _everything(c, "sft", steps, None, mix)


def audio_boundary(c, steps):
    """The audio-boundary head only (task omni_v1_boundary, omni_jax/tasks/omni_v1_boundary.py): per-frame
    start / inside / end of the user's speech on windows of streams where the speech arrives inside
    a video stream's audio (omni_jax/data/boundary_streams.py; the embedded speech set). Not
    published: our lr 1e-4 (scaled for the from-scratch sizes)."""
    c.stages["audio_boundary"] = ml_collections.ConfigDict(dict(
        steps=steps, task="omni_v1_boundary", grad_clip_norm=1.0,
        rules=common.partition({"head": ("v1_boundary_head",)}, COMPONENTS),
        groups={"head": common.stage_group(1e-4, c.size)},
        task_config=dict(boundary=dict(dataset_size="tiny" if c.size == "test" else "default", seed=0)),
    ))


STAGES = {f.__name__: f for f in (text_pretrain, image_language_1, image_language_2, image_language_3,
                                   video_language, audio_encoder_pretrain, audio_language, omni_alignment, sft,
                                   audio_boundary)}
# curriculum blocks: not stages of ARCHITECTURE.md 2 but a part of one (its trainable parts, rules and
# rates on other data), block -> that stage
BLOCKS = {"asr_block": "omni_alignment"}
BLOCK_FNS = {"asr_block": asr_block}


def single_stage(name: str, size: str, steps: int) -> ml_collections.ConfigDict:
    c = base(size)
    STAGES[name](c, steps)
    c.stages[name].eval_every = -1  # as in the pipeline (configs/common.py `pipeline`)
    c.stage_order = (name,)
    c.train.steps = steps
    return c
