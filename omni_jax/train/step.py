"""The train state, its sharded initialisation, and the jitted train step.

    state, metrics = train_step(state, batch)

* `jax.jit` with explicit in/out shardings and the state donated (pjit is jit now).
* Frozen parameters are wrapped in stop_gradient inside the loss (no weight gradients
  are computed for them) and returned untouched, so they stay bit-identical.
* Gradient accumulation: the global batch is split into `microbatches` and scanned
  (maxtext gradient_accumulation.py); losses are normalised by global counts from the
  task, so the accumulated gradient equals the full-batch gradient up to rounding.
* Randomness: the step key is fold_in(state.rng, state.step), so a resumed run draws
  exactly the same numbers as an uninterrupted one. A task with `row_rng` gets the step key
  and batch["row_ids"] (global row indices) in every microbatch and draws per row
  (omni_jax/train/rng.py), so 1 or m microbatches draw the same numbers; other tasks get
  fold_in(step key, microbatch index).
* Model state (Task.init_state, e.g. EMA codebooks) rides in TrainState.model_state: the
  loss reads it, the microbatch statistics are merged, `Task.update_state` writes it once
  per step. It is never seen by the optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from omni_jax import sharding as shd
from omni_jax.tasks.base import Task
from omni_jax.train.optimizer import StageOptimizer, opt_state_shardings
from omni_jax.train.rng import ROW_IDS


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: global step (across stages)
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2] base key; per-step keys are derived, never carried
    model_state: Any = None  # Task.init_state variables (None for stateless tasks)


@dataclasses.dataclass
class Layout:
    """Abstract shapes and shardings of everything the step touches."""

    mesh: Mesh
    abstract_params: Any
    param_shardings: Any
    batch_shardings: Mapping[str, NamedSharding]
    batch_abstract: Mapping[str, jax.ShapeDtypeStruct]
    abstract_model_state: Any = None
    model_state_shardings: Any = None

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())


def jitted_init(task: Task, what: str) -> Callable[[jax.Array], Any]:
    """`task.init` ("params") or `task.init_state` ("state") under one jax.jit per task object, so
    its jaxpr is traced once: the abstract trees (jax.eval_shape) and the initialisation of every
    component (omni_jax/train/multitask.py, one call per component's key) reuse that trace. A
    flax init traces the whole model's forward; the omni model has ten components."""
    if what not in ("params", "state"):
        raise ValueError(f"what must be 'params' or 'state', not {what!r}")
    cache = task.__dict__.setdefault("_jitted_inits", {})
    if what not in cache:
        cache[what] = jax.jit(task.init if what == "params" else task.init_state)
    return cache[what]


def abstract_init(task: Task, what: str) -> Any:
    """jax.eval_shape of `jitted_init(task, what)`: boxed ShapeDtypeStructs, no device work. The key
    is made inside the trace, like the keys of multitask.init_union: under jax.set_mesh its aval
    then names the same mesh as theirs, so jax's trace cache serves both (a ShapeDtypeStruct key
    would carry no mesh and be traced again)."""
    fn = jitted_init(task, what)
    return jax.eval_shape(lambda: fn(jnp.zeros((2,), jnp.uint32)))


def random_params(task: Task, seed: int = 0, scale: float = 0.02) -> Any:
    """Random numpy parameters in the task's tree (`scale` x normal, the leaves' dtypes), from its
    abstract tree: no init compile (the whole omni model's takes ~30 s on CPU). For checks where the
    values are arbitrary (launch/mesh_check.py, the tests)."""
    abstract = shd.unbox(abstract_init(task, "params"))
    rs = np.random.RandomState(seed)
    return jax.tree.map(lambda a: (scale * rs.randn(*a.shape)).astype(a.dtype), abstract)


def abstract_boxed(task: Task) -> tuple[Any, Any]:
    """(params, model state) of a task as boxed ShapeDtypeStructs (no device work)."""
    return abstract_init(task, "params"), abstract_init(task, "state")


def make_layout(task: Task, mesh: Mesh, global_batch: int, boxed: Any = None, boxed_state: Any = None) -> Layout:
    """Shardings for a task's batch and for the parameters (by default the task's own; a
    multi-task run passes the union of its stage tasks' trees as `boxed` / `boxed_state`)."""
    if boxed is None:
        boxed, boxed_state = abstract_boxed(task)
    shd.check_rules_cover(boxed)
    shd.check_divisible(boxed, mesh)
    spec = task.batch_spec(global_batch)
    shd.check_batch_divisible(spec, mesh)
    if boxed_state is not None:
        shd.check_rules_cover(boxed_state)
        shd.check_divisible(boxed_state, mesh)
    return Layout(
        mesh=mesh,
        abstract_params=shd.unbox(boxed),
        param_shardings=nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, shd.LOGICAL_AXIS_RULES),
        batch_shardings={k: shd.logical_sharding(axes, mesh) for k, (_, axes) in spec.items()},
        batch_abstract={k: a for k, (a, _) in spec.items()},
        abstract_model_state=None if boxed_state is None else shd.unbox(boxed_state),
        model_state_shardings=None if boxed_state is None else nn.logical_to_mesh_sharding(
            nn.get_partition_spec(boxed_state), mesh, shd.LOGICAL_AXIS_RULES),
    )


def state_shardings(layout: Layout, opt: StageOptimizer) -> TrainState:
    abstract_opt = jax.eval_shape(opt.tx.init, layout.abstract_params)
    rep = layout.replicated
    return TrainState(
        step=rep,
        params=layout.param_shardings,
        opt_state=opt_state_shardings(abstract_opt, layout.abstract_params, layout.param_shardings, rep),
        rng=rep,
        model_state=layout.model_state_shardings,
    )


