"""The flow-matching stage on the embedded speech (omni_jax/tasks/flow_matching.py, data.source =
"speech"): its condition is the run's frozen tokenizer's 50 Hz decoder states of each clip, the
states the synthesiser feeds the decoder when the model speaks; no gradient reaches the tokenizer;
the valid frames are the fewer of the states' and the mel's. Bad sources (and the vocoder's) are named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import audio_tokenizer_tiny, flow_matching_tiny
from configs.omni15 import stages
from omni_jax import sharding as shd
from omni_jax.models.audio_tokenizer import AudioTokenizer
from omni_jax.ops import mel_jax
from omni_jax.tasks import get_task
from omni_jax.train.trainer import parse_stages


class _Tok:
    eos_id = 1

    def encode(self, text):
        return [2] * len(text)


def speech_config():
    c = flow_matching_tiny.get_config()
    c.model.audio = audio_tokenizer_tiny.audio("tiny")
    c.data = stages.speech_data(chunk_seconds=1.0, num_utterances=16)
    c.train.batch_size = 4
    return c


@pytest.fixture(scope="module")
def setup():
    c = speech_config()
    task = get_task(c)
    params = shd.unbox(jax.jit(task.init)(jax.random.PRNGKey(0)))
    state = shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(1)))
    batch = next(task.make_data(parse_stages(c)[0], start_step=0, process_index=0, process_count=1))
    return task, params, state, {k: jnp.asarray(v) for k, v in batch.items()}


def test_condition_is_the_tokenizer_states_of_the_clip(setup):
    task, params, state, batch = setup
    assert set(task.init(jax.random.PRNGKey(0))) == {"flow_matching", "audio_encoder", "audio_bridge", "audio_decoder"}
    h = np.asarray(task.speech_condition(params, state, batch))
    mask = np.asarray(task._speech_mask(batch))
    variables = {"params": {k: params[k] for k in ("audio_encoder", "audio_bridge", "audio_decoder")}, "vq_stats": state}
    for i in range(2):
        n = int(batch["num_samples"][i])
        buffer = -(-n // 160) * 160  # the clip's own buffer: a multiple of the 160-sample hop
        mel, mel_len = mel_jax.whisper_log_mel(batch["waveform"][i:i + 1, :buffer], jnp.asarray([n]))
        codes, lengths = task.tokenizer.apply(variables, mel, mel_len, method=AudioTokenizer.encode)
        ref, ref_len = task.tokenizer.apply(variables, codes, lengths, method=AudioTokenizer.hidden_states_before_dconv2)
        k = int(ref_len[0])
        assert k == 4 * int(lengths[0]) - 1
        valid = int(mask[i].sum())
        assert valid == min(k, int(batch["mel_frames"][i])) and valid > 10
        # the clip alone (no padding to the batch's length) gives the same states, to float rounding
        np.testing.assert_allclose(h[i, :valid], np.asarray(ref[0, :valid]), atol=1e-4)


def test_loss_trains_the_decoder_only(setup):
    task, params, state, batch = setup
    norms = task.norms(batch)
    assert float(norms["values"]) == float(task._speech_mask(batch).sum()) * 80

    def f(p):
        return task.loss_with_state(p, state, batch, jax.random.PRNGKey(3), norms)[0]

    loss, g = jax.jit(jax.value_and_grad(f))(params)
    assert np.isfinite(float(loss))
    for k in ("audio_encoder", "audio_bridge", "audio_decoder"):
        assert all(not np.asarray(x).any() for x in jax.tree.leaves(g[k])), k
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g["flow_matching"])) > 0
    with pytest.raises(TypeError, match="loss_with_state"):
        task.loss(params, batch, jax.random.PRNGKey(0), norms)


def test_bad_source_and_missing_tokenizer_are_named():
    from configs import vocoder_tiny
    from omni_jax.data.tokenizer_data import UtteranceBank

    c = vocoder_tiny.get_config()
    c.data.source = "speach"
    with pytest.raises(ValueError, match=r"config.data.source='speach'; use 'synthetic'"):
        get_task(c)
    bank = UtteranceBank(num_utterances=2, max_samples=32000, max_text_tokens=56, tokenizer=_Tok(),
                         tts=lambda text, voice: np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="has no pitch"):
        bank.pitch(0)
    c = flow_matching_tiny.get_config()
    c.data.source = "speach"
    with pytest.raises(ValueError, match=r"config.data.source='speach'; use one of \('synthetic', 'speech'\)"):
        get_task(c)
    c = flow_matching_tiny.get_config()
    c.data = stages.speech_data(chunk_seconds=1.0)
    with pytest.raises(ValueError, match="config.model.audio is missing"):
        get_task(c)
