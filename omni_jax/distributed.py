"""Multi-process start-up: `jax.distributed` from the environment, gloo on CPU, one log line.

    from omni_jax import distributed
    distributed.initialize()   # the first thing every launch entry point does (before jax.devices())

Where the process count comes from (MaxText's `maybe_initialize_jax_distributed_system`):
  * explicit: `--coordinator=HOST:PORT --num_processes=N --process_id=I` (all three), or the
    environment variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
  * automatic: a TPU VM pod, GKE (TPU or k8s indexed jobs), SLURM or Open MPI, detected by
    jax's own cluster detection (`jax._src.clusters`);
  * otherwise one process and nothing to initialise.
On CPU several processes need cross-process collectives: gloo is selected
(`jax_cpu_collectives_implementation`), so N processes x M local CPU devices form one
global mesh of N*M devices (how the multi-process tests run on 127.0.0.1).

An unreachable coordinator fails after `timeout_s` with an error naming the address.
`check_same_config` compares a hash of the config across processes at start-up, and
`check_batch_splits` refuses a global batch that does not split over the processes.
The key-value store of the coordinator (`kv_allgather`) lets processes agree on small
host-side facts without a device collective (see omni_jax/train/host_sync.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Any

import jax

log = logging.getLogger("omni_jax")

DEFAULT_TIMEOUT_S = 300


class DistributedStartupError(RuntimeError):
    pass


def _detected_cluster() -> str | None:
    """The name of the cluster environment jax's auto-detection would use (None: none)."""
    from jax._src import clusters

    for env in clusters.ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env.__name__
    return None


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise DistributedStartupError(f"environment variable {name}={v!r} is not an integer") from None


def resolve(coordinator: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> dict[str, Any] | None:
    """The explicit settings (flags, else JAX_* environment variables), checked; None when
    none is given (then the cluster environment, if any, decides)."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    given = {"--coordinator": coordinator, "--num_processes": num_processes, "--process_id": process_id}
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise DistributedStartupError(
            f"multi-process start-up needs --coordinator, --num_processes and --process_id together; "
            f"missing {missing} (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}", coordinator):
        raise DistributedStartupError(f"--coordinator={coordinator!r} must be HOST:PORT, e.g. 10.0.0.2:8476")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise DistributedStartupError(
            f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    return {"coordinator": coordinator, "num_processes": int(num_processes), "process_id": int(process_id)}


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, timeout_s: int = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Initialises jax.distributed when this run has several processes (idempotent).

    Returns {'process_index', 'process_count', 'how'} with how in {'single', 'explicit', <cluster>}."""
    if jax.distributed.is_initialized():
        return {"process_index": jax.process_index(), "process_count": jax.process_count(), "how": "already"}
    explicit = resolve(coordinator, num_processes, process_id)
    cluster = None if explicit else _detected_cluster()
    if explicit is None and cluster is None:
        return {"process_index": 0, "process_count": 1, "how": "single"}
    # (an explicit --num_processes=1 still initialises: its CPU collectives are then gloo's, the
    # same reduction order as N processes; how the equality tests compare 1 and 2 processes)
    # CPU devices of several processes talk through gloo (only the CPU client reads this)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(initialization_timeout=int(timeout_s))
    if explicit is not None:
        kwargs.update(coordinator_address=explicit["coordinator"], num_processes=explicit["num_processes"],
                      process_id=explicit["process_id"], cluster_detection_method="deactivate")
    where = explicit["coordinator"] if explicit else f"the coordinator of the {cluster} environment"
    if explicit is not None and explicit["process_id"] != 0:
        # jax's client aborts the whole process (no Python exception) when it cannot register in
        # time, so the coordinator's port is probed first and an unreachable one is a clear error
        _wait_reachable(explicit["coordinator"], timeout_s, explicit)
    log.info("joining the JAX coordinator at %s (timeout %d s)", where, timeout_s)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # jax raises XlaRuntimeError / ValueError with gRPC text
        who = (f"process {explicit['process_id']} of {explicit['num_processes']}" if explicit else "this process")
        raise DistributedStartupError(
            f"{who} could not join the JAX coordinator at {where} within {timeout_s} s: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}\n"
            "Check that process 0 runs on that host and port (it hosts the coordinator), that every "
            "process got the same --coordinator and --num_processes, that the port is reachable, or "
            "raise --distributed_timeout.") from e
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "how": "explicit" if explicit else cluster}


def _wait_reachable(address: str, timeout_s: float, explicit: dict) -> None:
    import socket
    import time

    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    deadline = time.monotonic() + float(timeout_s)
    last = None
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(2.0, max(float(timeout_s), 0.1))):
                return
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    raise DistributedStartupError(
        f"process {explicit['process_id']} of {explicit['num_processes']} could not reach the JAX coordinator at "
        f"{address} within {timeout_s} s ({type(last).__name__}: {last}). Start process 0 (it hosts the "
        "coordinator) with the same --coordinator, check the host name and port and that the port is open, "
        "or raise --distributed_timeout.")


