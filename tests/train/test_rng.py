"""omni_jax/train/rng.py: named streams. 1 vs 4 microbatches draw the same numbers and give the
same update; adding a component leaves the others' initial values unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from configs import backbone_tiny, flow_matching_tiny
from omni_jax import sharding as shd
from omni_jax.models.flow_matching import flow_matching_loss_sums
from omni_jax.tasks import get_task
from omni_jax.train import rng as rng_lib
from omni_jax.train import step as step_lib
from omni_jax.train.multitask import init_union, union_trees
from omni_jax.train.optimizer import build_optimizer, stage_from_config


def test_streams_are_stable_and_distinct():
    assert 0 <= rng_lib.name_id("params") < 2**31
    assert rng_lib.name_id("llm") == rng_lib.name_id("llm")
    keys = {n: tuple(np.asarray(rng_lib.stream(0, *n))) for n in
            [("params", "llm"), ("params", "visual"), ("model_state", "llm"), ("step",), ("data",)]}
    assert len(set(keys.values())) == len(keys)
    assert tuple(np.asarray(rng_lib.stream(1, "step"))) != keys[("step",)]


def test_row_keys_do_not_depend_on_the_microbatch_split():
    rng = jax.random.PRNGKey(3)
    full = rng_lib.row_keys(rng, jnp.arange(8))
    m = 4
    for k in range(m):  # microbatch k holds rows k, k+m, ... (step.py _split_microbatches)
        part = rng_lib.row_keys(rng, jnp.arange(k, 8, m))
        np.testing.assert_array_equal(np.asarray(part), np.asarray(full[k::m]))


def _fm_run(microbatches, steps=2):
    c = flow_matching_tiny.get_config("runlocal")
    c.train.batch_size = 8
    mesh = shd.make_mesh(dict(data=1), jax.devices()[:1])
    task = get_task(c)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        layout = step_lib.make_layout(task, mesh, c.train.batch_size)
        stage = stage_from_config("flow_matching", c.stages.flow_matching)
        opt = build_optimizer(stage, layout.abstract_params)
        params = step_lib.init_params(task, layout, 0)
        state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, step_lib.init_opt_state(opt, layout, params),
                                    rng_lib.stream(0, "step"))
        fn = step_lib.make_train_step(task, opt, layout, microbatches=microbatches, donate=False)
        data = task.make_data(stage, start_step=0, process_index=0, process_count=1)
        losses = []
        for _ in range(steps):
            state, m = fn(state, step_lib.global_batch_from_local(next(data), layout))
            losses.append(float(m["cfm_loss"]))
        return losses, jax.device_get(state.params)


def test_flow_matching_draws_per_row_so_one_or_four_microbatches_give_the_same_update():
    full, pf = _fm_run(1)
    acc, pa = _fm_run(4)
    print("cfm losses 1 vs 4 microbatches:", full, acc)
    # the CFM loss depends on the random times and noise: equal means equal draws
    np.testing.assert_allclose(acc, full, rtol=1e-5)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(pf), jax.tree.leaves(pa)))
    print("max abs param diff after 2 steps:", diff)
    assert diff <= 1e-5  # fp32 sums reassociated over 4 microbatches


def test_one_key_and_per_row_keys_are_both_accepted_and_differ():
    c = flow_matching_tiny.get_config("runlocal")
    task = get_task(c)
    params = jax.jit(lambda: nn.unbox(task.init(jax.random.PRNGKey(0)))["flow_matching"])()
    b, t = 2, c.data.max_frames
    hidden = jax.random.normal(jax.random.PRNGKey(1), (b, t, task.model_cfg.prenet_in_dim))
    mel = jax.random.normal(jax.random.PRNGKey(2), (b, t, task.model_cfg.n_mels))
    mask = jnp.ones((b, t))
    one = flow_matching_loss_sums(task.model, params, hidden, mel, mask, jax.random.PRNGKey(5))
    rows = flow_matching_loss_sums(task.model, params, hidden, mel, mask,
                                   rng_lib.row_keys(jax.random.PRNGKey(5), jnp.arange(b)))
    rows2 = flow_matching_loss_sums(task.model, params, hidden, mel, mask,
                                    rng_lib.row_keys(jax.random.PRNGKey(5), jnp.arange(b)))
    assert float(rows["cfm"]) == float(rows2["cfm"])
    assert float(one["cfm"]) != float(rows["cfm"])


def test_adding_a_component_leaves_the_others_initial_values_unchanged():
    lm, fm = get_task(backbone_tiny.get_config("runlocal")), get_task(flow_matching_tiny.get_config("runlocal"))
    mesh = shd.make_mesh(dict(data=1), jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        def layout_of(tasks):
            boxed = union_trees([(type(t).__name__, step_lib.abstract_boxed(t)[0]) for t in tasks])
            return step_lib.make_layout(tasks[0], mesh, 8, boxed, None)

        alone = jax.device_get(init_union([lm], layout_of([lm]), 0))
        both = jax.device_get(init_union([fm, lm], layout_of([fm, lm]), 0))
        fm_alone = jax.device_get(init_union([fm], layout_of([fm]), 0))
    assert set(both) == {"llm", "flow_matching"}
    for a, b in zip(jax.tree.leaves(alone["llm"]), jax.tree.leaves(both["llm"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(fm_alone["flow_matching"]), jax.tree.leaves(both["flow_matching"])):
        np.testing.assert_array_equal(a, b)
    # each component's values come from its own key, not the run's PRNGKey(seed)
    direct = jax.device_get(jax.jit(lambda: nn.unbox(lm.init(rng_lib.stream(0, "params", "llm")))["llm"])())
    for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(alone["llm"])):
        np.testing.assert_array_equal(a, b)
