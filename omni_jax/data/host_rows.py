"""Which rows of the global batch this process feeds: the rows its devices hold.

`jax.make_array_from_process_local_data` (omni_jax/train/step.py) builds the global batch
from every process's local rows: a process must supply, in increasing order, the rows of
the batch shards its addressable devices hold. That depends on the mesh, not just on the
process index: when `tensor` or `context` spans processes, two processes hold devices of
the same data shard and must feed the SAME rows, and a process may hold non-adjacent
shards. A contiguous block per process (`process_rows`) is right only when every process
owns whole data shards in process order.

    rows = process_batch_rows(layout.batch_shardings, global_batch)   # np.int64, sorted

`process_of` maps a device to its process (default `device.process_index`); tests pass a
hand-made assignment to simulate a multi-process mesh with local CPU devices.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def _batch_sharding(sharding: Any) -> NamedSharding:
    """The sharding of the batch dimension alone (every field must agree on it)."""
    items = list(sharding.items()) if isinstance(sharding, Mapping) else [("batch", sharding)]
    if not items:
        raise ValueError("no batch shardings given: pass the layout's batch_shardings (field -> NamedSharding)")
    first_name, first = items[0]
    axes = first.spec[0] if len(first.spec) else None
    for name, s in items[1:]:
        other = s.spec[0] if len(s.spec) else None
        if other != axes or s.mesh != first.mesh:
            raise ValueError(f"batch fields {first_name!r} and {name!r} shard their rows differently ({axes} vs "
                             f"{other}); every field must shard its leading (batch) axis the same way")
    return NamedSharding(first.mesh, P(axes))


def rows_by_process(sharding: Any, global_batch: int,
                    process_of: Callable[[Any], int] | None = None) -> dict[int, np.ndarray]:
    """{process: the sorted global rows it feeds} for every process of the mesh."""
    process_of = process_of or (lambda d: d.process_index)
    s = _batch_sharding(sharding)
    shards = int(np.prod([s.mesh.shape[a] for a in _axes(s.spec[0])], dtype=np.int64))
    if global_batch % shards:
        raise ValueError(f"global batch {global_batch} does not split over the {shards} batch shards of the mesh "
                         f"(axes {_axes(s.spec[0])} of {dict(s.mesh.shape)}); make config.train.batch_size a "
                         f"multiple of {shards}")
    rows: dict[int, set] = {}
    for dev, idx in s.devices_indices_map((global_batch,)).items():
        sl = idx[0]
        rows.setdefault(int(process_of(dev)), set()).update(range(sl.start or 0, global_batch if sl.stop is None
                                                                  else sl.stop))
    out = {p: np.asarray(sorted(r), np.int64) for p, r in sorted(rows.items())}
    sizes = {len(r) for r in out.values()}
    if len(sizes) != 1:
        raise ValueError(f"processes hold different numbers of batch rows ({ {p: len(r) for p, r in out.items()} }): "
                         "build the mesh so that every process owns the same number of batch shards")
    seen: dict[int, int] = {}
    for p, r in out.items():
        for q in {seen.get(int(x), p) for x in r}:
            if q != p and not np.array_equal(out[q], r):
                raise ValueError(f"processes {q} and {p} hold overlapping but different batch rows; build the "
                                 "mesh so that processes share whole batch shards or none")
        seen.update({int(x): p for x in r})
    return out


def process_batch_rows(sharding: Any, global_batch: int, process_index: int | None = None,
                       process_of: Callable[[Any], int] | None = None) -> np.ndarray:
    """The sorted global batch rows this process (or `process_index`) must feed."""
    if process_index is None:
        import jax

        process_index = jax.process_index()
    rows = rows_by_process(sharding, global_batch, process_of)
    if process_index not in rows:
        raise ValueError(f"process {process_index} owns no device of the mesh (processes with devices: "
                         f"{sorted(rows)}); every process must own devices of the training mesh")
    return rows[process_index]


def _axes(a: Any) -> tuple:
    if a is None:
        return ()
    return tuple(a) if isinstance(a, (tuple, list)) else (a,)
