"""omni_jax/train/step.py: sharded step == single-device step, microbatching, frozen params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import backbone_tiny
from omni_jax import sharding as shd
from omni_jax.tasks import get_task
from omni_jax.train import step as step_lib
from omni_jax.train.optimizer import build_optimizer, stage_from_config


def _config(**stage_overrides):
    c = backbone_tiny.get_config("runlocal")
    c.unlock()
    c.model.llm.num_heads, c.model.llm.num_kv_heads = 4, 2  # kv heads divisible by tensor=2
    for k, v in stage_overrides.items():
        c.stages.pretrain[k] = v
    return c


def _run(config, mesh_cfg, devices, steps=2, microbatches=1):
    mesh = shd.make_mesh(mesh_cfg, devices)
    task = get_task(config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        layout = step_lib.make_layout(task, mesh, config.train.batch_size)
        stage = stage_from_config("pretrain", config.stages.pretrain)
        opt = build_optimizer(stage, layout.abstract_params)
        params = step_lib.init_params(task, layout, 0)
        state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, step_lib.init_opt_state(opt, layout, params),
                                    jax.random.PRNGKey(0))
        fn = step_lib.make_train_step(task, opt, layout, microbatches=microbatches, donate=False)
        data = task.make_data(stage, start_step=0, process_index=0, process_count=1)
        losses = []
        init = jax.device_get(state.params)
        for _ in range(steps):
            state, m = fn(state, step_lib.global_batch_from_local(next(data), layout))
            losses.append(float(m["loss"]))
        return losses, init, jax.device_get(state.params), state


def test_sharded_step_matches_single_device():
    c = _config()
    one, _, p1, _ = _run(c, dict(data=1), jax.devices()[:1])
    many, _, p8, st8 = _run(c, dict(data=2, fsdp=2, tensor=2), jax.devices())
    np.testing.assert_allclose(many, one, atol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # parameters really are sharded: the MLP kernel is split over fsdp (embed) and tensor (mlp)
    k = st8.params["llm"]["layers"]["mlp"]["gate_proj"]["kernel"]
    assert k.sharding.spec == jax.P(None, ("fsdp", "context"), "tensor")
    assert k.addressable_shards[0].data.shape == (2, 16, 32)


def test_tiled_lm_loss_sharded_matches_the_plain_single_device_step():
    """The LM-head loss tiled over the sequence and the vocabulary (omni_jax/tasks/losses.py),
    on a (data 2 x fsdp 2 x tensor 2) mesh whose lm_head is vocabulary-sharded."""
    plain, _, pp, _ = _run(_config(), dict(data=1), jax.devices()[:1])
    c = _config()
    c.model.llm.update(loss_token_chunk=8, loss_vocab_chunk=96)  # seq 32, vocab 384
    tiled, _, pt, _ = _run(c, dict(data=2, fsdp=2, tensor=2), jax.devices())
    np.testing.assert_allclose(tiled, plain, atol=1e-5)
    d = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(pp), jax.tree.leaves(pt)))
    print(f"tiled sharded vs plain single-device params after 2 steps: max abs diff {d:.3e}")
    assert d <= 1e-5


@pytest.mark.parametrize("mesh_cfg", [dict(data=2, context=4)])  # context 2 and 4: tests/layers/test_ring_attention.py
def test_context_parallel_ring_step_matches_single_device(mesh_cfg):
    """Context parallelism that never gathers the sequence (ring attention) on packed rows."""
    one, _, p1, _ = _run(_config(), dict(data=1), jax.devices()[:1])
    c = _config()
    c.model.llm.attention_impl = "ring"
    ring, _, pr, _ = _run(c, mesh_cfg, jax.devices())
    np.testing.assert_allclose(ring, one, atol=1e-5)
    d = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(pr)))
    print(f"ring {mesh_cfg} vs single device params after 2 steps: max abs diff {d:.3e}")
    assert d <= 1e-5


def test_microbatch_accumulation_matches_full_batch():
    c = _config()
    full, _, pf, _ = _run(c, dict(data=1), jax.devices()[:1])
    acc, _, pa, _ = _run(c, dict(data=1), jax.devices()[:1], microbatches=4)
    np.testing.assert_allclose(acc, full, rtol=1e-6)  # fp32 sums reassociated over 4 microbatches
    for a, b in zip(jax.tree.leaves(pf), jax.tree.leaves(pa)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_frozen_parameters_stay_bit_identical():
    c = _config(rules=[(r"llm/layers/mlp/.*", "mlp"), (r"llm/(?!layers/mlp/).*", "frozen")],
                groups=dict(mlp=dict(lr=1e-2)))
    _, init, after, state = _run(c, dict(data=2, fsdp=2, tensor=2), jax.devices(), steps=3)
    flat_i = jax.tree_util.tree_flatten_with_path(init)[0]
    flat_a = jax.tree.leaves(after)
    for (path, a), b in zip(flat_i, flat_a):
        name = jax.tree_util.keystr(path)
        if "mlp" in name:
            assert not np.array_equal(a, b), name
        else:
            assert np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32)), name


def test_indivisible_sharding_is_a_clear_error():
    c = _config()
    c.model.llm.num_kv_heads = 1
    c.model.llm.num_heads = 4
    task = get_task(c)
    mesh = shd.make_mesh(dict(data=1, tensor=8), jax.devices())
    with pytest.raises(ValueError, match=r"W_pack.*kv_heads=1\) is not divisible by mesh tensor=8"):
        step_lib.make_layout(task, mesh, 8)


def test_batch_that_does_not_split_over_the_mesh_is_a_clear_error():
    task = get_task(_config())
    mesh = shd.make_mesh(dict(data=-1), jax.devices())  # 8-way data parallel
    with pytest.raises(ValueError, match=r"(?s)tokens dim 0 \(activation_batch=4\) is not divisible by mesh "
                                         r"dataxfsdp=8.*config.train.batch_size a multiple of data x fsdp = 8"):
        step_lib.make_layout(task, mesh, 4)


def test_mesh_config_errors():
    with pytest.raises(ValueError, match="needs 6 devices but 8"):
        shd.make_mesh(dict(data=3, fsdp=2))
    with pytest.raises(ValueError, match="only one axis may be -1"):
        shd.make_mesh(dict(data=-1, fsdp=-1))
    with pytest.raises(ValueError, match=r"unknown axes \['model'\]"):
        shd.make_mesh(dict(model=2))
    assert dict(shd.make_mesh(dict(data=-1, tensor=2)).shape) == dict(data=4, fsdp=1, tensor=2, context=1)
