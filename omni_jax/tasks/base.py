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
"""

from __future__ import annotations

import abc
from typing import Any, Mapping

import jax


class Task(abc.ABC):
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
    def make_data(self, stage: Any, *, start_step: int, process_index: int, process_count: int):
        ...

    def import_params(self, path: str, abstract_params: Any) -> Any:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} cannot import PyTorch weights")
