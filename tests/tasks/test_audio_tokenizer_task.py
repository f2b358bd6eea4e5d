"""omni_jax/tasks/audio_tokenizer.py + data/tokenizer_data.py: the tokenizer training stage.

A few sharded train steps (8-device mesh) on the embedded speech: the reconstruction loss falls,
the frozen LLM stays bit-identical, the codebooks move by EMA only (Adam has no state for them)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import audio_tokenizer_tiny
from omni_jax import sharding as shd
from omni_jax.data.iterator import process_rows
from omni_jax.tasks import get_task
from omni_jax.train import step as step_lib
from omni_jax.train.optimizer import build_optimizer, stage_from_config


def _config():
    c = audio_tokenizer_tiny.get_config("runlocal")
    c.unlock()
    return c


def test_data_is_step_indexed_and_well_formed():
    c = _config()
    task = get_task(c)
    a = task.make_data(None, start_step=0, process_index=0, process_count=1)
    b = task.make_data(None, start_step=3, process_index=0, process_count=1)
    first = [next(a) for _ in range(4)]
    np.testing.assert_array_equal(next(b)["waveform"], first[3]["waveform"])  # resume = same batch
    half = task.make_data(None, start_step=1, process_index=1, process_count=2)
    rows = process_rows(c.train.batch_size, 1, 2)
    np.testing.assert_array_equal(next(half)["text"], first[1]["text"][rows])  # processes split the rows
    batch = first[0]
    for j in range(c.train.batch_size):
        n, t = batch["num_samples"][j], batch["text_lengths"][j]
        assert 0 < n <= batch["waveform"].shape[1] and not batch["waveform"][j, n:].any()
        assert batch["text"][j, t - 1] == 256 and not batch["text"][j, t:].any()  # eos (byte tokenizer) then padding
        assert np.abs(batch["waveform"][j, :n]).max() > 0.1  # speech, not silence
    assert batch["stage_step"].tolist() == [0] * c.train.batch_size
    with pytest.raises(TypeError, match="loss_with_state"):
        task.loss({}, batch, None, {})


def train_on_one_batch(c, steps: int):
    """`steps` train steps of config `c` on its first batch, fully quantised, one device (a sharded
    compile of the whole stage costs twice the time here): (task, initial state on the host, live
    state, the jitted step, its layout, the batch, per-step metrics on the host)."""
    task = get_task(c)
    mesh = shd.make_mesh(dict(data=1), jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        layout = step_lib.make_layout(task, mesh, c.train.batch_size)
        opt = build_optimizer(stage_from_config("tokenizer", c.stages.tokenizer), layout.abstract_params)
        params = step_lib.init_params(task, layout, 0)
        state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, step_lib.init_opt_state(opt, layout, params),
                                    jax.random.PRNGKey(0), step_lib.init_model_state(task, layout, 0))
        init = jax.device_get(state)
        fn = step_lib.make_train_step(task, opt, layout, donate=False)
        batch = next(task.make_data(None, start_step=0, process_index=0, process_count=1))
        batch["stage_step"][:] = 100  # past the progressive-replacement warmup: fully quantised
        history = []
        for _ in range(steps):
            state, m = fn(state, step_lib.global_batch_from_local(batch, layout))
            history.append(jax.device_get(m))
    return task, init, state, fn, layout, batch, history


@pytest.fixture(scope="module")
def trained():
    """8 steps on one fixed batch, one device (sharded stateful steps are tested in
    tests/train/test_model_state.py, sharded audio models in tests/models/test_whisper.py, and this
    task's layout in test_codebooks_are_sharded)."""
    task, init, state, fn, layout, batch, history = train_on_one_batch(_config(), 8)
    early = dict(batch, stage_step=np.zeros_like(batch["stage_step"]))  # quant_prob 0.25 at stage step 0
    _, m_early = fn(state, step_lib.global_batch_from_local(early, layout))
    return task, init, jax.device_get(state), history, state, jax.device_get(m_early)


def test_reconstruction_loss_falls(trained):
    _, _, _, history, _, _ = trained
    rec = [float(m["reconstruction"]) for m in history]
    print("tokenizer reconstruction loss over 8 steps on one batch: " + " ".join(f"{r:.2f}" for r in rec))
    assert rec[-1] < 0.7 * rec[0] and rec[-1] < min(rec[:4])
    assert all(np.isfinite(float(m["objective"])) for m in history)
    assert {"multi_scale", "commitment", "transcription", "vq/0_perplexity", "vq/0_restarted"} <= set(history[0])


def test_llm_frozen_codebooks_move_by_ema_only(trained):
    task, init, final, _, live, _ = trained
    for a, b in zip(jax.tree.leaves(init.params["llm"]), jax.tree.leaves(final.params["llm"])):
        assert np.array_equal(a, b)  # the frozen LLM is bit-identical
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(init.params["audio_encoder"]),
                                                       jax.tree.leaves(final.params["audio_encoder"]))]
    assert all(moved)
    e0 = init.model_state["audio_bridge"]["vq_0"]
    e1 = final.model_state["audio_bridge"]["vq_0"]
    assert not np.array_equal(e0["embed"], e1["embed"]) and not np.array_equal(e0["cluster_size"], e1["cluster_size"])
    assert "vq_0" not in str(jax.tree_util.tree_structure(final.opt_state))  # Adam never sees the codebooks


