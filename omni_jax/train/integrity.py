"""Checkpoint integrity: a sha256 of every array a checkpoint holds, written with it, verified on restore.

    state_hashes(state) -> {"params/llm/...": "sha256 hex", "opt_state/...": ..., "step": ...}
    tree_hash(hashes)   -> one sha256 over all of them (the certificate's "params + optimizer" hash)
    verify(hashes_saved, state_restored, where)  raises CheckpointCorruptError naming the arrays

The hash covers dtype, shape and the bytes of the full (global) value, computed on the host from
the values that are saved (so a truncated or altered file in the checkpoint, which restores to
different values or fails to restore at all, never goes unnoticed). The trainer falls back to the
previous complete checkpoint when the latest one is corrupt (omni_jax/train/trainer.py _resume).
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


def array_hash(x) -> str:
    a = np.ascontiguousarray(_host_value(x))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def state_hashes(tree: Any) -> dict[str, str]:
    """{path: sha256} of every array leaf of `tree` (e.g. a TrainState)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): array_hash(leaf) for path, leaf in leaves
            if hasattr(leaf, "shape") and hasattr(leaf, "dtype")}


def tree_hash(hashes: Mapping[str, str], prefixes: tuple[str, ...] = ("params", "opt_state")) -> str:
    """One sha256 over the per-array hashes whose path starts with one of `prefixes`."""
    h = hashlib.sha256()
    for k in sorted(hashes):
        if k.split("/")[0] in prefixes:
            h.update(f"{k}={hashes[k]};".encode())
    return h.hexdigest()


def verify(saved: Mapping[str, str], restored: Any, where: str) -> None:
    got = state_hashes(restored)
    bad = sorted(k for k in set(saved) | set(got) if saved.get(k) != got.get(k))
    if bad:
        raise CheckpointCorruptError(
            f"checkpoint {where} does not hold what was saved: {len(bad)} array(s) differ from their "
            f"recorded sha256: {bad[:10]}")
