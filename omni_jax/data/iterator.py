"""Step-indexed data iterators: the batch at step s is a pure function of (seed, s).

Levanter's idea (data/permutation.py, data/loader.py): no hidden iterator position.
Resuming at step s, or running with a different number of processes, reproduces the
same global batches, because every process computes *its rows* of the global batch at
step s directly. The iterator state is therefore just the next step (plus a fingerprint
of the data configuration, so a checkpoint is never resumed on different data silently).

grain does the work: a `grain.MapDataset` over step indices maps to local batches, and
its iterator prefetches them in background threads, or, with `num_workers > 0`, in that
many grain worker processes (`mp_prefetch`: worker w builds steps w, w+W, ...; grain
returns them in step order, so the batches do not depend on the worker count). Worker
processes pay where building a batch is CPU-bound Python/numpy work that threads cannot
overlap (media decoding: images, audio features, video frames); the batch function and
everything it references is pickled into each worker (cloudpickle, spawn).

The rows a process builds are either its contiguous share of the global batch
(`process_rows`, process_index/process_count) or an explicit list of global batch rows
(`rows`, from omni_jax/data/host_rows.py: the rows of the devices this process owns).
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
        num_workers: int = 0,
        horizon: int = 1 << 40,
    ):
        if int(num_workers) < 0:
            raise ValueError(f"config.data.num_workers must be >= 0 (0 = build batches in this process), "
                             f"got {num_workers}")
        self._batch_at = local_batch_at
        self._fingerprint = fingerprint
        self._prefetch, self._threads, self._horizon = prefetch, num_threads, horizon
        self._workers = int(num_workers)
        self._it = None
        self._reset(start_step)

    def _reset(self, step: int) -> None:
        self.close()
        self.step = int(step)
        ds = grain.MapDataset.range(self.step, self._horizon).map(self._batch_at)
        opts = grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=self._prefetch)
        it = ds.to_iter_dataset(opts)
        if self._workers:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain reads its absl flags (defaults) when workers start
                flags.FLAGS.mark_as_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers,
                                                             per_worker_buffer_size=max(1, self._prefetch)))
        self._it = iter(it)

    def close(self) -> None:
        """Stops prefetching (and the worker processes, if any)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()

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


def global_rows_iterator(make_batch: Callable[[int, int], Mapping[str, np.ndarray]], fingerprint: str,
                         batch_size: int, *, start_step: int, process_index: int, process_count: int,
                         rows=None) -> StepIndexedIterator:
    """A step-indexed iterator over this process's rows (`local_rows`) of batches whose global row
    r is a pure function of r: make_batch(start, count) builds global rows start .. start + count - 1
    (step s holds rows s * batch_size ...; each contiguous run of this process's rows is one call).
    The iterator's fingerprint is the sha1 of `fingerprint` (a description of the data)."""
    import hashlib

    mine = local_rows(batch_size, process_index, process_count, rows)
    runs = np.split(mine, np.flatnonzero(np.diff(mine) != 1) + 1)  # contiguous runs of rows
    fp = hashlib.sha1(fingerprint.encode()).hexdigest()[:12]

    def local_batch(step: int) -> dict[str, np.ndarray]:
        parts = [make_batch(step * batch_size + int(r[0]), len(r)) for r in runs]
        return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return StepIndexedIterator(local_batch, start_step=start_step, fingerprint=fp)


def local_rows(global_batch: int, process_index: int, process_count: int, rows=None) -> np.ndarray:
    """The rows (indices into the global batch) this process builds: `rows` when given
    (checked against the batch), else its contiguous share (`process_rows`)."""
    if rows is None:
        mine = process_rows(global_batch, process_index, process_count)
        return np.arange(mine.start, mine.stop, dtype=np.int64)
    rows = np.asarray(rows, np.int64).reshape(-1)
    if not len(rows) or rows.min() < 0 or rows.max() >= global_batch or len(np.unique(rows)) != len(rows):
        raise ValueError(f"rows {rows.tolist()[:16]} are not distinct rows of a global batch of {global_batch}; "
                         "pass omni_jax.data.host_rows.process_batch_rows(batch_shardings, batch_size)")
    return rows


def process_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    """This process's rows of a global batch (contiguous, equal shares)."""
    if global_batch % process_count:
        raise ValueError(
            f"global batch {global_batch} is not divisible by the {process_count} processes; "
            "change config.train.batch_size"
        )
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)
