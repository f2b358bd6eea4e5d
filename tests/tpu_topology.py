"""TPU devices to compile for ahead of time on this CPU machine (libtpu, the test command's `tpu`
extra): `jax.experimental.topologies` describes a slice, the real TPU compiler builds for it."""

import os

import pytest


def tpu_devices(topology: str) -> list:
    """The devices of `topology` (e.g. "v5p:4x4x4"); a missing libtpu fails the test with the fix."""
    from jax.experimental import topologies

    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # another process may hold libtpu's lock file
    try:
        return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    except Exception as e:  # pragma: no cover - the test command installs libtpu
        pytest.fail(f"libtpu is needed for the TPU AOT check (pip install -e '.[tpu]'): {e}")
