"""Environment for several simulated CPU devices in one process (`--xla_force_host_platform_device_count`).

XLA:CPU runs the thunks of every simulated device on one shared thread pool, sized by the
machine's cores unless PJRT_NPROC says otherwise, and a collective blocks its thread until every
device arrives. Some collectives of a step are left unordered, so two devices can block in two
DIFFERENT ones; when that takes every thread of the pool, nothing else runs and the step hangs.
Measured on this 2-core machine (a pool of 2): the tiny 1.5 pipeline on mesh data 1 x fsdp 2
(`launch.certify --meshes=data=1,fsdp=2`) hung in image_audio_text_1 every time, one device in
the all-gather of a layer's weights inside the LLM backward scan, the other in the all-reduce of
the audio head's weight gradient outside it, until XLA aborted after 40 s (`Termination timeout
... Expected 2 threads to join the rendezvous, but only 1 of them arrived`). The sequential
scheduler (`--xla_cpu_enable_concurrency_optimized_scheduler=false`) only moved the hang to
another stage (audio_tokenizer). A pool with threads to spare for blocked collectives
(`threads(devices)`) lets every device reach the collective the other waits in.

Real TPU/GPU devices each run their own stream in program order and never need this; nor do
several processes of one device each (gloo). `launch.certify` and `launch.mesh_check` apply it;
with `launch.train` on simulated devices set it yourself (`PJRT_NPROC=6` for 2 devices).
The pool size can change how XLA splits a kernel over threads, so runs compared bit for bit
must share it (a certificate's variants all do).
"""

from __future__ import annotations

import os
import re

# a device thread that is merely slow on a loaded machine may wait (callers bound their runs)
TERMINATE_TIMEOUT = "--xla_cpu_collective_call_terminate_timeout_seconds=3600"  # XLA's default: 40 s
FLAGS = "--xla_cpu_collective_call_warn_stuck_timeout_seconds=600 " + TERMINATE_TIMEOUT


DEVICE_FLAG = "--xla_force_host_platform_device_count"


def simulated_devices(xla_flags: str) -> int:
    """The device count `--xla_force_host_platform_device_count=N` asks for (1 without it)."""
    m = re.findall(DEVICE_FLAG + r"=(\d+)", xla_flags or "")
    return int(m[-1]) if m else 1


def set_devices(xla_flags: str, devices: int) -> str:
    """`xla_flags` asking for `devices` simulated CPU devices (any count it had is replaced)."""
    rest = [f for f in (xla_flags or "").split() if f.split("=")[0] != DEVICE_FLAG]
    return " ".join([*rest, f"{DEVICE_FLAG}={devices}"])


def threads(devices: int) -> int:
    """Pool size with room for every device blocked in a different collective, twice over."""
    return max(os.cpu_count() or 1, 2 * devices + 2)


def with_flags(xla_flags: str) -> str:
    """`xla_flags` plus each of FLAGS it does not set already (a user's own value wins)."""
    have = {f.split("=")[0] for f in (xla_flags or "").split()}
    return " ".join([*(xla_flags or "").split(), *(f for f in FLAGS.split() if f.split("=")[0] not in have)])


def apply(environ, devices: int | None = None) -> bool:
    """Before jax starts its backend: FLAGS into environ["XLA_FLAGS"] and PJRT_NPROC (unless
    PJRT_NPROC or NPROC is set) when several CPU devices are simulated (`devices`, default the
    XLA_FLAGS count). Returns whether it changed anything."""
    before = dict(environ)
    devices = devices or simulated_devices(environ.get("XLA_FLAGS", ""))
    if devices <= 1:
        return False
    environ["XLA_FLAGS"] = with_flags(environ.get("XLA_FLAGS", ""))
    if "PJRT_NPROC" not in environ and "NPROC" not in environ:
        environ["PJRT_NPROC"] = str(threads(devices))
    return dict(environ) != before
