"""Named random streams of a run, each derived from `config.train.seed` with jax.random.fold_in.

    stream(seed, "params", "llm")   the initial values of the parameter component `llm`
    stream(seed, "model_state", c)  the initial model state of component c
    stream(seed, "step")            TrainState.rng: per-step keys are fold_in(it, step)
    stream(seed, "data")            data order / synthetic data (pipelines that draw)

A stream's key depends only on the seed and its names (a stable 31-bit hash of each name, not
Python's salted hash), so adding a component, a stage or a microbatch never changes another
stream's draws. Inside a step, randomness that is per example (flow-matching noise and times)
comes from `row_keys`: one key per GLOBAL row index, so splitting the batch into microbatches
(rows k, k+m, ... of microbatch k; omni_jax/train/step.py) draws exactly the same numbers.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp

ROW_IDS = "row_ids"  # batch field (int32 (B,)): the global row index of every row of a (micro)batch


def name_id(name: str) -> int:
    """A stable 31-bit id of a stream name (sha256, the same on every machine and Python run)."""
    return int.from_bytes(hashlib.sha256(str(name).encode()).digest()[:4], "little") & 0x7FFFFFFF


def stream(seed: int, *names: str) -> jax.Array:
    """The key of stream `names` (e.g. ("params", "llm")) of a run with `seed`."""
    key = jax.random.PRNGKey(seed)
    for n in names:
        key = jax.random.fold_in(key, name_id(n))
    return key


def row_keys(rng: jax.Array, row_ids: jax.Array) -> jax.Array:
    """(B, 2) keys, one per global row index: the same draws whatever the microbatch split."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(row_ids.astype(jnp.uint32))
