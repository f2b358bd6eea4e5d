"""omni_jax/train/optimizer.py: regex groups, frozen groups, schedules, stage transitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.train.optimizer import (
    GroupConfig, StageConfig, assign_groups, build_optimizer, count_state_elements, learning_rates,
    make_schedule, stage_from_config, transfer_state,
)

PARAMS = {
    "llm": {"layers": {"mlp": {"kernel": jnp.ones((2, 4, 8))}, "norm": {"scale": jnp.ones((2, 4))}},
            "lm_head": {"kernel": jnp.ones((4, 16))}},
    "visual": {"proj": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros((4,))}},
}


def _stage(rules, groups, steps=10, name="s", clip=None):
    return StageConfig(name, steps, tuple(rules), {g: GroupConfig(**c) for g, c in groups.items()}, clip)


def test_every_parameter_must_match_exactly_one_rule():
    with pytest.raises(ValueError) as e:
        assign_groups(PARAMS, [(r"llm/.*", "a"), (r"llm/layers/.*", "b")], "st")
    msg = str(e.value)
    assert "stage 'st'" in msg
    assert "2 unmatched: visual/proj/kernel, visual/proj/bias" in msg or "visual/proj/bias" in msg
    assert "llm/layers/mlp/kernel <- ['llm/.*', 'llm/layers/.*']" in msg
    labels = assign_groups(PARAMS, [(r"llm/.*", "a"), (r"visual/.*", "frozen")])
    assert labels["visual"]["proj"]["bias"] == "frozen" and labels["llm"]["lm_head"]["kernel"] == "a"


def test_stage_config_errors_name_the_key():
    ok = dict(steps=3, rules=[("x", "g")], groups=dict(g=dict(lr=1.0)))
    stage_from_config("s", ok)
    with pytest.raises(ValueError, match=r"config.stages.s: unknown key\(s\) \['step'\]"):
        stage_from_config("s", {**ok, "step": 1})
    with pytest.raises(ValueError, match=r"config.stages.s.groups.g: unknown key\(s\) \['learning_rate'\]"):
        stage_from_config("s", {**ok, "groups": dict(g=dict(lr=1.0, learning_rate=2))})
    with pytest.raises(ValueError, match=r"rules use group\(s\) \['h'\]"):
        stage_from_config("s", {**ok, "rules": [("x", "h")]})
    with pytest.raises(ValueError, match="'frozen' is reserved"):
        stage_from_config("s", {**ok, "groups": dict(g=dict(lr=1.0), frozen=dict(lr=0.0))})
    with pytest.raises(ValueError, match="schedule='cosin'"):
        stage_from_config("s", {**ok, "groups": dict(g=dict(lr=1.0, schedule="cosin"))})


def test_frozen_group_has_no_optimizer_state():
    st = _stage([(r"llm/layers/.*", "body"), (r"llm/lm_head/.*", "head"), (r"visual/.*", "frozen")],
                {"body": dict(lr=1e-3), "head": dict(lr=1e-2)})
    opt = build_optimizer(st, PARAMS)
    state = opt.tx.init(PARAMS)
    trainable = 2 * 4 * 8 + 2 * 4 + 4 * 16
    # mu + nu per trainable element, one count per trainable tensor, 2 schedule counters
    assert count_state_elements(state) == 2 * trainable + 3 + 2
    assert not any("visual" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0])


def test_per_group_learning_rates_apply():
    st = _stage([(r"llm/.*", "a"), (r"visual/.*", "b")],
                {"a": dict(lr=1.0, schedule="constant"), "b": dict(lr=0.01, schedule="constant")})
    opt = build_optimizer(st, PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    upd, _ = opt.tx.update(grads, opt.tx.init(PARAMS), PARAMS)
    # first Adam step with unit gradients is -lr * 1/(1+eps)
    np.testing.assert_allclose(upd["llm"]["lm_head"]["kernel"], -1.0, rtol=1e-6)
    np.testing.assert_allclose(upd["visual"]["proj"]["bias"], -0.01, rtol=1e-6)


def test_schedule_warmup_and_cosine_end():
    g = GroupConfig(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    s = make_schedule(g, 110)
    assert float(s(0)) == 0.0 and abs(float(s(5)) - 0.5) < 1e-6 and abs(float(s(10)) - 1.0) < 1e-6
    assert abs(float(s(110)) - 0.1) < 1e-6
    st = _stage([(".*", "g")], {"g": dict(lr=2.0, schedule="linear", min_lr_ratio=0.5)}, steps=11)
    assert learning_rates(st, 11) == {"g": pytest.approx(1.0)}  # reaches the end value at `steps`


def test_stage_transition_keeps_moments_of_parameters_that_stay_trainable():
    s1 = _stage([(r"llm/.*", "llm"), (r"visual/.*", "frozen")], {"llm": dict(lr=1e-3)})
    s2 = _stage([(r"llm/layers/.*", "frozen"), (r"llm/lm_head/.*|visual/.*", "all")], {"all": dict(lr=1e-4)})
    o1, o2 = build_optimizer(s1, PARAMS), build_optimizer(s2, PARAMS)
    state = o1.tx.init(PARAMS)
    adam = lambda st, g: st.inner_states[g].inner_state[0]  # multi_transform -> masked -> chain[0]
    g = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)
    for _ in range(3):
        _, state = o1.tx.update(g, state, PARAMS)
    new, carried = transfer_state(state, o2.tx.init(PARAMS))
    assert carried == 3  # lm_head kernel: count, mu, nu
    adam2 = adam(new, "all")
    assert int(adam2.count["llm"]["lm_head"]["kernel"]) == 3
    assert float(adam2.mu["llm"]["lm_head"]["kernel"][0, 0]) == pytest.approx(0.5 * (1 - 0.9 ** 3))
    assert int(adam2.count["visual"]["proj"]["kernel"]) == 0  # new: fresh bias correction
    assert float(jnp.abs(adam2.mu["visual"]["proj"]["kernel"]).max()) == 0.0
    # layers became frozen: no state kept for them
    leaves = jax.tree_util.tree_flatten_with_path(new.inner_states["all"])[0]
    assert leaves and not any("'layers'" in jax.tree_util.keystr(p) for p, _ in leaves)
