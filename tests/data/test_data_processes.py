"""Per-host data with real OS processes: the global batch at a step does not depend on the
process count, each process reads only its share of the length index and only the records
of its own rows, and the order does not depend on the grain worker count.

Children are plain python processes (tests/data/data_host_child.py) building the iterator
with process_index / process_count (or an explicit row list), bounded in time and always
killed at the end."""

import json
import os
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUBSETS = ("omni_text", "omni_images")
STEPS = 3
TIMEOUT_S = 240


def make_config(data_dir, num_workers=0, batch=8):
    c = ml_collections.ConfigDict()
    c.train = ml_collections.ConfigDict(dict(batch_size=batch))
    c.data = common.omni_data(seq_len=192, max_patches=64, max_vision_items=6, max_audio_chunks=0,
                              max_speech_chunks=0, mel_frames=600)
    c.data.data_dir = data_dir
    c.data.num_workers = num_workers
    c.data.wait_timeout_s = 120.0
    c.data.mixture = ml_collections.ConfigDict({
        "caption": dict(dataset="omni_images/shapes_tiny", format="caption", weight=0.5),
        "text": dict(dataset="omni_text/shapes_tiny", format="text", weight=0.5, split_long=True)})
    c.stages = ml_collections.ConfigDict()
    return c


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from omni_jax.data.builders import prepare

    d = str(tmp_path_factory.mktemp("prepared"))
    for name in SUBSETS:
        prepare(f"{name}/shapes_tiny", d)
    return d


def fresh_data_dir(prepared, path):
    """A data dir with the prepared datasets but no plan cache (so the length index is built)."""
    os.makedirs(path)
    for name in SUBSETS:
        os.symlink(os.path.join(prepared, name), os.path.join(path, name))
    return str(path)


def run_children(jobs):
    """Runs every child at once; returns their outputs; kills them all on failure or timeout."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "tests.data.data_host_child", json.dumps(j)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for j in jobs]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p, j in zip(procs, jobs):
            try:
                out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"data process {j['process_index']}/{j['process_count']} did not finish in {TIMEOUT_S} s")
            assert p.returncode == 0, f"data process {j['process_index']}/{j['process_count']} failed:\n{out.decode()}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for j in jobs:
        with np.load(j["out"]) as z:
            batches = {k: z[k] for k in z.files}
        with open(j["out"] + ".json") as f:
            results.append((batches, json.load(f)))
    return results


def test_global_batches_do_not_depend_on_the_process_count(prepared, tmp_path):
    import jax
    from jax.sharding import Mesh

    from omni_jax import sharding as shd
    from omni_jax.data.host_rows import rows_by_process
    from tests.data.test_host_rows import batch_shardings, by_position

    # 4 processes whose mesh has tensor spanning process pairs: processes 0-1 and 2-3 feed the same rows
    m = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 1, 2, 2), shd.MESH_AXES)
    mesh_rows = rows_by_process(batch_shardings(m), 8, by_position(m, [0, 0, 1, 1, 2, 2, 3, 3]))
    groups = {"one": (1, None), "two": (2, None), "four": (4, mesh_rows)}
    jobs = []
    for name, (n, rows) in groups.items():
        d = fresh_data_dir(prepared, tmp_path / name)
        jobs += [dict(data_dir=d, process_index=p, process_count=n, steps=STEPS, out=str(tmp_path / f"{name}{p}.npz"),
                      rows=None if rows is None else rows[p].tolist()) for p in range(n)]
    res = run_children(jobs)
    one, two, four = res[0], res[1:3], res[3:]
    whole = one[0]
    assert whole["tokens_0"].shape[0] == 8
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([two[0][0][k], two[1][0][k]]), whole[k], err_msg=k)
        np.testing.assert_array_equal(np.concatenate([four[0][0][k], four[2][0][k]]), whole[k], err_msg=k)
        np.testing.assert_array_equal(four[1][0][k], four[0][0][k], err_msg=k)  # same data shard, same rows
        np.testing.assert_array_equal(four[3][0][k], four[2][0][k], err_msg=k)
    assert not np.array_equal(whole["tokens_0"], whole["tokens_1"])
    # planning: each process measured exactly its 1/N share of every dataset's length index
    records = one[1]["records"]
    for n, group in ((1, [one]), (2, two), (4, four)):
        for p, (_, info) in enumerate(group):
            for comp, total in records.items():
                assert info["plan_reads"][comp] == total * (p + 1) // n - total * p // n, (n, p, comp, info)
            # building: only the records of this process's rows, each once per row entry
            assert info["build_reads"] == info["entries"] > 0
    assert two[0][1]["build_reads"] + two[1][1]["build_reads"] == one[1]["build_reads"]
    # the merged index is cached; the parts were removed
    plans = [f for f in os.listdir(os.path.join(tmp_path / "four", "omni_jax_plans")) if ".rows-" not in f]
    assert len(plans) == 2 and all(f.endswith(".npz") and ".part" not in f for f in plans), plans


def test_worker_processes_do_not_change_the_order(prepared, tmp_path):
    from omni_jax.data.omni_pipeline import make_omni_iterator

    d = fresh_data_dir(prepared, tmp_path / "w")
    ref = make_omni_iterator(make_config(d), start_step=1)
    want = [next(ref) for _ in range(4)]
    for workers in (2,):  # worker w builds steps w, w+2, ...; grain interleaves them back in order
        it = make_omni_iterator(make_config(d, num_workers=workers), start_step=1)
        try:
            got = [next(it) for _ in range(4)]
        finally:
            it.close()
        for a, b in zip(want, got):
            assert set(a) == set(b)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k} with {workers} workers")
    with pytest.raises(ValueError, match="config.data.num_workers must be >= 0"):
        make_omni_iterator(make_config(d, num_workers=-1))
