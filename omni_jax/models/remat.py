"""Named rematerialisation (activation checkpointing) policies, chosen by config string.

  none                 keep every activation (no remat)
  full                 save nothing inside a layer; recompute it in the backward pass
  dots                 save matmul outputs (jax.checkpoint_policies.checkpoint_dots)
  dots_no_batch        save matmul outputs without batch dims (weights-stationary matmuls)
  offload_dots         like dots_no_batch but offload the saved values to host memory
"""

from __future__ import annotations

import jax

_POLICIES = {
    "full": lambda: jax.checkpoint_policies.nothing_saveable,
    "dots": lambda: jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": lambda: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "offload_dots": lambda: jax.checkpoint_policies.offload_dot_with_no_batch_dims(
        "device", "pinned_host"),
}

NAMES = ("none",) + tuple(_POLICIES)


def remat_policy(name: str):
    """The jax.checkpoint policy for a config name ('none' returns None: do not remat)."""
    if name == "none":
        return None
    try:
        return _POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown remat_policy {name!r}; use one of {list(NAMES)}") from None
