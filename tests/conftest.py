"""Test setup: 8 simulated CPU devices (set before jax is imported), fp32 matmuls.

Tests mirror the package layout (tests/models/test_qwen2.py pins omni_jax/models/qwen2.py).
PyTorch-based parity tests import torch/transformers directly: the test command installs
the `torch` extra, so a missing reference library fails loudly instead of skipping.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# XLA CPU aborts a collective whose 8 simulated participants do not all arrive within 40 s, which a
# loaded 2-core machine can exceed inside a big step (launch/mesh_check.py): allow an hour
os.environ["XLA_FLAGS"] += " --xla_cpu_collective_call_terminate_timeout_seconds=3600"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def read_tsv(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) rows of a reference state-dict listing in tests/fixtures/."""
    import ast

    rows = []
    with open(os.path.join(FIXTURES, name)) as f:
        next(f)
        for line in f:
            n, s = line.rstrip("\n").split("\t")
            rows.append((n, tuple(ast.literal_eval(s))))
    return rows
