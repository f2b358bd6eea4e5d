"""omni_jax/train/integrity.py + checkpoint.py + trainer._resume_verified: every checkpoint records a
sha256 per array; an altered or truncated file of the latest checkpoint is detected, the run says
so, moves it aside and resumes from the previous one, ending bit-identical to the uninterrupted run."""

import logging
import shutil

import numpy as np
import pytest

from configs import backbone_tiny
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train.integrity import CheckpointCorruptError, array_hash, state_hashes, tree_hash, verify
from omni_jax.train.trainer import train


def _cfg():
    c = backbone_tiny.get_config("runlocal")
    c.train.steps = 6
    c.checkpoint.every = 3
    return c


def _final_hashes(workdir):
    ck = Checkpointer(workdir / "checkpoints")
    try:
        return ck.read_meta(6)["hashes"]
    finally:
        ck.close()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    wd = tmp_path_factory.mktemp("straight")
    train(_cfg(), str(wd))
    return wd


def test_hashes_name_the_arrays_that_differ():
    a = {"params": {"w": np.ones((2, 3), np.float32)}, "step": np.int32(3)}
    h = state_hashes(a)
    assert set(h) == {"params/w", "step"} and h["params/w"] == array_hash(np.ones((2, 3), np.float32))
    assert array_hash(np.ones((3, 2), np.float32)) != h["params/w"]  # the shape is part of the hash
    b = {"params": {"w": np.ones((2, 3), np.float32) * 1.0000001}, "step": np.int32(3)}
    with pytest.raises(CheckpointCorruptError, match=r"1 array\(s\) differ.*params/w"):
        verify(h, b, "X/3")
    assert tree_hash(h) != tree_hash(state_hashes(b)) and tree_hash(h) == tree_hash(dict(h))


def _largest_state_file(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["alter", "truncate"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(straight, tmp_path, caplog, damage):
    wd = tmp_path / "run"
    shutil.copytree(straight, wd)
    f = _largest_state_file(wd / "checkpoints" / "6")
    data = bytearray(f.read_bytes())
    if damage == "alter":
        mid = len(data) // 2
        data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
    else:
        data = data[: len(data) // 2]
    f.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="omni_jax"):
        r = train(_cfg(), str(wd))
    text = caplog.text
    assert "checkpoint 6 is corrupt" in text and "previous complete checkpoint, step 3" in text, text
    assert r["status"] == "done" and r["step"] == 6
    assert (wd / "checkpoints_corrupt" / "6").is_dir()
    got, want = _final_hashes(wd), _final_hashes(straight)
    assert got == want  # bit-identical to the uninterrupted run (every array's sha256)
