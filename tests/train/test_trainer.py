"""omni_jax/train/trainer.py + checkpoint.py: exact resume, stage transitions, mismatch errors."""

import jax
import numpy as np
import pytest

from configs import backbone_tiny
from omni_jax.train.checkpoint import CheckpointMismatchError, Checkpointer
from omni_jax.train.metrics import read_metrics
from omni_jax.train.trainer import train


def _cfg(steps=6):
    c = backbone_tiny.get_config("runlocal")
    c.train.steps = steps
    return c


def _losses(workdir):
    return [(r["step"], r["loss"]) for r in read_metrics(workdir)]


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    straight = tmp_path / "straight"
    train(_cfg(6), str(straight))

    split = tmp_path / "split"
    c = _cfg(6)
    c.checkpoint.every = 3
    c.stages.pretrain.steps = 6
    # first run is cut after 3 steps by the same mechanism a preemption uses
    c3 = _cfg(6)
    c3.checkpoint.every = 3
    c3.stages.pretrain.steps = 6
    import omni_jax.train.trainer as tr

    orig = tr._StopFlag.__enter__

    class StopAfter3(tr._StopFlag):
        def __enter__(self):
            orig(self)
            self.calls = 0
            return self

        @property
        def signum(self):
            self.calls += 1
            return 15 if self.calls > 3 else None

        @signum.setter
        def signum(self, v):
            pass

    tr._StopFlag, saved = StopAfter3, tr._StopFlag
    try:
        r1 = train(c3, str(split))
    finally:
        tr._StopFlag = saved
    assert r1["status"] == "preempted" and r1["step"] == 3
    r2 = train(c, str(split))
    assert r2["status"] == "done" and r2["step"] == 6

    a, b = _losses(straight), _losses(split)
    assert [s for s, _ in a] == [1, 2, 3, 4, 5, 6] == [s for s, _ in b]
    assert a == b  # identical floats: bit for bit
    ck_a, ck_b = Checkpointer(str(straight / "checkpoints")), Checkpointer(str(split / "checkpoints"))
    pa = ck_a.restore_tree(6)
    pb = ck_b.restore_tree(6)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_from_another_config_names_the_tensors(tmp_path):
    train(_cfg(3), str(tmp_path))
    c = _cfg(6)
    c.model.llm.intermediate_size = 96
    with pytest.raises(CheckpointMismatchError) as e:
        train(c, str(tmp_path))
    msg = str(e.value)
    assert "params/llm/layers/mlp/gate_proj/kernel: (2, 32, 64) float32 -> (2, 32, 96) float32" in msg
    assert "intermediate_size" in msg and "fresh --workdir" in msg


def test_two_stages_freeze_then_unfreeze_and_keep_stage_end_checkpoints(tmp_path):
    c = _cfg(4)
    c.checkpoint.keep = 1
    c.stages.warm = dict(steps=3, rules=[(r"llm/lm_head/.*", "head"), (r"llm/(?!lm_head/).*", "frozen")],
                         groups=dict(head=dict(lr=1e-2, schedule="constant")))
    c.stage_order = ("warm", "pretrain")
    r = train(c, str(tmp_path))
    assert r["step"] == 7
    m = read_metrics(str(tmp_path))
    assert [x["stage"] for x in m] == ["warm"] * 3 + ["pretrain"] * 4
    assert "lr/head" in m[0] and "lr/llm" in m[-1]
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    assert 3 in ck.all_steps() and 7 in ck.all_steps()  # stage ends survive keep=1
    assert ck.read_meta(3)["stage"] == "warm"


def test_unknown_stage_in_order_is_named(tmp_path):
    c = _cfg(2)
    c.stage_order = ("pretrain", "sft")
    with pytest.raises(ValueError, match=r"config.stage_order names \['sft'\]"):
        train(c, str(tmp_path))


def test_profile_trace_and_data_wait_metrics(tmp_path):
    """config.profile writes a jax.profiler trace (TensorBoard profile plugin layout); the metrics
    split the step's host time into data wait and the rest."""
    c = _cfg(4)
    c.profile.update(start_step=1, num_steps=2)
    train(c, str(tmp_path))
    traces = list((tmp_path / "profile").glob("plugins/profile/*/*.xplane.pb"))
    assert traces, f"no trace under {tmp_path / 'profile'}"
    rows = read_metrics(str(tmp_path))
    assert all(0.0 <= r["data_wait_s"] <= r["step_time_s"] and 0.0 <= r["data_wait_fraction"] <= 1.0 for r in rows)
    c.profile.update(start_step=-1, num_steps=2)
    with pytest.raises(ValueError, match="config.profile.num_steps=2 needs config.profile.start_step >= 0"):
        train(c, str(tmp_path / "bad"))
