"""Task model state (TrainState.model_state): updated once per step from merged microbatch
statistics, sharded, never touched by the optimizer, checkpointed and resumed exactly."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from configs import common
from omni_jax import sharding as shd
from omni_jax.data.iterator import StepIndexedIterator
from omni_jax.tasks import register
from omni_jax.tasks.base import Task
from omni_jax.train import step as step_lib
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train.optimizer import build_optimizer, stage_from_config
from omni_jax.train.trainer import train

DECAY, B = 0.5, 8


def _batch(step):
    r = np.random.RandomState(step)
    x = r.randn(B, 4).astype(np.float32) + step
    return {"x": x, "y": x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)}


class EmaMeanTask(Task):
    """Linear regression whose state tracks an EMA of the batch mean of x (like EMA codebooks)."""

    def init(self, rng):
        return {"w": nn.LogicallyPartitioned(jnp.zeros((4,)), ("embed",))}

    def init_state(self, rng):
        return {"mean": nn.LogicallyPartitioned(jnp.zeros((4,)), ("embed",))}

    def batch_spec(self, global_batch):
        return {"x": (jax.ShapeDtypeStruct((global_batch, 4), jnp.float32), ("activation_batch", None)),
                "y": (jax.ShapeDtypeStruct((global_batch,), jnp.float32), ("activation_batch",))}

    def norms(self, batch):
        return {"rows": jnp.asarray(batch["x"].shape[0], jnp.float32)}

    def loss(self, params, batch, rng, norms):
        raise AssertionError("a stateful task is called through loss_with_state")

    def loss_with_state(self, params, state, batch, rng, norms):
        err = batch["x"] @ params["w"] - batch["y"]
        loss = jnp.sum(err ** 2) / norms["rows"]
        stats = {"sum": batch["x"].sum(0), "count": jnp.asarray(batch["x"].shape[0], jnp.float32)}
        return loss, {"loss": loss, "state_mean_seen": state["mean"][0] * batch["x"].shape[0] / norms["rows"]}, stats

    def update_state(self, state, stats, rng):
        mean = DECAY * state["mean"] + (1 - DECAY) * stats["sum"] / stats["count"]
        return {"mean": mean}, {"state_mean0": mean[0]}

    def make_data(self, stage, *, start_step, process_index, process_count, rows=None):
        del rows  # one process: every row
        return StepIndexedIterator(_batch, start_step=start_step, fingerprint="ema-toy")


register("ema_toy", "tests.train.test_model_state:EmaMeanTask")


def _config(steps=4):
    c = common.base()
    c.task = "ema_toy"
    c.model = ml_collections.ConfigDict(dict(name="toy"))
    c.train.update(batch_size=B, steps=steps, log_every=1, progress_bar=False)
    c.checkpoint.update(every=2, async_save=False)
    c.stages.fit = ml_collections.ConfigDict(dict(steps=steps, rules=[(r"w", "all")],
                                                  groups=dict(all=dict(lr=0.05, schedule="constant"))))
    c.stage_order = ("fit",)
    return c


def _run(mesh_cfg, devices, steps=3, microbatches=1):
    task = EmaMeanTask(_config())
    mesh = shd.make_mesh(mesh_cfg, devices)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        layout = step_lib.make_layout(task, mesh, B)
        opt = build_optimizer(stage_from_config("fit", _config().stages.fit), layout.abstract_params)
        params = step_lib.init_params(task, layout, 0)
        state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, step_lib.init_opt_state(opt, layout, params),
                                    jax.random.PRNGKey(0), step_lib.init_model_state(task, layout, 0))
        fn = step_lib.make_train_step(task, opt, layout, microbatches=microbatches, donate=False)
        for s in range(steps):
            state, m = fn(state, step_lib.global_batch_from_local(_batch(s), layout))
        return jax.device_get(state), m, state


def test_state_follows_the_statistics_and_the_optimizer_ignores_it():
    st, m, _ = _run(dict(data=1), jax.devices()[:1])
    want = np.zeros(4, np.float32)
    for s in range(3):
        want = DECAY * want + (1 - DECAY) * _batch(s)["x"].mean(0)
    np.testing.assert_allclose(st.model_state["mean"], want, rtol=1e-6)
    np.testing.assert_allclose(float(m["state_mean0"]), want[0], rtol=1e-6)
    # the loss saw the state from before the step's update; the optimizer state mirrors params only
    assert float(m["state_mean_seen"]) != float(m["state_mean0"])
    assert "mean" not in str(jax.tree_util.tree_structure(st.opt_state))


def test_microbatches_and_sharding_give_the_same_state():
    one, _, _ = _run(dict(data=1), jax.devices()[:1])
    acc, _, _ = _run(dict(data=1), jax.devices()[:1], microbatches=2)
    np.testing.assert_allclose(acc.model_state["mean"], one.model_state["mean"], rtol=1e-6)
    many, _, live = _run(dict(data=2, fsdp=2, tensor=2), jax.devices())
    np.testing.assert_allclose(many.model_state["mean"], one.model_state["mean"], rtol=1e-6)
    np.testing.assert_allclose(many.params["w"], one.params["w"], rtol=1e-5)
    assert live.model_state["mean"].sharding.spec == jax.P(("fsdp", "context"))


def test_state_is_checkpointed_and_resumed(tmp_path):
    import omni_jax.train.trainer as tr

    train(_config(4), str(tmp_path / "a"))

    class StopAfter2(tr._StopFlag):  # a preemption after 2 steps, as in tests/train/test_trainer.py
        calls = 0

        @property
        def signum(self):
            StopAfter2.calls += 1
            return 15 if StopAfter2.calls > 2 else None

        @signum.setter
        def signum(self, v):
            pass

    tr._StopFlag, saved = StopAfter2, tr._StopFlag
    try:
        assert train(_config(4), str(tmp_path / "b"))["status"] == "preempted"
    finally:
        tr._StopFlag = saved
    assert train(_config(4), str(tmp_path / "b"))["status"] == "done"
    got = {}
    for run in "ab":
        ck = Checkpointer(str(tmp_path / run / "checkpoints"))
        got[run] = ck.restore_tree(4)
        ck.close()
    assert np.array_equal(np.asarray(got["a"]["model_state"]["mean"]), np.asarray(got["b"]["model_state"]["mean"]))
    want = np.zeros(4, np.float32)
    for s in range(4):
        want = DECAY * want + (1 - DECAY) * _batch(s)["x"].mean(0)
    np.testing.assert_allclose(np.asarray(got["a"]["model_state"]["mean"]), want, rtol=1e-6)
