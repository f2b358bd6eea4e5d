"""omni_jax/train/rng.py: named streams. 1 vs 4 microbatches draw the same numbers and give the
same update (flow matching, the audio tokenizer); adding a component leaves the others' initial values unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from configs import audio_tokenizer_tiny, backbone_tiny, flow_matching_tiny, vocoder_tiny
from omni_jax import sharding as shd
from omni_jax.models.audio_tokenizer import AudioTokenizer
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


def _train(c, stage_name: str, microbatches: int, steps: int, read):
    """`steps` train steps of config `c`'s stage on one device: [read(metrics) per step], final state."""
    mesh = shd.make_mesh(dict(data=1), jax.devices()[:1])
    task = get_task(c)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        layout = step_lib.make_layout(task, mesh, c.train.batch_size)
        stage = stage_from_config(stage_name, c.stages[stage_name])
        opt = build_optimizer(stage, layout.abstract_params)
        params = step_lib.init_params(task, layout, 0)
        state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, step_lib.init_opt_state(opt, layout, params),
                                    rng_lib.stream(0, "step"), step_lib.init_model_state(task, layout, 0))
        fn = step_lib.make_train_step(task, opt, layout, microbatches=microbatches, donate=False)
        data = task.make_data(stage, start_step=0, process_index=0, process_count=1)
        out = []
        for _ in range(steps):
            state, m = fn(state, step_lib.global_batch_from_local(next(data), layout))
            out.append(read(m))
        return out, state


def _fm_run(microbatches, steps=2):
    c = flow_matching_tiny.get_config("runlocal")
    c.train.batch_size = 8
    losses, state = _train(c, "flow_matching", microbatches, steps, lambda m: float(m["cfm_loss"]))
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


def _tok_run(microbatches, steps=2):
    """The audio tokenizer (stage dropout, restart candidates, progressive replacement all drawn)."""
    c = audio_tokenizer_tiny.get_config("runlocal")  # batch 4, replacement probability < 1 for 4 steps
    # SGD: the update is linear in the gradient, so it shows the accumulation's fp32 error as it is.
    # (Adam divides by sqrt(nu): elements whose gradient is near 0 turn 1-ulp sums into up to lr-sized
    # steps; with adamw the params differ by 8.5e-6 after 1 step and 3.1e-5 after 2.)
    c.stages.tokenizer.groups.audio.update(optimizer="sgd")
    keys = ("reconstruction", "commitment", "quantized_fraction")
    metrics, state = _train(c, "tokenizer", microbatches, steps, lambda m: {k: float(m[k]) for k in keys})
    return metrics, jax.device_get(state.params), jax.device_get(state.model_state)


def test_audio_tokenizer_draws_per_row_so_one_or_four_microbatches_give_the_same_update():
    c = audio_tokenizer_tiny.get_config("runlocal")
    task = get_task(c)
    variables = jax.jit(lambda: nn.unbox(task.tokenizer.init(
        jax.random.PRNGKey(0), jnp.zeros((1, task.cfg.encoder.num_mel_bins, task.mel_frames)), jnp.full((1,), task.mel_frames))))()
    b = 8
    mel = jax.random.normal(jax.random.PRNGKey(1), (b, task.cfg.encoder.num_mel_bins, task.mel_frames))
    lengths = jnp.array([task.mel_frames, task.mel_frames // 2, task.mel_frames, 40] * 2)
    fwd = jax.jit(lambda mel, lengths, keys: task.tokenizer.apply(
        variables, mel, lengths, keys, jnp.full((mel.shape[0],), 0.5), method=AudioTokenizer.train_forward))
    rng = jax.random.PRNGKey(5)
    full = fwd(mel, lengths, rng_lib.row_keys(rng, jnp.arange(b)))
    for k in range(4):  # the rows of microbatch k draw what they draw in the whole batch
        part = fwd(mel[k::4], lengths[k::4], rng_lib.row_keys(rng, jnp.arange(k, b, 4)))
        for name in ("replaced", "num_stages", "codes"):
            np.testing.assert_array_equal(np.asarray(part[name]), np.asarray(full[name][k::4]), err_msg=name)
    assert 0 < float(full["replaced"].mean()) < 1 and len(set(np.asarray(full["num_stages"]).tolist())) > 1

    one, p1, s1 = _tok_run(1)
    four, p4, s4 = _tok_run(4)
    print("audio tokenizer metrics 1 vs 4 microbatches:", one, four)
    for a, b_ in zip(one, four):  # reconstruction and replacement depend on the draws: equal means equal draws
        np.testing.assert_allclose([b_[k] for k in a], [a[k] for k in a], rtol=1e-5)
    diff = max(float(np.max(np.abs(a - b_))) for a, b_ in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)))
    state_diff = max(float(np.max(np.abs(a - b_))) for a, b_ in zip(jax.tree.leaves(s1), jax.tree.leaves(s4)))
    print(f"max abs param diff after 2 steps: {diff:.3e}; codebook state diff: {state_diff:.3e}")
    assert diff <= 1e-5 and state_diff <= 1e-5  # fp32 sums reassociated over 4 microbatches


def test_vocoder_source_draws_per_row():
    """The vocoder task's random harmonic phases and noise: one key per global row."""
    from omni_jax.models.hift import SourceModule

    task = get_task(vocoder_tiny.get_config("runlocal"))
    assert task.row_rng
    src = SourceModule(task.model_cfg)
    f0 = jnp.tile(jnp.linspace(0.0, 300.0, task.frames)[None], (8, 1))  # unvoiced and voiced frames
    variables = src.init(jax.random.PRNGKey(0), f0[:1], jax.random.PRNGKey(1))
    fn = jax.jit(lambda f0, keys: src.apply(variables, f0, keys))
    rng = jax.random.PRNGKey(5)
    full = np.asarray(fn(f0, rng_lib.row_keys(rng, jnp.arange(8))))
    for k in range(4):
        part = np.asarray(fn(f0[k::4], rng_lib.row_keys(rng, jnp.arange(k, 8, 4))))
        d = float(np.max(np.abs(part - full[k::4])))
        assert d <= 1e-6, d  # the same draws (the output is elementwise per row)
    assert float(np.max(np.abs(full[0] - full[4]))) > 1e-3  # same f0, different rows: different draws


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


def test_a_task_init_is_traced_once_for_its_trees_and_all_its_components():
    """omni_jax/train/step.py `jitted_init`: the abstract trees and the initialisation of every
    component (each from its own key) reuse one trace of the task's flax init (the omni model's
    init traces its whole forward; once per component was 10 traces), with the values unchanged."""
    task = get_task(audio_tokenizer_tiny.get_config())
    traces, real = [], task.init
    task.init = lambda rng: (traces.append(1), real(rng))[1]  # runs only while jax traces it
    mesh = shd.make_mesh(dict(data=1), jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        layout = step_lib.make_layout(task, mesh, 8)
        params = jax.device_get(init_union([task], layout, 0))
    assert len(params) >= 3, sorted(params)  # several components, each from its own key
    assert len(traces) == 1, f"the task's init was traced {len(traces)} times"
    for k in params:  # the same values as tracing the init once per component
        direct = jax.device_get(jax.jit(lambda: nn.unbox(real(rng_lib.stream(0, "params", k)))[k])())
        for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(params[k])):
            np.testing.assert_array_equal(a, b)
