"""The trainer: one loop that runs a config's stages in order (big_vision train.py style).

    train(config, workdir)

For each stage of `config.stage_order`: build the stage's optimizer (regex groups), move
the optimizer state over from the previous stage (moments of parameters that stay
trainable are kept), jit the step, stream step-indexed batches, log, checkpoint every
`config.checkpoint.every` steps and at the stage end. A restart with the same workdir
resumes from the latest checkpoint and reproduces the uninterrupted run bit for bit.
SIGTERM / SIGINT make it save a checkpoint at the next step boundary and return; with
several processes a signal to any one of them makes all save the same step (host_sync.py).

`train` reads as its steps: `_open_run` (stages, mesh, tasks, checkpointer, config.json),
`_plan_layouts` (one parameter tree, per-stage shardings), `_resume` or `_initial_state`, then
per stage `_run_stage` (`_enter_stage` carries optimizer moments; the step loop logs with
`_StepTimer`, checkpoints, and runs the periodic evaluation `_PeriodicEval`), and `_evaluate_at_end`
(the held-out evaluation and its report; its numbers go to metrics.jsonl and TensorBoard too).

The workdir may be local or an object store (gs://...): every file in it goes through
`etils.epath` (omni_jax/workdir.py), and an owner lease refuses a workdir another
live run is writing.
"""

from __future__ import annotations

import dataclasses
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
from omni_jax.data.host_rows import process_batch_rows
from omni_jax.train import step as step_lib
from omni_jax.train.checkpoint import Checkpointer
from omni_jax.train import rng as rng_lib
from omni_jax.train.host_sync import HostSync
from omni_jax.train.integrity import CheckpointCorruptError
from omni_jax.train.metrics import MetricsWriter
from omni_jax.train.multitask import StageTasks, init_union, union_trees
from omni_jax.train import warm_start
from omni_jax.train.optimizer import build_optimizer, learning_rates, stage_from_config, transfer_state
from omni_jax.workdir import WorkdirBusyError, WorkdirLease, config_hash, workdir_path, write_text_atomic

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


@dataclasses.dataclass
class _Run:
    """What every step of the loop reads: the config's stages and where each starts, the mesh,
    the stage tasks, the checkpointer and the per-stage layouts over ONE parameter tree."""

    config: Any
    workdir: Any  # an etils.epath.Path (local or gs://...)
    stages: list
    starts: list[int]
    mesh: Any
    tasks: StageTasks
    ckpt: Checkpointer
    lease: WorkdirLease | None = None  # process 0 holds it; checked before every save
    sync: HostSync = dataclasses.field(default_factory=HostSync)  # stop / data-error decisions of all processes
    layouts: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Progress:
    """Where the run is: the TrainState, the stage (index, step within it), the data iterator
    state to resume (None = start the stage's data fresh), the last saved step, last metrics."""

    state: Any
    stage_index: int = 0
    stage_step: int = 0
    data_state: Any = None
    saved_step: int | None = None
    last: dict = dataclasses.field(default_factory=dict)
    status: str = "done"


def _agreed(ok: bool) -> bool:
    """Process 0's verdict, the same on every process (so all stop together, none waits in a collective)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def _lease_check(lease: WorkdirLease | None) -> None:
    """Before a save: process 0 checks the lease is still this run's; every process stops if not."""
    err = None
    if lease is not None:
        try:
            lease.check()
        except WorkdirBusyError as e:
            err = e
    if not _agreed(err is None):
        raise err or WorkdirBusyError("process 0 found that another run took over the workdir (see its log)")


def _take_lease(config, workdir) -> WorkdirLease | None:
    """Process 0 takes the workdir's owner lease (WorkdirBusyError on every process if another
    live run holds it)."""
    lease, err = None, None
    if jax.process_index() == 0:
        lease = WorkdirLease(workdir, config_hash(config), timeout_s=config.checkpoint.get("lease_timeout_s", 600.0))
        try:
            lease.acquire()
        except WorkdirBusyError as e:
            lease, err = None, e
    if not _agreed(err is None):
        raise err or WorkdirBusyError(f"process 0 could not take the owner lease of {workdir} (see its log)")
    return lease


