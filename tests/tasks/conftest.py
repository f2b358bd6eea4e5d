"""The trained colour-probe fixture shared by the quality bar and the ablation tests.

`probe_run` trains configs/omni_v1/ci.py (a tiny v1 omni model on the colour probes,
omni_jax/data/colour_probe.py) once per test session with the real trainer into a
temporary workdir and returns its final parameters, the task, and the training records
the run read (every row of every step, rebuilt from the step-indexed pipeline)."""

import dataclasses
import json
import time
from typing import Any

import jax
import pytest


@dataclasses.dataclass
class ProbeRun:
    config: Any
    task: Any
    params: Any
    state: Any
    workdir: str
    train_seconds: float
    read: dict  # dataset spec -> records the run's batches held, in order of first use


def _records_read(config) -> dict:
    from omni_jax.data.omni_pipeline import OmniPipeline

    pipe = OmniPipeline(config, "probe")
    rows = int(config.stages.probe.steps) * int(config.train.batch_size)
    read: dict = {}
    for r in range(rows):  # the iterator's global rows of step s are s * B + [0, B)
        comp, entries = pipe.rows[r]
        plan = pipe.plans[comp]
        got = read.setdefault(f"{plan.comp.dataset} [{plan.comp.split}]", {})
        for rec, _ in entries:
            got.setdefault(int(rec), plan.source[int(rec)])
    return {k: list(v.values()) for k, v in read.items()}


@pytest.fixture(scope="session")
def probe_run(tmp_path_factory) -> ProbeRun:
    import ml_collections

    from configs.omni_v1 import ci
    from omni_jax.tasks import get_task
    from omni_jax.train.checkpoint import Checkpointer
    from omni_jax.train.trainer import train

    workdir = str(tmp_path_factory.mktemp("probe_run"))
    config = ci.get_config()
    t0 = time.perf_counter()
    result = train(config, workdir)
    seconds = time.perf_counter() - t0
    assert result["status"] == "done", result
    # what the run read: its own config.json, not the config object this test holds
    ran = ml_collections.ConfigDict(json.load(open(f"{workdir}/config.json")))
    ck = Checkpointer(f"{workdir}/checkpoints")
    final = ck.restore_tree(result["step"])
    ck.close()
    task = get_task(config)
    print(f"probe fixture: {result['step']} steps in {seconds:.0f} s, last metrics "
          f"{ {k: round(v, 3) for k, v in result['last_metrics'].items() if k in ('text_loss', 'text_accuracy')} }")
    return ProbeRun(config, task, jax.device_get(final["params"]), jax.device_get(final.get("model_state")),
                    workdir, seconds, _records_read(ran))


@pytest.fixture(scope="session")
def probe_replies(probe_run) -> dict:
    """{probe name: (held-out records, {record index: normalised greedy reply})} of the trained fixture."""
    from omni_jax.data import colour_probe
    from omni_jax.tasks import probe_eval

    out = {}
    for name, fmt in (("colour_images", "image_qa"), ("colour_words", "asr")):
        recs = colour_probe.records(name, "test")
        out[name] = (recs, probe_eval.score(probe_run.task, probe_run.params, probe_run.state, recs, fmt,
                                            name=f"held_out_{name}"))
    return out
