"""omni_jax/train/integrity.py + checkpoint.py + trainer._resume_verified: every checkpoint records a
hash per array (each process hashes its own shards; the same for any sharding); an altered or truncated file of the latest checkpoint is detected, the run says
so, moves it aside and resumes from the previous one, ending bit-identical to the uninterrupted run."""

import logging
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest

from configs import backbone_tiny
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train.integrity import (LEGACY_SCHEME, CheckpointCorruptError, array_hash, bytes_hash, state_hashes,
                                      tree_hash, verify)
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


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.int32, np.bool_, np.uint32])
def test_the_hash_is_computed_per_shard_and_does_not_depend_on_the_sharding(dtype):
    x = (np.arange(16 * 8).reshape(16, 8) * 0.37 % 3).astype(dtype)
    want = array_hash(x)
    mesh = jax.make_mesh((4, 2), ("a", "b"))
    specs = [jax.P(), jax.P("a"), jax.P("a", "b"), jax.P(None, "b"), jax.P(("a", "b")), jax.P("b", "a")]
    for spec in specs:  # replicated, split on one or both axes, in every order: one hash
        y = jax.device_put(x, jax.NamedSharding(mesh, spec))
        assert array_hash(y) == want, spec
    assert state_hashes({"w": jax.device_put(x, jax.NamedSharding(mesh, jax.P("a", "b")))})["w"] == want
    if dtype is not np.bool_:  # one element changed, or two swapped: a different hash
        z = x.copy()
        z[3, 4] = z[3, 4] + (z[3, 4] == 0) * 1 + 1
        assert array_hash(z) != want
    t = x.copy()
    t[0, 0], t[15, 5] = x[15, 5], x[0, 0]
    assert x[0, 0] == x[15, 5] or array_hash(t) != want
    assert array_hash(np.float32(2.0)) != array_hash(np.float32(3.0))  # 0-d arrays
    assert array_hash(x.reshape(8, 16)) != want  # the shape is part of the hash


def test_checkpoints_written_with_whole_array_sha256_still_verify():
    a = {"params": {"w": np.ones((2, 3), np.float32)}}
    old = state_hashes(a, LEGACY_SCHEME)
    assert old["params/w"] == bytes_hash(np.ones((2, 3), np.float32)) != state_hashes(a)["params/w"]
    verify(old, a, "X/3", LEGACY_SCHEME)
    with pytest.raises(CheckpointCorruptError, match="params/w"):
        verify(old, a, "X/3")  # read with the wrong scheme: every array differs
    with pytest.raises(ValueError, match="unknown checkpoint hash scheme 'v9'.*config.checkpoint.hashes=False"):
        state_hashes(a, "v9")


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