def train(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs (or resumes) every stage. Returns {'status', 'step', 'last_metrics', 'evaluation'}.

    Refuses (WorkdirBusyError) a workdir whose owner lease another live run holds."""
    workdir = workdir_path(workdir)
    lease = _take_lease(config, workdir)
    try:
        return _train(config, workdir, lease)
    finally:
        if lease is not None:
            lease.release()


def _train(config, workdir, lease: WorkdirLease | None) -> dict[str, Any]:
    run = _open_run(config, workdir, lease)
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES), _StopFlag() as stop:
        _plan_layouts(run)
        progress = _resume_verified(run, run.ckpt.latest_step())
        latest = None if progress is None else progress.saved_step
        progress = progress or _Progress(_initial_state(run))
        metrics_log = MetricsWriter(workdir, resume_step=latest if latest is not None else 0)
        for si in range(progress.stage_index, len(run.stages)):
            progress.stage_index = si
            _run_stage(run, progress, metrics_log, stop)
            if progress.status == "preempted":
                break
            progress.stage_step = 0
        run.ckpt.close()
        try:
            evaluation = _evaluate_at_end(run, progress, metrics_log)
        finally:
            metrics_log.close()
    return {"status": progress.status, "step": int(jax.device_get(progress.state.step)),
            "last_metrics": progress.last, "evaluation": evaluation}


def _open_run(config, workdir, lease: WorkdirLease | None) -> _Run:
    """Parses the stages, builds the mesh, the stage tasks and the checkpointer (keeping every
    stage end), and writes the config next to the checkpoints."""
    stages = parse_stages(config)
    starts = np.cumsum([0] + [s.steps for s in stages]).tolist()
    distributed.check_batch_splits(config.train.batch_size)
    mesh = shd.make_mesh(config.mesh.to_dict())
    log.info("%s", distributed.topology_line(mesh))
    if jax.process_count() > 1:
        distributed.check_same_config(config)
    ckpt = Checkpointer(
        workdir / "checkpoints",
        max_to_keep=config.checkpoint.keep,
        keep_steps=starts[1:],
        async_save=config.checkpoint.get("async_save", True),
        hashes=config.checkpoint.get("hashes", True),
    )
    if jax.process_index() == 0:
        write_text_atomic(workdir / "config.json", config.to_json_best_effort(indent=2))
    return _Run(config, workdir, stages, starts, mesh, StageTasks(config, [s.name for s in stages]), ckpt, lease)


def _plan_layouts(run: _Run) -> None:
    """One parameter tree (and model state) for the whole run, the union of the stage tasks'
    trees; per stage, its shardings and batch layout over that tree."""
    trees = [(type(t).__name__, step_lib.abstract_boxed(t)) for t in run.tasks.unique]
    boxed = union_trees([(n, b[0]) for n, b in trees], "parameters")
    boxed_state = union_trees([(n, b[1]) for n, b in trees], "model state")
    run.layouts = {s.name: step_lib.make_layout(run.tasks[s.name], run.mesh, run.config.train.batch_size, boxed,
                                                boxed_state) for s in run.stages}


def _resume_verified(run: _Run, latest: int) -> _Progress | None:
    """The newest checkpoint that reads and matches its recorded hashes (omni_jax/train/integrity.py).
    A corrupt one is logged and moved aside to checkpoints_corrupt/, and the previous one is tried;
    None when no checkpoint is left (the run starts fresh, and says so)."""
    had_checkpoints = latest is not None
    while latest is not None:
        try:
            return _resume(run, latest)
        except CheckpointCorruptError as e:
            log.error("checkpoint %d is corrupt, falling back to the previous checkpoint: %s", latest, e)
            if jax.process_index() == 0:
                where = run.ckpt.quarantine(latest)
                log.error("moved corrupt checkpoint %d to %s", latest, where)
            else:
                run.ckpt.reload()
            steps = [s for s in run.ckpt.all_steps() if s < latest]
            latest = max(steps) if steps else None
            if latest is not None:
                log.warning("resuming from the previous complete checkpoint, step %d", latest)
    if had_checkpoints:  # a fresh workdir is not an error
        log.error("no readable checkpoint is left: starting from scratch")
    return None


def _resume(run: _Run, latest: int) -> _Progress:
    """The latest checkpoint: TrainState, data state, stage and step (a complete stage enters the next)."""
    try:
        meta = run.ckpt.read_meta(latest)
    except Exception as e:  # noqa: BLE001
        raise CheckpointCorruptError(f"checkpoint {latest}: its meta item does not read ({e})") from e
    si, stage_step = int(meta["stage_index"]), int(meta["stage_step"])
    stages = run.stages
    if si >= len(stages) or stages[si].name != meta["stage"]:
        raise ValueError(f"checkpoint {latest} is from stage {meta['stage']!r} (index {si}), "
                         f"which config.stage_order {list(run.config.stage_order)} does not have there")
    layout = run.layouts[stages[0].name]
    opt = build_optimizer(stages[si], layout.abstract_params)
    state, _, data_state = run.ckpt.restore(latest, step_lib.abstract_state(layout, opt))
    log.info("resumed from step %d (stage %s, step %d of %d)", latest, meta["stage"], stage_step, stages[si].steps)
    if stage_step >= stages[si].steps:  # that stage was complete: enter the next
        si, stage_step, data_state = si + 1, 0, None
    return _Progress(state, si, stage_step, data_state, saved_step=latest)


def _initial_state(run: _Run):
    """A fresh TrainState: the main task imports what `config.init.checkpoint` has, every other
    component is initialised from its own stream of `config.train.seed` (omni_jax/train/rng.py);
    the step keys come from the stream "step"; no optimizer state yet."""
    config, task = run.config, run.tasks.main
    layout = run.layouts[run.stages[0].name]
    imported, imported_state = {}, {}
    if config.init.get("checkpoint"):
        imported = task.import_params(config.init.checkpoint, layout.abstract_params)
        imported = jax.device_put(imported, {k: layout.param_shardings[k] for k in imported})
        if layout.abstract_model_state is not None:
            imported_state = task.import_state(config.init.checkpoint, layout.abstract_model_state) or {}
            imported_state = jax.device_put(
                imported_state, {k: layout.model_state_shardings[k] for k in imported_state})
    params = dict(init_union(run.tasks.unique, layout, config.train.seed, "params", skip=imported), **imported)
    model_state = init_union(run.tasks.unique, layout, config.train.seed, "state", skip=imported_state)
    if model_state is not None:
        model_state = dict(model_state, **imported_state)
    if config.init.get("checkpoint"):
        log.info("imported %s from %s; initialised %s", sorted(imported), config.init.checkpoint,
                 sorted(set(params) - set(imported)))
    return step_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=None,
                               rng=rng_lib.stream(config.train.seed, "step"), model_state=model_state)


def _enter_stage(state, stage, opt, layout):
    """The stage's warm starts (omni_jax/train/warm_start.py) applied to the parameters, and a fresh
    optimizer state for the stage, with the moments of parameters that stay trainable carried over
    from the previous stage."""
    if stage.warm_start:
        state = state.replace(params=warm_start.apply(stage.warm_start, state.params, state.model_state))
        log.info("stage %s: warm start %s", stage.name, ", ".join(stage.warm_start))
    fresh = step_lib.init_opt_state(opt, layout, state.params)
    carried = 0
    if state.opt_state is not None:
        fresh, carried = transfer_state(state.opt_state, fresh)
    log.info("stage %s: %d trainable tensors, %d optimizer leaves carried over",
             stage.name, len(opt.trainable_paths()), carried)
    return state.replace(opt_state=fresh)


def _run_stage(run: _Run, progress: _Progress, metrics_log: MetricsWriter, stop: _StopFlag) -> None:
    """The steps of stage `progress.stage_index` from `progress.stage_step`: optimizer, jitted
    step, step-indexed data; logs and checkpoints on schedule; on a signal saves and stops."""
    config, si = run.config, progress.stage_index
    stage = run.stages[si]
    stage_task, layout = run.tasks[stage.name], run.layouts[stage.name]
    opt = build_optimizer(stage, layout.abstract_params)
    if progress.data_state is None:  # entering the stage (not resuming inside it)
        progress.state = _enter_stage(progress.state, stage, opt, layout)
    train_step = step_lib.make_train_step(stage_task, opt, layout, microbatches=config.train.microbatches)
    rows = process_batch_rows(layout.batch_shardings, config.train.batch_size)
    data = stage_task.make_data(stage, start_step=progress.stage_step, process_index=jax.process_index(),
                                process_count=jax.process_count(), rows=rows)
    if progress.data_state is not None:
        data.set_state(progress.data_state)
    if hasattr(data, "defer_errors"):
        data.defer_errors = True  # the budget counts every process's records (run.sync.agree)
    progress.data_state = None

    step = run.starts[si] + progress.stage_step
    bar = tqdm(total=stage.steps, initial=progress.stage_step, desc=stage.name, unit="step",
               disable=jax.process_index() != 0 or not config.train.get("progress_bar", True))
    timer = _StepTimer(layout)
    batch_hashes = _BatchHashes(run.workdir, rows) if os.environ.get("OMNI_JAX_RECORD_BATCH_HASHES") else None
    profiler = _Profiler(config, run.workdir)
    periodic = _PeriodicEval(run, stage)

    def meta() -> dict:
        return _meta(config, stage, si, progress.stage_step, step)

    while progress.stage_step < stage.steps:
        stop_requested = stop.signum is not None  # read once per step (tests count the reads)
        t_data = time.perf_counter()
        resume_state = data.get_state()  # the state to save if this step's batch is not used
        local = next(data)
        if run.sync.agree(stop_requested, data):  # a signal reached this or another process
            if progress.saved_step != step:
                _lease_check(run.lease)
                run.ckpt.save(step, progress.state, meta(), resume_state, force=True)
            run.ckpt.wait()
            log.warning("%s: saved checkpoint at step %d and stopped",
                        "signal" if stop_requested else "another process got a signal", step)
            progress.status = "preempted"
            break
        profiler.before(step)
        if batch_hashes is not None:
            batch_hashes.write(step + 1, local)
        batch = step_lib.global_batch_from_local(local, layout)
        timer.data_wait(time.perf_counter() - t_data)
        progress.state, metrics = train_step(progress.state, batch)
        profiler.after(step + 1, progress.state)
        progress.stage_step += 1
        step += 1
        timer.count(metrics)
        bar.update(1)
        end = progress.stage_step == stage.steps
        if progress.stage_step % config.train.log_every == 0 or end:
            progress.last = timer.metrics(metrics, stage, progress.stage_step)
            metrics_log.write(step, progress.last, stage=stage.name)
            bar.set_postfix(loss=f"{progress.last.get('loss', progress.last['objective']):.4f}")
        periodic.maybe(progress, step, metrics_log)
        if progress.stage_step % config.checkpoint.every == 0 or end:
            _lease_check(run.lease)
            if run.ckpt.save(step, progress.state, meta(), data.get_state(), force=end):
                progress.saved_step = step
    profiler.stop(progress.state)
    bar.close()


class _BatchHashes:
    """OMNI_JAX_RECORD_BATCH_HASHES=1 (launch/certify.py): a sha256 of every batch row this process
    feeds, keyed by its global row index, one JSON line {"step", "process", "rows": {row: sha256}}
    per step in <workdir>/batch_hashes.<process>.jsonl (a resumed run appends; the last line of a
    step counts). launch/certify.py joins the processes' rows into one hash of the global batch, so
    the data order is compared across process counts too."""

    def __init__(self, workdir, rows):
        self.path = workdir / f"batch_hashes.{jax.process_index()}.jsonl"
        self.rows = [int(r) for r in rows]

    def write(self, step: int, local) -> None:
        import hashlib

        arrays = {k: np.ascontiguousarray(np.asarray(local[k])) for k in sorted(local)}
        out = {}
        for i, row in enumerate(self.rows):
            h = hashlib.sha256()
            for k, a in arrays.items():
                h.update(f"{k}{a.dtype.str}{a.shape[1:]}".encode())
                h.update(np.ascontiguousarray(a[i]).tobytes())
            out[str(row)] = h.hexdigest()
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "process": jax.process_index(), "rows": out}) + "\n")


class _Profiler:
    """`config.profile.start_step` / `num_steps`: a jax.profiler trace of those global steps in
    `<workdir>/profile` (TensorBoard's profile plugin reads it: `tensorboard --logdir DIR/profile`)."""

    def __init__(self, config, workdir):
        p = config.get("profile", None) or {}
        self.start, self.num = int(p.get("start_step", -1)), int(p.get("num_steps", 0))
        if self.num > 0 and self.start < 0:
            raise ValueError(f"config.profile.num_steps={self.num} needs config.profile.start_step >= 0 "
                             "(the first global step to trace)")
        self.dir, self.on = workdir / "profile", False

    def before(self, step: int) -> None:
        if self.num > 0 and step == self.start and not self.on:
            jax.profiler.start_trace(str(self.dir))
            self.on = True

    def after(self, steps_done: int, state) -> None:
        if self.on and steps_done >= self.start + self.num:
            self.stop(state)

    def stop(self, state) -> None:
        if self.on:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.on = False
            log.info("profile of steps %d..%d written to %s", self.start, self.start + self.num - 1, self.dir)


class _StepTimer:
    """Step time and token throughput since the last logged step: `tokens_per_s` counts real
    tokens (segment id > 0), `padded_tokens_per_s` every slot of the batch."""

    def __init__(self, layout):
        tokens = layout.batch_abstract.get("tokens")
        self.tokens_per_step = int(np.prod(tokens.shape[:2])) if tokens is not None else 0
        self.t_last, self.n, self.real, self.data_s = time.perf_counter(), 0, 0.0, 0.0

    def data_wait(self, seconds: float) -> None:
        """Host time spent getting the step's batch (data pipeline + transfer to the devices)."""
        self.data_s += seconds

    def count(self, metrics) -> None:
        self.n += 1
        if "real_tokens" in metrics:  # summed on device: no host sync per step
            self.real = self.real + metrics["real_tokens"]

    def metrics(self, metrics, stage, stage_step: int) -> dict[str, float]:
        """The step's metrics as floats, plus step_time_s, tokens_per_s and each group's lr."""
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        dt = time.perf_counter() - self.t_last
        m["step_time_s"] = dt / self.n
        m["padded_tokens_per_s"] = self.tokens_per_step * self.n / dt if dt > 0 else 0.0
        m["tokens_per_s"] = float(self.real) / dt if dt > 0 else 0.0
        # host-side split of the step time: waiting for data vs the rest (dispatch + device)
        m["data_wait_s"] = self.data_s / self.n
        m["data_wait_fraction"] = self.data_s / dt if dt > 0 else 0.0
        m.update({f"lr/{g}": v for g, v in learning_rates(stage, stage_step - 1).items()})
        self.t_last, self.n, self.real, self.data_s = time.perf_counter(), 0, 0.0, 0.0
        return m


class _PeriodicEval:
    """The held-out evaluation every N steps of a stage, so skills can be seen appearing during the
    run: N = `config.stages.<stage>.eval_every` if the stage sets it >= 0 (0 = never in that stage),
    else (absent or -1) `config.evaluate.every_steps` (default 0 = off);
    `config.evaluate.periodic_samples` samples per set (default 4). The main task's evaluate(final=False) scores text only (no WAVs, no report);
    its numbers are a metrics.jsonl line {"step", "stage", "kind": "eval", "eval/<set>/<metric>"}
    and TensorBoard scalars. The training state and its random streams are untouched."""

    def __init__(self, run: _Run, stage):
        config = run.config
        ev = config.get("evaluate", None) or {}
        every = int(config.stages[stage.name].get("eval_every", -1))
        if every < -1:
            raise ValueError(f"config.stages.{stage.name}.eval_every={every}: use a number of steps > 0, 0 for no "
                             "periodic evaluation in this stage, or -1 for config.evaluate.every_steps")
        self.every = int(ev.get("every_steps", 0)) if every == -1 else every
        self.samples = int(ev.get("periodic_samples", 4))
        self.run, self.stage = run, stage
        if self.every < 0 or self.samples < 1:
            raise ValueError(f"config.evaluate.every_steps={self.every}, periodic_samples={self.samples}: use "
                             "every_steps >= 0 (0 = off) and periodic_samples >= 1")
        if self.every and not hasattr(run.tasks.main, "evaluate"):
            raise ValueError(f"periodic evaluation is on (every {self.every} steps of stage {stage.name}) but task "
                             f"{config.task!r} has no evaluate(): set config.evaluate.every_steps=0")

    def maybe(self, progress: _Progress, step: int, metrics_log: MetricsWriter) -> None:
        if not self.every or progress.stage_step % self.every:
            return
        from omni_jax.tasks.omni_eval import scalars

        t = time.perf_counter()
        res = self.run.tasks.main.evaluate(progress.state.params, progress.state.model_state, self.run.workdir,
                                           final=False, num_samples=self.samples, step=step)
        numbers = dict(scalars(res), **{"eval/seconds": time.perf_counter() - t})
        metrics_log.write(step, numbers, stage=self.stage.name, kind="eval")
        log.info("step %d (%s step %d) periodic %s", step, self.stage.name, progress.stage_step,
                 res.get("summary", "").replace("\n", ";"))


def _evaluate_at_end(run: _Run, progress: _Progress, metrics_log: MetricsWriter | None = None):
    """`config.evaluate.at_end`: the main task's evaluate() on the final params (which also writes the
    report, <workdir>/eval/report.md), written to eval.json; its numbers to metrics.jsonl and
    TensorBoard as a {"kind": "eval", "final": true} line."""
    config, task = run.config, run.tasks.main
    if progress.status != "done" or not config.get("evaluate", None) or not config.evaluate.get("at_end", False):
        return None
    if not hasattr(task, "evaluate"):
        raise ValueError(f"config.evaluate.at_end is set but task {config.task!r} has no evaluate()")
    step = int(jax.device_get(progress.state.step))
    if metrics_log is not None:  # the report plots the final numbers with the periodic ones
        metrics_log.flush()
    evaluation = task.evaluate(progress.state.params, progress.state.model_state, run.workdir, final=True, step=step)
    if jax.process_index() == 0:
        write_text_atomic(run.workdir / "eval.json", json.dumps(evaluation, indent=2, default=str))
    if metrics_log is not None:
        from omni_jax.tasks.omni_eval import scalars

        metrics_log.write(step, scalars(evaluation), stage=run.stages[-1].name, kind="eval", final=True)
    return evaluation
