"""Parameters of a trained run for inference: the latest (or a given) checkpoint of a workdir.

    params = restore_params(config, workdir)        # e.g. a flow_matching or vocoder run

Builds the run's layout and the optimizer state's abstract shapes for the checkpoint's stage
(the trainer saves the whole TrainState), restores on the current devices and returns only
the params tree (e.g. {"flow_matching": ...}).
"""

from __future__ import annotations

import os
from typing import Any

import jax
from flax import linen as nn

from omni_jax import sharding as shd
from omni_jax.tasks import get_task
from omni_jax.train import step as step_lib
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train.optimizer import build_optimizer
from omni_jax.train.trainer import parse_stages


def restore_params(config: Any, workdir: str, step: int | None = None) -> Any:
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first (python -m launch.train ...)")
        meta = ckpt.read_meta(step)
        stages = {s.name: s for s in parse_stages(config)}
        if meta["stage"] not in stages:
            raise ValueError(f"checkpoint {step} is from stage {meta['stage']!r}, which the config does not define")
        mesh = shd.make_mesh(config.mesh.to_dict())
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
            task = get_task(config)
            layout = step_lib.make_layout(task, mesh, config.train.batch_size)
            opt = build_optimizer(stages[meta["stage"]], layout.abstract_params)
            state, _, _ = ckpt.restore(step, step_lib.abstract_state(layout, opt))
        return state.params
    finally:
        ckpt.close()
