"""Checkpoint integrity: a hash of every array a checkpoint holds, written with it, verified on restore.

    state_hashes(state) -> {"params/llm/...": "hex", "opt_state/...": ..., "step": ...}
    tree_hash(hashes)   -> one sha256 over all of them (the certificate's "params + optimizer" hash)
    verify(hashes_saved, state_restored, where, scheme)  raises CheckpointCorruptError naming the arrays

Scheme "elementwise-v1" (HASH_SCHEME, what new checkpoints record in their meta as `hash_scheme`):
every element contributes splitmix64(global flat index, its bits) to two 64-bit sums (two lanes with
different constants); the array's hash is sha256(dtype, shape, the two sums). Each process hashes
only the shards it holds (one replica of each, `replica_id == 0`), so nothing is gathered to one
host: the sums of the processes are added (a few bytes per array). A sum does not depend on how the
array is split, so the hash is the same for any mesh and process count (a checkpoint written by 2
processes verifies when 1 process restores it). It detects a changed element, not an adversary.

Scheme "sha256-bytes" (checkpoints written before it; still verified that way): sha256 of dtype,
shape and the bytes of the full value, gathered to every host.

A truncated or altered file in the checkpoint restores to different values (or fails to restore
at all) and never goes unnoticed. The trainer falls back to the previous complete checkpoint when
the latest one is corrupt (omni_jax/train/trainer.py _resume).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import jax
import numpy as np


class CheckpointCorruptError(RuntimeError):
    pass


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _host_value(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


HASH_SCHEME = "elementwise-v1"
LEGACY_SCHEME = "sha256-bytes"
_LANES = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD1B54A32D192ED03))
_CHUNK = 1 << 22  # elements hashed at a time (bounds the host memory per shard)


def bytes_hash(x) -> str:
    """The legacy scheme: sha256 of dtype, shape and the full value's bytes (gathered to the host)."""
    a = np.ascontiguousarray(_host_value(x))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a).reshape(-1)
    if a.dtype.itemsize not in (1, 2, 4, 8):
        raise TypeError(f"cannot hash arrays of dtype {a.dtype} (itemsize {a.dtype.itemsize})")
    return a.view(np.dtype(f"u{a.dtype.itemsize}")).astype(np.uint64)


def _shards(x) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """(start of the block in the global array, its values) for one replica of every block this
    process holds."""
    if isinstance(x, jax.Array):
        out = []
        for sh in x.addressable_shards:
            if sh.replica_id == 0:
                starts = tuple(sl.indices(n)[0] for sl, n in zip(sh.index, x.shape))
                out.append((starts, np.asarray(sh.data)))
        return out
    if jax.process_index() != 0:  # a host value is the same on every process: counted once
        return []
    return [((0,) * np.ndim(x), np.asarray(x))]


def _block_sums(starts: tuple[int, ...], block: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(2,) uint64 lane sums of one block at `starts` of a global array of `shape`."""
    sums = np.zeros(2, np.uint64)
    if block.size == 0:
        return sums
    bits = _bits(block).reshape(block.shape or (1,))
    if not shape:  # 0-d: global index 0
        starts, shape = (0,), (1,)
    strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]
    # global flat index of the block's inner axes (all but the first), broadcast once
    inner = np.zeros(bits.shape[1:], np.uint64)
    for ax in range(1, bits.ndim):
        pos = (np.arange(bits.shape[ax], dtype=np.uint64) + np.uint64(starts[ax])) * np.uint64(strides[ax])
        inner = inner + pos.reshape((-1,) + (1,) * (bits.ndim - 1 - ax))
    rows = max(1, _CHUNK // max(inner.size, 1))
    for r0 in range(0, bits.shape[0], rows):
        r = np.arange(r0, min(r0 + rows, bits.shape[0]), dtype=np.uint64) + np.uint64(starts[0])
        idx = ((r * np.uint64(strides[0])).reshape((-1,) + (1,) * inner.ndim) + inner[None]).reshape(-1)
        b = bits[r0:r0 + rows].reshape(-1)
        for i, c in enumerate(_LANES):
            sums[i] += np.sum(_mix(_mix(idx * c + np.uint64(1)) ^ b), dtype=np.uint64)
    return sums


def _partial_sums(x) -> np.ndarray:
    """(2,) uint64: this process's contribution to the two lane sums of array x."""
    shape = tuple(np.shape(x))
    sums = np.zeros(2, np.uint64)
    with np.errstate(over="ignore"):
        for starts, block in _shards(x):
            sums += _block_sums(starts, block, shape)
    return sums


def _finish(x, sums: np.ndarray) -> str:
    h = hashlib.sha256(f"{np.dtype(x.dtype).str}{tuple(np.shape(x))}".encode())
    h.update(np.ascontiguousarray(sums, np.uint64).tobytes())
    return h.hexdigest()


def _add_over_processes(partial: np.ndarray) -> np.ndarray:
    """(n, 2) uint64 per process -> the sums over all processes (wrapping), the same on every one."""
    if jax.process_count() == 1:
        return partial
    from jax.experimental import multihost_utils

    raw = np.ascontiguousarray(partial, np.uint64).view(np.uint8).reshape(-1)  # uint8: no x64 needed
    every = np.asarray(multihost_utils.process_allgather(raw))
    every = np.ascontiguousarray(every).view(np.uint64).reshape((-1,) + partial.shape)
    with np.errstate(over="ignore"):
        return np.sum(every, axis=0, dtype=np.uint64)


def array_hash(x) -> str:
    """The elementwise-v1 hash of one array (all processes must call it together)."""
    return _finish(x, _add_over_processes(_partial_sums(x)[None])[0])


def state_hashes(tree: Any, scheme: str = HASH_SCHEME) -> dict[str, str]:
    """{path: hash} of every array leaf of `tree` (e.g. a TrainState). Every process calls it (it
    adds the processes' sums once for all arrays) and gets the same answer."""
    leaves = [(("/".join(_key_name(k) for k in path)), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
              if hasattr(leaf, "shape") and hasattr(leaf, "dtype")]
    if scheme == LEGACY_SCHEME:
        return {k: bytes_hash(v) for k, v in leaves}
    if scheme != HASH_SCHEME:
        raise ValueError(f"unknown checkpoint hash scheme {scheme!r}: this omni_jax knows {HASH_SCHEME!r} and "
                         f"{LEGACY_SCHEME!r}; restore with the omni_jax that wrote it, or set "
                         f"config.checkpoint.hashes=False")
    if not leaves:
        return {}
    sums = _add_over_processes(np.stack([_partial_sums(v) for _, v in leaves]))
    return {k: _finish(v, s) for (k, v), s in zip(leaves, sums)}


def tree_hash(hashes: Mapping[str, str], prefixes: tuple[str, ...] = ("params", "opt_state")) -> str:
    """One sha256 over the per-array hashes whose path starts with one of `prefixes`."""
    h = hashlib.sha256()
    for k in sorted(hashes):
        if k.split("/")[0] in prefixes:
            h.update(f"{k}={hashes[k]};".encode())
    return h.hexdigest()


def verify(saved: Mapping[str, str], restored: Any, where: str, scheme: str = HASH_SCHEME) -> None:
    got = state_hashes(restored, scheme)
    bad = sorted(k for k in set(saved) | set(got) if saved.get(k) != got.get(k))
    if bad:
        raise CheckpointCorruptError(
            f"checkpoint {where} does not hold what was saved: {len(bad)} array(s) differ from their "
            f"recorded sha256: {bad[:10]}")
