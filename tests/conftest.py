"""Test setup: 8 simulated CPU devices (set before jax is imported), fp32 matmuls, the suite's
XLA compile flags (tests/compile_flags.py).

Tests mirror the package layout (tests/models/test_qwen2.py pins omni_jax/models/qwen2.py).
PyTorch-based parity tests import torch/transformers directly: the test command installs
the `torch` extra, so a missing reference library fails loudly instead of skipping.
"""

import os

import pytest

from omni_jax import cpu_simulation  # sets no jax state: jax is imported below
from tests import compile_flags

# XLA CPU aborts a collective whose 8 simulated participants do not all arrive within 40 s, which a
# loaded 2-core machine can exceed inside a big step (launch/mesh_check.py): allow an hour
# (plus the suite's compile flags, tests/compile_flags.py)
os.environ["XLA_FLAGS"] = cpu_simulation.set_devices(
    compile_flags.add(os.environ.get("XLA_FLAGS", "") + " " + cpu_simulation.TERMINATE_TIMEOUT), 8)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under `-n 2 --dist loadgroup` (.ci/run) each test file is one xdist group, so a file's
    module fixtures are built once, as with --dist loadfile. Files whose tests share an expensive
    session fixture (a training run) mark themselves `pytestmark = pytest.mark.xdist_group(<fixture>)`
    and so run in the same worker: the run is made once instead of once per worker."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    # the longest groups (a training run each, 5-10 minutes) go first, so the other worker is not left
    # idle at the end while one of them runs (xdist hands out groups in collection order); stable sort
    first = ("eval_report_run", "probe_run")
    group = lambda item: item.get_closest_marker("xdist_group").args[0]
    items.sort(key=lambda item: first.index(group(item)) if group(item) in first else len(first))


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


@pytest.fixture(scope="session")
def eval_report_run(tmp_path_factory):
    """image_text_1 then sft_2, 2 steps each, random init; periodic evaluation every step
    (config.evaluate.every_steps=1) except in sft_2 (its eval_every=0). A 4-step model seldom
    emits `<audiogen_start>`: rows of the final speech replies that have no speech get one fixed
    chunk of codes, so the synthesis -> report -> TensorBoard audio path and the intelligibility
    transcription (real: the model's ASR of the synthesised waveform) run."""
    import numpy as np

    from configs.omni15 import pipeline
    from omni_jax.tasks import omni_eval
    from omni_jax.train.trainer import train

    c = pipeline.get_config("test")
    c.stage_order = ("image_text_1", "sft_2")
    c.evaluate.update(every_steps=1, periodic_samples=1)
    c.stages.sft_2.eval_every = 0
    workdir = tmp_path_factory.mktemp("report") / "run"
    real = omni_eval.generate
    calls = []

    def generate(task, params, samples, tok, *, max_new, speech, **kw):
        rows, ids = real(task, params, samples, tok, max_new=max_new, speech=speech, **kw)
        calls.append((len(samples), speech))
        if speech:
            for k, r in enumerate(rows):
                if not sum(len(ch) for ch in r.audio_chunks):
                    r.audio_chunks = [np.random.RandomState(k).randint(0, 16, (20, 8)).astype(np.int32)]
        return rows, ids

    mp = pytest.MonkeyPatch()
    mp.setattr(omni_eval, "generate", generate)
    try:
        result = train(c, str(workdir))
    finally:
        mp.undo()
    return c, workdir, result, calls