def abstract_state(layout: Layout, opt: StageOptimizer) -> TrainState:
    """ShapeDtypeStructs (with shardings) of the full train state, e.g. for restoring."""
    shardings = state_shardings(layout, opt)
    shapes = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=layout.abstract_params,
        opt_state=jax.eval_shape(opt.tx.init, layout.abstract_params),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
        model_state=layout.abstract_model_state,
    )
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


def init_params(task: Task, layout: Layout, seed: int) -> Any:
    """Parameters born sharded (the init runs under jit with out_shardings), each component
    from its own stream ("params", component) of omni_jax/train/rng.py."""
    from omni_jax.train.multitask import init_union

    return init_union([task], layout, seed, "params")


def init_model_state(task: Task, layout: Layout, seed: int) -> Any:
    """The task's model state born sharded (None for stateless tasks), per component from its
    stream ("model_state", component) of omni_jax/train/rng.py."""
    from omni_jax.train.multitask import init_union

    return init_union([task], layout, seed, "state")


def init_opt_state(opt: StageOptimizer, layout: Layout, params: Any) -> Any:
    sh = state_shardings(layout, opt)
    return jax.jit(opt.tx.init, in_shardings=(layout.param_shardings,), out_shardings=sh.opt_state)(params)


def _freeze(params: Any, trainable: Any) -> Any:
    return jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)


def _split_microbatches(batch: Mapping[str, jax.Array], m: int) -> Mapping[str, jax.Array]:
    """(B, ...) -> (m, B/m, ...) with microbatch k = rows k, k+m, k+2m, ... so every
    data-parallel shard keeps its own rows (no resharding)."""
    def split(x):
        if x.shape[0] % m:
            raise ValueError(f"batch of {x.shape[0]} rows cannot be split into {m} microbatches")
        y = x.reshape((x.shape[0] // m, m) + x.shape[1:])
        return jnp.moveaxis(y, 1, 0)
    return jax.tree.map(split, batch)


def make_train_step(
    task: Task, opt: StageOptimizer, layout: Layout, *, microbatches: int = 1, donate: bool = True,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict]]:
    trainable = opt.trainable
    stateful = layout.abstract_model_state is not None

    def loss_and_grad(params, model_state, batch, rng, norms):
        def f(p):
            obj, metrics, stats = task.loss_with_state(_freeze(p, trainable), model_state, batch, rng, norms)
            return obj, (metrics, stats)
        (obj, (metrics, stats)), grads = jax.value_and_grad(f, has_aux=True)(params)
        return (obj, metrics, stats), grads

    def step_fn(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        norms = task.norms(batch)
        if task.row_rng:
            n = next(iter(batch.values())).shape[0]
            batch = dict(batch, **{ROW_IDS: jnp.arange(n, dtype=jnp.int32)})
        if microbatches == 1:
            (obj, metrics, stats), grads = loss_and_grad(state.params, state.model_state, batch, rng, norms)
        else:
            mbs = _split_microbatches(batch, microbatches)

            def body(carry, xs):
                k, mb = xs
                (o, m, st), g = loss_and_grad(state.params, state.model_state, mb, rng if task.row_rng else jax.random.fold_in(rng, k), norms)
                acc_o, acc_m, acc_g, acc_st = carry
                add = lambda a, b: a + b.astype(a.dtype)
                acc_st = None if st is None else task.merge_stats(acc_st, st)
                return (acc_o + o, jax.tree.map(add, acc_m, m), jax.tree.map(add, acc_g, g), acc_st), None

            zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            first = jax.eval_shape(lambda: loss_and_grad(state.params, state.model_state,
                                                         jax.tree.map(lambda x: x[0], mbs), rng, norms))
            zeros_m = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), first[0][1])
            zeros_st = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), first[0][2])
            (obj, metrics, grads, stats), _ = jax.lax.scan(
                body, (jnp.zeros((), jnp.float32), zeros_m, zeros_g, zeros_st), (jnp.arange(microbatches), mbs))
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)

        updates, opt_state = opt.tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u, t: (p + u.astype(p.dtype)) if t else p,
                              state.params, updates, trainable)
        metrics = dict(metrics)
        model_state = state.model_state
        if stateful:
            model_state, extra = task.update_state(state.model_state, stats, jax.random.fold_in(rng, 0x7FFFFFFF))
            metrics.update(extra)
        metrics["objective"] = obj
        if "segment_ids" in batch:  # tokens of real samples (segment id > 0), not padding
            metrics["real_tokens"] = jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["param_norm"] = optax.tree.norm(params)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng,
                          model_state=model_state), metrics

    st_sh = state_shardings(layout, opt)
    return jax.jit(
        step_fn,
        in_shardings=(st_sh, dict(layout.batch_shardings)),
        out_shardings=(st_sh, layout.replicated),
        donate_argnums=(0,) if donate else (),
    )


def global_batch_from_local(local: Mapping[str, Any], layout: Layout) -> dict[str, jax.Array]:
    """This process's rows -> global jax.Arrays laid out with the batch shardings."""
    out = {}
    for k, sh in layout.batch_shardings.items():
        if k not in local:
            raise KeyError(f"the data pipeline did not produce batch field {k!r} (got {sorted(local)})")
        out[k] = jax.make_array_from_process_local_data(sh, local[k], layout.batch_abstract[k].shape)
    return out
