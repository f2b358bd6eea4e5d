"""The Task interface between models and the trainer.

A task bundles a model, its loss and its batch layout. The trainer only ever calls:

  init(rng)                       -> params with nn.LogicallyPartitioned boxes
  batch_spec(global_batch)        -> {field: (jax.ShapeDtypeStruct, logical axis names)}
  norms(batch)                    -> {name: scalar}: global denominators (token counts...)
  loss(params, batch, rng, norms) -> (objective, {metric: value})
  make_data(stage, ...)           -> a data iterator (see omni_jax/data/iterator.py)

Exact gradient accumulation: `norms` is computed once from the whole global batch (it
depends on data only), and `loss` returns sums divided by those norms, so the objective
and every metric are linear in the microbatches and add up to the full-batch values.

Batch convention: every field has the batch rows as its leading axis (so microbatching
is a reshape), and static shapes (pad with masks, never ragged).

Optional model state (variables the optimizer must not touch, e.g. EMA-updated codebooks):
a task returning a tree from `init_state` gets it back in `loss_with_state`, which also
returns batch statistics; the step adds the statistics of all microbatches with
`merge_stats` (starting from zeros, which must be its identity) and calls `update_state`
once per step. The state lives in TrainState.model_state: sharded by its logical axes,
checkpointed and restored with the rest. Stateless tasks implement `loss` only.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping

import jax


def config_section(config: Any, key: str, defaults: Mapping[str, Any], owner: str = "") -> dict[str, Any]:
    """`config.<key>` (a ConfigDict, a dict or absent) over `defaults`; a key `defaults` lacks is an
    error that lists the valid ones (as `owner`'s, when given)."""
    given = config.get(key, None)
    given = given.to_dict() if hasattr(given, "to_dict") else dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = f"the {owner}'s are" if owner else "valid:"
        raise ValueError(f"config.{key}: unknown key(s) {unknown}; {valid} {sorted(defaults)}")
    return {**defaults, **given}


class Task(abc.ABC):
    # True: the step adds batch["row_ids"] (each row's global index, omni_jax/train/rng.py) and
    # the task draws per-row randomness from rng.row_keys(rng, batch["row_ids"]), so its draws
    # do not depend on the microbatch split.
    row_rng: bool = False
    # Top-level parameter components that some training stages add to a run's tree (heads of
    # auxiliary losses) and that inference and every export leave out: a workdir's params are
    # restored without them (omni_jax/convert/workdir.py).
    training_only: tuple[str, ...] = ()

    def __init__(self, config: Any):
        self.config = config

    @abc.abstractmethod
    def init(self, rng: jax.Array) -> Any:
        """Boxed params (call under jax.eval_shape to get shapes and logical names)."""

    @abc.abstractmethod
    def batch_spec(self, global_batch: int) -> Mapping[str, tuple[jax.ShapeDtypeStruct, tuple]]:
        ...

    @abc.abstractmethod
    def norms(self, batch: Mapping[str, jax.Array]) -> Mapping[str, jax.Array]:
        ...

    @abc.abstractmethod
    def loss(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
             norms: Mapping[str, jax.Array]) -> tuple[jax.Array, Mapping[str, jax.Array]]:
        ...

    @abc.abstractmethod
    def make_data(self, stage: Any, *, start_step: int, process_index: int, process_count: int, rows: Any = None):
        """The stage's step-indexed iterator over this process's batch rows: `rows` (global
        rows from omni_jax/data/host_rows.py) or, when None, its contiguous share."""

    def import_params(self, path: str, abstract_params: Any) -> Any:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} cannot import PyTorch weights")

    # ---- optional: non-trainable model state updated by the step itself ----

    def init_state(self, rng: jax.Array) -> Any:
        """Boxed model state (like `init`), or None: the task has none (the default)."""
        return None

    def loss_with_state(self, params: Any, state: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
                        norms: Mapping[str, jax.Array]) -> tuple[jax.Array, Mapping[str, jax.Array], Any]:
        """(objective, metrics, statistics for update_state). Default: `loss`, no statistics."""
        objective, metrics = self.loss(params, batch, rng, norms)
        return objective, metrics, None

    def merge_stats(self, a: Any, b: Any) -> Any:
        """Statistics of two microbatches -> of both (default: sum)."""
        return jax.tree.map(lambda x, y: x + y, a, b)

    def update_state(self, state: Any, stats: Any, rng: jax.Array) -> tuple[Any, Mapping[str, jax.Array]]:
        """(new state, extra metrics) from the whole step's statistics. Default: unchanged."""
        return state, {}

    def import_state(self, path: str, abstract_state: Any) -> Any:
        """Model state from a PyTorch checkpoint (config.init.checkpoint); None = initialise it."""
        return None
