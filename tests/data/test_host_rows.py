"""omni_jax/data/host_rows.py: the rows a process feeds follow the mesh's device->process map.

Multi-process meshes are simulated with the 8 local CPU devices and a hand-made
device->process assignment; every assignment is checked against the way
`jax.make_array_from_process_local_data` places a process's local rows on its devices."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from omni_jax import sharding as shd
from omni_jax.data.host_rows import process_batch_rows, rows_by_process
from omni_jax.data.iterator import local_rows, process_rows

B = 8


def mesh(data, fsdp, tensor, context):
    return Mesh(np.asarray(jax.devices()[:8]).reshape(data, fsdp, tensor, context), shd.MESH_AXES)


def batch_shardings(m):
    """The trainer's batch shardings: rows over (data, fsdp), sequence over context."""
    return {"tokens": NamedSharding(m, shd.logical_to_spec(("activation_batch", "activation_length"))),
            "component": NamedSharding(m, shd.logical_to_spec(("activation_batch", "activation_length")))}


def by_position(m, procs_per_device):
    """process_of from a process id per flat mesh position."""
    owner = {d.id: int(p) for d, p in zip(m.devices.reshape(-1), procs_per_device)}
    return lambda d: owner[d.id]


def check_placement(sh, rows, process_of):
    """Every device gets its own shard when each process feeds `rows[p]` (the row -> local
    position rule of make_array_from_process_local_data: a process's shards, ordered by start)."""
    s = NamedSharding(sh.mesh, P(sh.spec[0]))
    global_rows = np.arange(B) * 10
    idx = s.devices_indices_map((B,))
    for dev, (sl,) in idx.items():
        p = process_of(dev)
        local = global_rows[rows[p]]
        starts = sorted({(i[0].start or 0) for d, i in idx.items() if process_of(d) == p})
        size = (sl.stop or B) - (sl.start or 0)
        k = starts.index(sl.start or 0) * size
        np.testing.assert_array_equal(local[k:k + size], global_rows[sl])


def test_one_process_feeds_every_row():
    m = mesh(2, 2, 2, 1)
    np.testing.assert_array_equal(process_batch_rows(batch_shardings(m), B), np.arange(B))


def test_tensor_spanning_processes_feed_the_same_rows():
    # 4 processes x 2 devices; each process holds (data d, tensor t) for both context devices,
    # so tensor spans processes 0-1 and 2-3: each pair feeds the same data shard
    m = mesh(2, 1, 2, 2)
    po = by_position(m, [0, 0, 1, 1, 2, 2, 3, 3])
    rows = rows_by_process(batch_shardings(m), B, po)
    np.testing.assert_array_equal(rows[0], np.arange(4))
    np.testing.assert_array_equal(rows[1], np.arange(4))
    np.testing.assert_array_equal(rows[2], np.arange(4, 8))
    np.testing.assert_array_equal(rows[3], np.arange(4, 8))
    # the contiguous share would be wrong here: process 1 would feed rows 2-3
    assert process_rows(B, 1, 4) == slice(2, 4)
    check_placement(batch_shardings(m)["tokens"], rows, po)
    np.testing.assert_array_equal(process_batch_rows(batch_shardings(m), B, 3, po), np.arange(4, 8))


def test_context_spanning_processes_and_non_adjacent_shards():
    m = mesh(2, 2, 1, 2)
    # context spans processes: process p holds context position p%2 of every (data, fsdp) shard of one data half
    po = by_position(m, [0, 1, 0, 1, 2, 3, 2, 3])
    rows = rows_by_process(batch_shardings(m), B, po)
    assert [r.tolist() for r in rows.values()] == [[0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7]]
    check_placement(batch_shardings(m)["tokens"], rows, po)
    # a process holding fsdp shard 0 of both data shards feeds two non-adjacent blocks
    po = by_position(m, [0, 0, 1, 1, 0, 0, 1, 1])
    rows = rows_by_process(batch_shardings(m), B, po)
    assert rows[0].tolist() == [0, 1, 4, 5] and rows[1].tolist() == [2, 3, 6, 7]
    check_placement(batch_shardings(m)["tokens"], rows, po)


def test_bad_meshes_and_rows_are_named():
    m = mesh(4, 2, 1, 1)
    with pytest.raises(ValueError, match="global batch 6 does not split over the 8 batch shards"):
        rows_by_process(batch_shardings(m), 6)
    with pytest.raises(ValueError, match="process 3 owns no device"):
        process_batch_rows(batch_shardings(m), B, 3)
    po = by_position(m, [0, 0, 0, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="different numbers of batch rows"):
        rows_by_process(batch_shardings(m), B, po)
    m2 = mesh(2, 2, 2, 1)  # 4 shards, each on 2 (tensor) devices; processes holding overlapping shard sets
    with pytest.raises(ValueError, match="overlapping but different batch rows"):
        rows_by_process(batch_shardings(m2), B, by_position(m2, [0, 2, 0, 1, 1, 3, 2, 3]))
    mixed = {"tokens": NamedSharding(m, P(("data", "fsdp"))), "x": NamedSharding(m, P("data"))}
    with pytest.raises(ValueError, match="shard their rows differently"):
        rows_by_process(mixed, B)
    with pytest.raises(ValueError, match="not distinct rows of a global batch of 8"):
        local_rows(B, 0, 1, [0, 0, 1])
    np.testing.assert_array_equal(local_rows(B, 1, 2), np.arange(4, 8))


def test_synthetic_iterators_take_explicit_rows():
    import ml_collections

    from omni_jax.data.synthetic_speech import make_voice_iterator

    c = ml_collections.ConfigDict(dict(train=dict(batch_size=4), data=dict(frames=8, seed=0)))
    whole = make_voice_iterator(c, start_step=2, process_index=0, process_count=1).peek(2)
    part = make_voice_iterator(c, start_step=2, process_index=0, process_count=1, rows=[0, 2, 3]).peek(2)
    assert set(part) == set(whole)
    for k in whole:
        np.testing.assert_array_equal(part[k], whole[k][[0, 2, 3]], err_msg=k)
