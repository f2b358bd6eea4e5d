"""omni_jax/distributed.py: start-up from flags, and the bad starts each failing with the fix named
(real processes on 127.0.0.1 for the ones that need several processes)."""

import sys
import time

import pytest

from omni_jax import distributed
from omni_jax import sharding as shd
from tests import multiprocess as mp

CONFIG = "configs/backbone_tiny.py:runlocal"


def test_explicit_settings_are_checked(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.resolve() is None
    assert distributed.resolve("10.0.0.2:8476", 4, 3) == {"coordinator": "10.0.0.2:8476", "num_processes": 4,
                                                          "process_id": 3}
    with pytest.raises(distributed.DistributedStartupError, match=r"together; missing \['--process_id'\]"):
        distributed.resolve("10.0.0.2:8476", 4, None)
    with pytest.raises(distributed.DistributedStartupError, match="must be HOST:PORT"):
        distributed.resolve("10.0.0.2", 4, 0)
    with pytest.raises(distributed.DistributedStartupError, match=r"--process_id=4 must be in \[0, --num_processes=4\)"):
        distributed.resolve("h:1", 4, 4)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.resolve() == {"coordinator": "h:1", "num_processes": 2, "process_id": 1}


def test_batch_and_mesh_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"batch_size=10 does not split over the 4 processes.*multiple of 4 "
                                         r"\(e.g. 8 or 12\)"):
        distributed.check_batch_splits(10, 4)
    distributed.check_batch_splits(12, 4)
    with pytest.raises(ValueError, match=r"needs 16 devices but 8 are available \(2 processes x 4 local devices\); "
                                         r"make the product.*or start more processes"):
        shd.mesh_shape_from_config({"data": 16}, 8, " (2 processes x 4 local devices)")


def test_unreachable_coordinator_fails_in_time_naming_the_address(tmp_path):
    port = mp.free_port()  # nobody listens there
    argv = lambda i, _: [sys.executable, "-m", "launch.train", f"--config={CONFIG}", f"--workdir={tmp_path / 'w'}",
                         f"--coordinator=127.0.0.1:{port}", "--num_processes=2", "--process_id=1",
                         "--distributed_timeout=3"]
    t = time.monotonic()
    g = mp.Group(1, argv, str(tmp_path / "logs"), local_devices=1, timeout=120)
    assert g.wait() == [1]
    log = g.log(0)
    assert (f"process 1 of 2 could not reach the JAX coordinator at 127.0.0.1:{port} within 3 s" in log
            and "Start process 0" in log), log
    # (imports take most of it; the wait for the coordinator itself is the 3 s asked for)
    print(f"unreachable coordinator: failed after {time.monotonic() - t:.1f} s")


def test_bad_multi_process_starts(tmp_path):
    """Started at once (each pair of processes is independent): different configs, a batch that
    does not split over the processes, a mesh larger than the processes' devices."""
    cases = {
        "config": lambda i: [f"--config.train.seed={i}"],
        "batch": lambda i: ["--config.train.batch_size=9"],
        "mesh": lambda i: ["--config.mesh.data=16"],
    }
    groups = {}
    try:
        for name, extra in cases.items():
            argv = lambda i, port, extra=extra, name=name: mp.train_argv(CONFIG, str(tmp_path / name), 2, *extra(i))(i, port)
            groups[name] = mp.Group(2, argv, str(tmp_path / "logs" / name), local_devices=4, timeout=240)
        logs = {}
        for name, g in groups.items():
            codes = g.wait()
            logs[name] = [g.log(i) for i in range(2)]
            assert codes == [1, 1], (name, logs[name])
    finally:
        for g in groups.values():
            g.kill()
    for i in range(2):
        assert ("the 2 processes were started with different configs (processes [0] have config hash" in logs["config"][i]
                and "Start every process with the same --config file and the same --config.* overrides"
                in logs["config"][i]), logs["config"][i]
        assert ("config.train.batch_size=9 does not split over the 2 processes" in logs["batch"][i]
                and "multiple of 2 (e.g. 8 or 10)" in logs["batch"][i]), logs["batch"][i]
        assert ("needs 16 devices but 8 are available (2 processes x 4 local devices)" in logs["mesh"][i]
                ), logs["mesh"][i]