def test_codebooks_are_sharded():
    """On a (data 2, fsdp 2, tensor 2) mesh the codebook state is laid out like the weights."""
    c = _config()
    task = get_task(c)
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        layout = step_lib.make_layout(task, mesh, c.train.batch_size)
    vq = layout.model_state_shardings["audio_bridge"]["vq_0"]
    assert vq["embed"].spec == jax.P(None, ("fsdp", "context")) and vq["cluster_size"].spec == jax.P(None)
    assert layout.param_shardings["audio_bridge"]["gate_proj"]["kernel"].spec == jax.P(None, ("fsdp", "context"), "tensor")


def test_progressive_replacement(trained):
    """Each frame feeds its quantised vector with probability 0.25 at stage step 0, 1 after the warmup."""
    _, _, _, history, _, early = trained
    assert float(history[-1]["quantized_fraction"]) == 1.0
    assert 0.05 < float(early["quantized_fraction"]) < 0.5


def test_config_errors_name_the_key():
    c = _config()
    c.loss.comitment = 1.0
    with pytest.raises(ValueError, match=r"config.loss: unknown key\(s\) \['comitment'\]"):
        get_task(c)
    c = _config()
    c.data.chunk_seconds = 3.0  # 300 mel frames -> 150 encoder frames > max_source_positions=100
    with pytest.raises(ValueError, match="raise config.model.audio.encoder.max_source_positions"):
        get_task(c)
    c = _config()
    c.model.audio.bridge.pool = 2
    with pytest.raises(ValueError, match=r"decoder upsample1 \(4\) must equal the bridge pool \(2\)"):
        get_task(c)
    c = _config()
    c.model.audio.decoder.num_layer = 3
    with pytest.raises(ValueError, match=r"config.model.audio.decoder: unknown key\(s\) \['num_layer'\]"):
        get_task(c)


def test_import_from_a_release_checkpoint(tmp_path):
    """config.init.checkpoint with release safetensors: the audio modules, the codebooks and the
    LLM are imported; the adapter (not in the release) is initialised."""
    from omni_jax.convert import audio as conv
    from omni_jax.convert import qwen2 as qconv
    from omni_jax.convert.mapping import export_params
    from omni_jax.convert.safetensors_io import save_state_dict

    task = get_task(_config())
    r = np.random.RandomState(0)
    abstract_p = jax.eval_shape(lambda: shd.unbox(task.init(jax.random.PRNGKey(0))))
    abstract_s = jax.eval_shape(lambda: shd.unbox(task.init_state(jax.random.PRNGKey(0))))
    rand = lambda t: jax.tree.map(lambda a: r.randn(*a.shape).astype(np.float32), t)
    params, state = rand(abstract_p), rand(abstract_s)
    sd = conv.export_tokenizer({"params": params, "vq_stats": state}, task.cfg)
    sd.update(export_params(params["llm"], qconv.rules(task.llm_cfg, "release")))
    sd["model.visual_model.patch_embed.proj.weight"] = np.zeros((2, 3), np.float32)  # other modules are skipped
    save_state_dict(str(tmp_path), sd)
    got_p = task.import_params(str(tmp_path), abstract_p)
    got_s = task.import_state(str(tmp_path), abstract_s)
    for k in ("audio_encoder", "audio_bridge", "audio_decoder", "llm"):
        for a, b in zip(jax.tree.leaves(params[k]), jax.tree.leaves(got_p[k])):
            assert np.array_equal(a, b), k
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(got_s)))
    assert jax.tree.structure(got_p) == jax.tree.structure(params)
