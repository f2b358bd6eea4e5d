"""omni_jax/data/shared_files.py and its users: atomic writes, bounded waits naming the
path, the length index split over processes, datasets prepared without file locks."""

import os
import re
import shutil
import threading

import numpy as np
import pytest

from omni_jax.data import shared_files


def test_write_atomic_and_wait(tmp_path):
    path = str(tmp_path / "sub" / "x.npz")
    shared_files.write_atomic(path, lambda tmp: np.savez(tmp, a=np.arange(3)))
    with np.load(path) as z:
        np.testing.assert_array_equal(z["a"], np.arange(3))

    def broken(tmp):
        open(tmp, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        shared_files.write_atomic(str(tmp_path / "y.npz"), broken)
    assert sorted(os.listdir(tmp_path)) == ["sub"]  # neither the file nor a temporary is left
    with pytest.raises(TimeoutError, match=r"waited 0.2 s for .*never\.json \(process 0 writes it\)"):
        shared_files.wait_for(str(tmp_path / "never.json"), 0.2, "process 0")
    later = str(tmp_path / "later.json")
    t = threading.Timer(0.3, lambda: open(later, "w").close())
    t.start()
    shared_files.wait_for(later, 10, "a thread")
    t.join()


def test_length_index_is_split_over_processes(tmp_path):
    from omni_jax.data.builders import prepare
    from omni_jax.data.omni_pipeline import OmniPipeline
    from tests.data.test_data_processes import make_config

    d = str(tmp_path / "data")
    for name in ("omni_text", "omni_images"):
        prepare(f"{name}/shapes_tiny", d)
    c = make_config(d)
    c.data.wait_timeout_s = 0.5
    del c.data.mixture["caption"]  # one component: process 1 gets as far as waiting for the merged index
    # process 1 alone measures its half, then waits for process 0's merged index and names it
    with pytest.raises(TimeoutError, match=r"omni_jax_plans/\w+\.npz \(process 0 \(it merges the length index\)"):
        OmniPipeline(c, process_index=1, process_count=2)
    parts = sorted(os.listdir(os.path.join(d, "omni_jax_plans")))
    assert len(parts) == 1 and parts[0].endswith(".part1of2.npz")
    p0 = OmniPipeline(c, process_index=0, process_count=2)  # measures its half, merges with process 1's part
    assert [p.reads for p in p0.plans] == [48]  # of 96 records
    p1 = OmniPipeline(c, process_index=1, process_count=2)
    assert [p.reads for p in p1.plans] == [0]  # the merged index is read, no record
    one = OmniPipeline(c)
    for a, b in zip(one.plans, p0.plans):
        np.testing.assert_array_equal(a.fp, b.fp)
    assert [f for f in os.listdir(os.path.join(d, "omni_jax_plans")) if ".part" in f or ".tmp" in f] == []


def test_prepare_waits_for_process_0_and_first_writer_wins(tmp_path, monkeypatch):
    from omni_jax.data import builders
    from omni_jax.data.builders import prepare

    d = str(tmp_path / "data")
    version = re.escape(str(builders.VERSION))
    with pytest.raises(TimeoutError, match=rf"omni_text/shapes_tiny/{version}/dataset_info\.json \(process 0 prepares"):
        prepare("omni_text/shapes_tiny", d, wait=True, wait_timeout_s=0.3)
    winner = prepare("omni_text/shapes_tiny", str(tmp_path / "winner"))
    open(os.path.join(winner.data_dir, "WINNER"), "w").close()
    real_rename = os.rename

    def another_process_renames_first(src, dst):  # the other process's copy lands just before ours
        if dst == os.path.join(d, "omni_text", "shapes_tiny", str(builders.VERSION)):
            shutil.copytree(winner.data_dir, dst)
        real_rename(src, dst)

    monkeypatch.setattr(builders.os, "rename", another_process_renames_first)
    b = prepare("omni_text/shapes_tiny", d)
    assert os.path.exists(os.path.join(b.data_dir, "WINNER"))  # the first copy is kept, ours discarded
    assert len(b.as_data_source()["train"]) == 96
    assert sorted(os.listdir(d)) == ["omni_text"]  # no temporary data dir left
