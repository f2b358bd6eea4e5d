"""Parameters of a trained run (any task): the latest (or a given) checkpoint of a workdir.

    params = restore_params(config, workdir)        # e.g. a flow_matching, vocoder or v1 run

Reads only the params of the trainer's TrainState (no optimizer state), as numpy arrays,
checked against the config's shapes (omni_jax/train/checkpoint.py restore_params). Inference
(omni_jax/generate/) restores through this module, never through omni_jax/train/ directly.
omni_jax/convert/omni.py `restore_workdir` reads a 1.5 workdir without a config.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from omni_jax import sharding as shd
from omni_jax.tasks import get_task
from omni_jax.train import step as step_lib
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.workdir import workdir_path


def restore_params(config: Any, workdir: str | os.PathLike, step: int | None = None) -> Any:
    ckpt = Checkpointer(workdir_path(workdir) / "checkpoints", async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first (python -m launch.train ...)")
        task = get_task(config)
        abstract = shd.unbox(step_lib.abstract_init(task, "params"))
        leave_out = tuple(k for k in task.training_only if k not in abstract)  # heads of training stages only
        return jax.device_get(ckpt.restore_params(step, abstract, leave_out))
    finally:
        ckpt.close()


def latest_step(workdir: str | os.PathLike) -> int | None:
    """The newest checkpoint step of a trained workdir (None when it has none)."""
    ckpt = Checkpointer(workdir_path(workdir) / "checkpoints", async_save=False)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()
