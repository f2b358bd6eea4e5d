"""Shared fixtures of the data tests: the embedded default dataset at test size."""

import os

import pytest

SUBSETS = ("omni_images", "omni_interleaved_images", "omni_videos", "omni_speech", "omni_spoken_qa",
           "omni_interleaved_audio", "omni_text")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data dir with every default-dataset builder prepared at size `shapes_tiny`;
    OMNI_JAX_DATA_DIR points at it for the session."""
    from omni_jax.data.builders import prepare

    d = str(tmp_path_factory.mktemp("omni_data"))
    for name in SUBSETS:
        prepare(f"{name}/shapes_tiny", d)
    old = os.environ.get("OMNI_JAX_DATA_DIR")
    os.environ["OMNI_JAX_DATA_DIR"] = d
    yield d
    if old is None:
        os.environ.pop("OMNI_JAX_DATA_DIR", None)
    else:
        os.environ["OMNI_JAX_DATA_DIR"] = old
