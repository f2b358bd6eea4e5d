"""Real OS processes on 127.0.0.1 for the multi-process tests: a free port, a bounded time that
fails with the processes' logs, and every child killed when the test ends (pass or fail)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from omni_jax import cpu_simulation
from tests import compile_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(local_devices: int, cache_dir: str | None = None) -> dict:
    e = dict(os.environ)
    e["XLA_FLAGS"] = cpu_simulation.set_devices(compile_flags.add(cpu_simulation.TERMINATE_TIMEOUT), local_devices)  # conftest
    e["JAX_PLATFORMS"] = "cpu"
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e["PYTHONUNBUFFERED"] = "1"
    if cache_dir:  # runs of one test share compiled programs (same program, same bits)
        e["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        e["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return e


class Group:
    """N processes of one command (`argv(i, port)` gives process i's argv), logs in `logdir`."""

    def __init__(self, n: int, argv, logdir: str, *, local_devices: int, cache_dir: str | None = None,
                 timeout: float = 240.0):
        self.port = free_port()
        self.timeout, self.deadline = timeout, time.monotonic() + timeout
        os.makedirs(logdir, exist_ok=True)
        self.logs = [os.path.join(logdir, f"process{i}.log") for i in range(n)]
        self.procs = []
        try:
            for i in range(n):
                with open(self.logs[i], "w") as f:
                    self.procs.append(subprocess.Popen(argv(i, self.port), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                                       env=env(local_devices, cache_dir), start_new_session=True))
        except BaseException:
            self.kill()
            raise

    def log(self, i: int, tail: int = 4000) -> str:
        with open(self.logs[i], errors="replace") as f:
            return f.read()[-tail:]

    def wait(self) -> list[int]:
        """Exit codes; on timeout every process is killed and the test fails with the logs."""
        try:
            codes = []
            for i, p in enumerate(self.procs):
                left = self.deadline - time.monotonic()
                try:
                    codes.append(p.wait(timeout=max(left, 0.1)))
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"process {i} of {len(self.procs)} did not finish within {self.timeout:.0f} s; "
                                         "logs:\n" + "\n".join(f"--- process {j}\n{self.log(j)}" for j in range(len(self.procs))))
            return codes
        finally:
            self.kill()

    def signal(self, i: int, sig=signal.SIGTERM) -> None:
        self.procs[i].send_signal(sig)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def train_argv(config: str, workdir: str, n: int, *overrides: str):
    """launch.train as process i of n (n == 1 still starts jax.distributed: gloo collectives)."""
    def argv(i, port):
        return [sys.executable, "-m", "launch.train", f"--config={config}", f"--workdir={workdir}",
                f"--coordinator=127.0.0.1:{port}", f"--num_processes={n}", f"--process_id={i}",
                "--distributed_timeout=60", *overrides]
    return argv


def metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip().endswith("}")]


def wait_for_step(group: Group, workdir: str, step: int) -> None:
    while time.monotonic() < group.deadline:
        if any(r["step"] >= step for r in metrics(workdir)):
            return
        for i, p in enumerate(group.procs):
            if p.poll() is not None:
                raise AssertionError(f"process {i} exited early ({p.returncode}):\n{group.log(i)}")
        time.sleep(0.02)
    group.kill()
    raise AssertionError(f"no step {step} within {group.timeout:.0f} s:\n{group.log(0)}")


def saved_state(workdir: str, step: int) -> dict:
    """A checkpoint's TrainState read onto this process's first device, flattened: {path: numpy array}."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step), "state")
    ck = ocp.StandardCheckpointer()
    meta = ck.metadata(path)
    tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", meta)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), tree,
                          is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    flat = jax.tree_util.tree_flatten_with_path(ck.restore(path, target))[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}
