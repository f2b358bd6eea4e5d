"""The trainer: one loop that runs a config's stages in order (big_vision train.py style).

    train(config, workdir)

For each stage of `config.stage_order`: build the stage's optimizer (regex groups), move
the optimizer state over from the previous stage (moments of parameters that stay
trainable are kept), jit the step, stream step-indexed batches, log, checkpoint every
`config.checkpoint.every` steps and at the stage end. A restart with the same workdir
resumes from the latest checkpoint and reproduces the uninterrupted run bit for bit.
SIGTERM / SIGINT make it save a checkpoint at the next step boundary and return; with
several processes a signal to any one of them makes all save the same step (host_sync.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from tqdm import tqdm

from omni_jax import distributed
from omni_jax import sharding as shd
from omni_jax.train import step as step_lib
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train.host_sync import HostSync
from omni_jax.train.metrics import MetricsWriter
from omni_jax.train.multitask import StageTasks, init_union, union_trees
from omni_jax.train.optimizer import build_optimizer, learning_rates, stage_from_config, transfer_state

log = logging.getLogger("omni_jax")


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals cannot be handled here
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def parse_stages(config) -> list:
    order = list(config.stage_order)
    missing = [n for n in order if n not in config.stages]
    if missing:
        raise ValueError(f"config.stage_order names {missing}, which config.stages does not define "
                         f"(defined: {sorted(config.stages.keys())})")
    if not order:
        raise ValueError("config.stage_order is empty: nothing to train")
    return [stage_from_config(n, config.stages[n]) for n in order]


def _meta(config, stage, stage_index, stage_step, step) -> dict:
    task = config.stages[stage.name].get("task", None) or config.task
    return {"stage": stage.name, "stage_index": stage_index, "stage_step": int(stage_step),
            "step": int(step), "task": task, "model": config.model.to_dict()}


def train(config, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) every stage. Returns {'status', 'step', 'last_metrics'}."""
    os.makedirs(workdir, exist_ok=True)
    stages = parse_stages(config)
    starts = np.cumsum([0] + [s.steps for s in stages]).tolist()
    distributed.check_batch_splits(config.train.batch_size)
    mesh = shd.make_mesh(config.mesh.to_dict())
    log.info("%s", distributed.topology_line(mesh))
    if jax.process_count() > 1:
        distributed.check_same_config(config)
    tasks = StageTasks(config, [s.name for s in stages])
    task = tasks.main
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.checkpoint.keep,
        keep_steps=starts[1:],
        async_save=config.checkpoint.get("async_save", True),
    )
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES), _StopFlag() as stop:
        # one parameter tree for the whole run: the union of the stage tasks' trees
        trees = [(type(t).__name__, step_lib.abstract_boxed(t)) for t in tasks.unique]
        boxed = union_trees([(n, b[0]) for n, b in trees], "parameters")
        boxed_state = union_trees([(n, b[1]) for n, b in trees], "model state")
        layouts = {s.name: step_lib.make_layout(tasks[s.name], mesh, config.train.batch_size, boxed, boxed_state)
                   for s in stages}
        layout = layouts[stages[0].name]
        # ---- where to start: a checkpoint, imported weights, or random init ----
        state, data_state, si, stage_step = None, None, 0, 0
        latest = ckpt.latest_step()
        if latest is not None:
            meta = ckpt.read_meta(latest)
            si, stage_step = int(meta["stage_index"]), int(meta["stage_step"])
            if si >= len(stages) or stages[si].name != meta["stage"]:
                raise ValueError(f"checkpoint {latest} is from stage {meta['stage']!r} (index {si}), "
                                 f"which config.stage_order {list(config.stage_order)} does not have there")
            opt = build_optimizer(stages[si], layout.abstract_params)
            state, _, data_state = ckpt.restore(latest, step_lib.abstract_state(layout, opt))
            log.info("resumed from step %d (stage %s, step %d of %d)", latest, meta["stage"], stage_step, stages[si].steps)
            if stage_step >= stages[si].steps:  # that stage was complete: enter the next
                si, stage_step, data_state = si + 1, 0, None
        else:
            # the main task imports what the checkpoint has; only the other components are initialised
            imported, imported_state = {}, {}
            if config.init.get("checkpoint"):
                imported = task.import_params(config.init.checkpoint, layout.abstract_params)
                imported = jax.device_put(imported, {k: layout.param_shardings[k] for k in imported})
                if layout.abstract_model_state is not None:
                    imported_state = task.import_state(config.init.checkpoint, layout.abstract_model_state) or {}
                    imported_state = jax.device_put(
                        imported_state, {k: layout.model_state_shardings[k] for k in imported_state})
            params = dict(init_union(tasks.unique, layout, config.train.seed, "params", skip=imported), **imported)
            model_state = init_union(tasks.unique, layout, config.train.seed, "state", skip=imported_state)
            if model_state is not None:
                model_state = dict(model_state, **imported_state)
            if config.init.get("checkpoint"):
                log.info("imported %s from %s; initialised %s", sorted(imported), config.init.checkpoint,
                         sorted(set(params) - set(imported)))
            state = step_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                                        opt_state=None, rng=jax.random.PRNGKey(config.train.seed),
                                        model_state=model_state)
        metrics_log = MetricsWriter(workdir, resume_step=latest if latest is not None else 0)
        last: dict[str, float] = {}
        status = "done"
        sync = HostSync()  # stop and data-error decisions taken by every process together
        saved_step = latest

        for si in range(si, len(stages)):
            stage = stages[si]
            stage_task, layout = tasks[stage.name], layouts[stage.name]
            opt = build_optimizer(stage, layout.abstract_params)
            if data_state is None:  # entering the stage: fresh optimizer, moments carried over
                fresh = step_lib.init_opt_state(opt, layout, state.params)
                carried = 0
                if state.opt_state is not None:
                    fresh, carried = transfer_state(state.opt_state, fresh)
                state = state.replace(opt_state=fresh)
                log.info("stage %s: %d trainable tensors, %d optimizer leaves carried over",
                         stage.name, len(opt.trainable_paths()), carried)
            train_step = step_lib.make_train_step(stage_task, opt, layout, microbatches=config.train.microbatches)
            data = stage_task.make_data(stage, start_step=stage_step, process_index=jax.process_index(),
                                        process_count=jax.process_count())
            if data_state is not None:
                data.set_state(data_state)
            if hasattr(data, "defer_errors"):
                data.defer_errors = True  # the budget counts every process's records (sync.agree)
            data_state = None

            step = starts[si] + stage_step
            bar = tqdm(total=stage.steps, initial=stage_step, desc=stage.name, unit="step",
                       disable=jax.process_index() != 0 or not config.train.get("progress_bar", True))
            t_last, n_acc = time.perf_counter(), 0
            tokens_per_step = int(np.prod(layout.batch_abstract["tokens"].shape[:2])) if "tokens" in layout.batch_abstract else 0
            while stage_step < stage.steps:
                stop_requested = stop.signum is not None
                resume_state = data.get_state()  # the state to save if this step's batch is not used
                local = next(data)
                if sync.agree(stop_requested, data):  # a signal reached this or another process
                    if saved_step != step:
                        ckpt.save(step, state, _meta(config, stage, si, stage_step, step), resume_state, force=True)
                    ckpt.wait()
                    log.warning("%s: saved checkpoint at step %d and stopped",
                                "signal" if stop_requested else "another process got a signal", step)
                    status = "preempted"
                    break
                batch = step_lib.global_batch_from_local(local, layout)
                state, metrics = train_step(state, batch)
                stage_step += 1
                step += 1
                n_acc += 1
                bar.update(1)
                if stage_step % config.train.log_every == 0 or stage_step == stage.steps:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    dt = time.perf_counter() - t_last
                    m["step_time_s"] = dt / n_acc
                    m["tokens_per_s"] = tokens_per_step * n_acc / dt if dt > 0 else 0.0
                    m.update({f"lr/{g}": v for g, v in learning_rates(stage, stage_step - 1).items()})
                    metrics_log.write(step, m, stage=stage.name)
                    bar.set_postfix(loss=f"{m.get('loss', m['objective']):.4f}")
                    last = m
                    t_last, n_acc = time.perf_counter(), 0
                if stage_step % config.checkpoint.every == 0 or stage_step == stage.steps:
                    if ckpt.save(step, state, _meta(config, stage, si, stage_step, step), data.get_state(),
                                 force=stage_step == stage.steps):
                        saved_step = step
            bar.close()
            if status == "preempted":
                break
            stage_step = 0
        ckpt.close()
        metrics_log.close()
        evaluation = None
        if status == "done" and config.get("evaluate", None) and config.evaluate.get("at_end", False):
            if not hasattr(task, "evaluate"):
                raise ValueError(f"config.evaluate.at_end is set but task {config.task!r} has no evaluate()")
            evaluation = task.evaluate(state.params, state.model_state, workdir)
            if jax.process_index() == 0:
                with open(os.path.join(workdir, "eval.json"), "w") as f:
                    json.dump(evaluation, f, indent=2, default=str)
    return {"status": status, "step": int(jax.device_get(state.step)), "last_metrics": last, "evaluation": evaluation}
