r"""The CI quality bar: a tiny Baichuan-Omni v1 that must learn two narrow held-out skills fast.

  python -m launch.train --config=configs/omni_v1/ci.py --workdir=runs/omni_v1_ci

One stage of the v1 task (`omni_v1`: the model, loss and data pipeline of configs/omni_v1/pipeline.py)
trains everything from scratch (LLM with 2 layers, SigLIP, projectors, Whisper encoder) on the
colour probes (omni_jax/data/colour_probe.py): "what colour is the shape?" about one shape on a
56x56 canvas (40% of the rows), and ASR of one spoken colour word in 1 s clips (60%), 200 steps
of 8 x 128-token rows. The held-out test splits share nothing with the training splits
(unseen (colour, shape) pairs; unseen (word, voice) pairs); chance is 1/8 on both. tests/tasks/test_quality_bar.py trains this config once per test session (the
fixture in tests/tasks/conftest.py), scores the held-out sets and asserts accuracy far above
chance; tests/tasks/test_ablations.py silences the audio and shuffles the images across
samples on the same model and asserts that both skills fall to chance.

Why v1 and not 1.5: the 1.5 LLM hears audio only as RVQ codes of the frozen audio tokenizer,
and an untrained tokenizer gives the same codes for every clip (measured: all 16 held-out
words, 2 voices, gave identical codes at random initialisation), so 1.5 ASR needs the
tokenizer stage first; v1's continuous Whisper + Conv-GMLP path trains end to end.
"""

import ml_collections

from configs import common
from configs.omni_v1 import stages
from omni_jax.data import colour_probe

STEPS = 200


def get_config(arg: str | None = None):
    steps = int(arg) if arg else STEPS
    c = stages.base("tiny")
    c.model.llm.num_layers = 2
    media = c.data.media  # tiles geometry from the model (stages.base)
    c.data = common.omni_data(seq_len=128, max_patches=0, max_tiles=16, max_vision_items=4, max_audio_chunks=4,
                              max_speech_chunks=0, mel_frames=100)
    c.data.media = media
    c.stages.probe = ml_collections.ConfigDict(dict(
        steps=steps, grad_clip_norm=1.0,
        rules=common.partition({"all": stages.COMPONENTS}, stages.COMPONENTS),
        groups={"all": dict(lr=2e-3, schedule="cosine", warmup_steps=10, weight_decay=0.0, min_lr_ratio=0.1)},
        data=dict(mixture=colour_probe.mixture("train")), task_config=dict(modalities=["audio", "vision"])))
    c.stage_order = ("probe",)
    c.train.update(steps=steps, batch_size=8, log_every=20, progress_bar=False)
    c.checkpoint.update(every=10_000, keep=1)
    c.evaluate.at_end = False  # held-out scoring: omni_jax/tasks/probe_eval.py (tests/tasks/test_quality_bar.py)
    c.size = "ci"
    return c