def topology_line(mesh: Any = None) -> str:
    """'process i of n: local devices [...]; global mesh {...} (D devices)'."""
    local = [d.id for d in jax.local_devices()]
    plat = jax.local_devices()[0].platform if local else "?"
    glob = (f"global mesh {dict(mesh.shape)} ({mesh.devices.size} devices)" if mesh is not None
            else f"{jax.device_count()} global devices")
    return (f"process {jax.process_index()} of {jax.process_count()}: {len(local)} local {plat} devices "
            f"{local}; {glob}")


# ---------------------------------------------------------------- agreement between processes


def _client():
    from jax._src import distributed as _d

    return _d.global_state.client


def kv_allgather(tag: str, value: Any, *, timeout_s: float = 3600.0) -> list[Any]:
    """Every process's JSON-able `value` (index = process index), through the coordinator's
    key-value store (host only: no device work, so it never waits for queued steps).
    `tag` must be unique per call site and round (e.g. include the step)."""
    n = jax.process_count()
    if n == 1:
        return [value]
    client, me = _client(), jax.process_index()
    client.key_value_set(f"omni_jax/{tag}/{me}", json.dumps(value))
    out = []
    for p in range(n):
        if p == me:
            out.append(value)
            continue
        try:
            raw = client.blocking_key_value_get(f"omni_jax/{tag}/{p}", int(timeout_s * 1000))
        except Exception as e:
            raise DistributedStartupError(
                f"process {p} did not report {tag!r} within {timeout_s:.0f} s ({type(e).__name__}): "
                "it is stuck or died; see its log") from e
        out.append(json.loads(raw))
    return out


def kv_delete(tag: str) -> None:
    """Removes this process's key of a finished `kv_allgather` round."""
    if jax.process_count() > 1:
        _client().key_value_delete(f"omni_jax/{tag}/{jax.process_index()}")


def config_hash(config: Any) -> str:
    text = config.to_json_best_effort(sort_keys=True) if hasattr(config, "to_json_best_effort") else json.dumps(
        config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same_config(config: Any, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Raises on every process when the processes were started with different configs."""
    mine = config_hash(config)
    hashes = kv_allgather("config_hash", mine, timeout_s=timeout_s)
    if len(set(hashes)) > 1:
        groups: dict[str, list[int]] = {}
        for p, h in enumerate(hashes):
            groups.setdefault(h, []).append(p)
        desc = "; ".join(f"processes {ps} have config hash {h}" for h, ps in groups.items())
        raise DistributedStartupError(
            f"the {len(hashes)} processes were started with different configs ({desc}; this is process "
            f"{jax.process_index()}). Start every process with the same --config file and the same "
            "--config.* overrides (compare their config.json).")
    return mine


def check_batch_splits(global_batch: int, process_count: int | None = None) -> None:
    """The global batch must split into equal per-process shares."""
    n = jax.process_count() if process_count is None else int(process_count)
    if int(global_batch) % n:
        lo = (int(global_batch) // n) * n
        sug = [b for b in (lo, lo + n) if b > 0]
        raise ValueError(
            f"config.train.batch_size={global_batch} does not split over the {n} processes (each feeds an "
            f"equal share of the global batch); set --config.train.batch_size to a multiple of {n} "
            f"(e.g. {' or '.join(map(str, sug))}).")


def define_flags(flags_module: Any = None) -> None:
    """--coordinator / --num_processes / --process_id / --distributed_timeout (absl)."""
    if flags_module is None:
        from absl import flags as flags_module
    f = flags_module
    if "coordinator" in f.FLAGS:
        return
    f.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (multi-process runs; else the environment decides).")
    f.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
    f.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
    f.DEFINE_integer("distributed_timeout", DEFAULT_TIMEOUT_S,
                     "Seconds to wait for the coordinator and the other processes at start-up.")


def initialize_from_flags() -> dict[str, Any]:
    from absl import flags

    F = flags.FLAGS
    return initialize(F.coordinator, F.num_processes, F.process_id, timeout_s=F.distributed_timeout)


def initialize_single_process_tool(tool: str) -> None:
    """Start-up of the tools that run as one process (launch.infer, launch.convert): the same flags
    and environment as training, and a clear error if they describe several processes."""
    info = initialize_from_flags()
    if info["process_count"] > 1:
        raise DistributedStartupError(
            f"{tool} runs as a single process, but this start-up describes {info['process_count']} "
            f"({info['how']}); run it on one host without --coordinator / --num_processes / --process_id.")
