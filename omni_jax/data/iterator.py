"""Step-indexed data iterators: the batch at step s is a pure function of (seed, s).

Levanter's idea (data/permutation.py, data/loader.py): no hidden iterator position.
Resuming at step s, or running with a different number of processes, reproduces the
same global batches, because every process computes *its rows* of the global batch at
step s directly. The iterator state is therefore just the next step (plus a fingerprint
of the data configuration, so a checkpoint is never resumed on different data silently).

grain does the work: a `grain.MapDataset` over step indices maps to local batches, and
its iterator prefetches them in background threads.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import grain
import numpy as np


class StepIndexedIterator:
    def __init__(
        self,
        local_batch_at: Callable[[int], Mapping[str, np.ndarray]],
        *,
        start_step: int = 0,
        fingerprint: str = "",
        prefetch: int = 2,
        num_threads: int = 1,
        horizon: int = 1 << 40,
    ):
        self._batch_at = local_batch_at
        self._fingerprint = fingerprint
        self._prefetch, self._threads, self._horizon = prefetch, num_threads, horizon
        self._reset(start_step)

    def _reset(self, step: int) -> None:
        self.step = int(step)
        ds = grain.MapDataset.range(self.step, self._horizon).map(self._batch_at)
        opts = grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=self._prefetch)
        self._it = iter(ds.to_iter_dataset(opts))

    def __iter__(self):
        return self

    def __next__(self) -> Mapping[str, np.ndarray]:
        batch = next(self._it)
        self.step += 1
        return batch

    def peek(self, step: int) -> Mapping[str, np.ndarray]:
        """The local batch at any step, without moving the iterator."""
        return self._batch_at(step)

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step, "fingerprint": self._fingerprint}

    def set_state(self, state: Mapping[str, Any]) -> None:
        fp = state.get("fingerprint", "")
        if fp != self._fingerprint:
            raise ValueError(
                "the checkpoint's data iterator was built from a different data configuration "
                f"(saved fingerprint {fp!r}, current {self._fingerprint!r}); resume with the same "
                "config.data, or start the stage afresh."
            )
        self._reset(int(state["step"]))


def process_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    """This process's rows of a global batch (contiguous, equal shares)."""
    if global_batch % process_count:
        raise ValueError(
            f"global batch {global_batch} is not divisible by the {process_count} processes; "
            "change config.train.batch_size"
        )
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)
