"""bf16 compute in every task's train step (issue 12 item 0): with every model component set to
compute in bfloat16 (configs/common.py `bf16_compute`: parameters fp32; norms, softmax and
losses fp32 inside the models), each task's loss and gradients on one real tiny batch are
finite, the gradients are fp32 like the parameters, and the loss stays within a measured
tolerance of the fp32 run on the same parameters and batch.

The tolerances are the measured differences (printed) with a ~2x margin: |loss_bf16 - loss_fp32|
and the relative gradient error ||g_bf16 - g_fp32|| / ||g_fp32|| over the whole tree; bf16 has an
8-bit mantissa (relative rounding 2^-9 = 0.002 per operation). At initialisation (0.02-scale
weights) the lm / omni losses sit near log(vocab), so their loss differences are tiny and the
gradient error is the sharper check there."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import audio_tokenizer_tiny, backbone_tiny, common, flow_matching_tiny, vocoder_tiny
from configs.omni15 import stages as stages15
from configs.omni_v1 import stages as stages_v1
from omni_jax import sharding as shd
from omni_jax.tasks import get_task
from omni_jax.train.trainer import parse_stages
from tests.reference_models import random_params


def _omni15():
    c = stages15.base("test")
    c.data.mixture = {"qa": dict(dataset="omni_images/shapes_tiny", format="image_qa", weight=0.4, split="train"),
                      "asr": dict(dataset="omni_speech/shapes_tiny", format="asr", weight=0.3, split="train"),
                      "sqa": dict(dataset="omni_spoken_qa/shapes_tiny", format="speech_qa", weight=0.3, split="train")}
    return c


def _omni_v1():
    c = stages_v1.base("test")
    c.data.mixture = {"qa": dict(dataset="omni_images/shapes_tiny", format="image_qa", weight=0.4, split="train"),
                      "vid": dict(dataset="omni_videos/shapes_tiny", format="video_qa", weight=0.3, split="train"),
                      "asr": dict(dataset="omni_speech/shapes_tiny", format="asr", weight=0.3, split="train")}
    return c


def _omni_v1_audio_ctc():  # the from-scratch v1 encoder's CTC pre-training, as its stage sees the config
    from configs.omni_v1 import audio_encoder_pretrain
    from omni_jax.train.multitask import stage_config

    return stage_config(audio_encoder_pretrain.get_config("test"), "audio_encoder_pretrain")


def _flow_matching_speech():  # the main job's flow-matching rows: the tokenizer's states of real clips
    from tests.tasks.test_flow_matching_speech import speech_config

    return speech_config()


CONFIGS = {
    "lm": lambda: backbone_tiny.get_config("runlocal"),
    "omni": _omni15,
    "omni_v1": _omni_v1,
    "omni_v1_audio_ctc": _omni_v1_audio_ctc,
    "audio_tokenizer": audio_tokenizer_tiny.get_config,
    "flow_matching": flow_matching_tiny.get_config,
    "flow_matching_speech": _flow_matching_speech,
    "vocoder": vocoder_tiny.get_config,
}
# measured on this machine (|loss diff|, relative grad error): lm 1.1e-5, 6.9e-3; omni 0.0 (loss
# ~log 384 at these random weights), 8.4e-3; omni_v1 3.8e-6, 7.5e-3; audio_tokenizer 2.0e-3
# (of 13.16), 2.2e-2; flow_matching 2.1e-4 (of 12.6), 3.1e-2; flow_matching_speech (its condition
# from the tokenizer, which computes in bf16 too) 4.6e-4 (of 8.83), 7.9e-2; vocoder 2.0e-2 (of 438.7), 6.1e-3;
# omni_v1_audio_ctc (the Whisper encoder and its CTC head in bf16) 1.5e-5 (of 21.35), 6.0e-2
TOLERANCE = {"lm": 2.5e-5, "omni": 1e-5, "omni_v1": 1e-5, "audio_tokenizer": 4e-3, "flow_matching": 5e-4,
             "flow_matching_speech": 1e-3, "vocoder": 0.04, "omni_v1_audio_ctc": 5e-5}
GRAD_TOLERANCE = {"lm": 0.014, "omni": 0.017, "omni_v1": 0.015, "audio_tokenizer": 0.045, "flow_matching": 0.06,
                  "flow_matching_speech": 0.16, "vocoder": 0.012, "omni_v1_audio_ctc": 0.12}


def _batch(task, config):
    if config.task in ("omni", "omni_v1"):
        from omni_jax.data.omni_pipeline import OmniPipeline

        raw = OmniPipeline(config).build_rows(range(4))
        return {k: jnp.asarray(v) for k, v in raw.items() if k in task.fields}
    stage = parse_stages(config)[0]
    batch = next(task.make_data(stage, start_step=0, process_index=0, process_count=1))
    if "stage_step" in batch:  # the audio tokenizer past its warm-up: every RVQ stage quantises
        batch["stage_step"][:] = 100
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _loss_and_grads(config, params, state, batch):
    task = get_task(config)
    norms = task.norms(batch)

    @jax.jit
    def f(p, s, b):
        return jax.value_and_grad(lambda q: task.loss_with_state(q, s, b, jax.random.PRNGKey(3), norms)[0])(p)

    return f(params, state, batch)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bf16_loss_and_grads_match_fp32(name):
    config = CONFIGS[name]()
    task = get_task(config)
    if name in ("omni", "omni_v1", "omni_v1_audio_ctc"):  # the whole omni init compiles for ~30 s: random values
        params = random_params(task, 0)
    else:
        params = shd.unbox(jax.jit(task.init)(jax.random.PRNGKey(0)))
    init_state = task.init_state(jax.random.PRNGKey(1))
    state = None if init_state is None else shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(1)))
    batch = _batch(task, config)
    loss32, g32 = _loss_and_grads(config, params, state, batch)

    bf = CONFIGS[name]()
    bf.unlock()
    common.bf16_compute(bf.model)
    loss16, g16 = _loss_and_grads(bf, params, state, batch)

    assert np.isfinite(float(loss16)) and all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(g16))
    assert {g.dtype for g in jax.tree.leaves(g16)} == {jnp.dtype(jnp.float32)}
    assert jax.tree.structure(g16) == jax.tree.structure(g32)
    diff = abs(float(loss16) - float(loss32))
    num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)))
    den = sum(float(jnp.sum(b ** 2)) for b in jax.tree.leaves(g32))
    print(f"{name}: loss fp32 {float(loss32):.6f} bf16 {float(loss16):.6f} |diff| {diff:.3e}; "
          f"relative grad error {np.sqrt(num / den):.3e}")
    assert diff <= TOLERANCE[name], (name, diff)
    assert np.sqrt(num / den) <= GRAD_TOLERANCE[name], (name, np.sqrt(num / den))
    assert np.sqrt(num / den) > 0  # the bf16 run really computed in bf16
