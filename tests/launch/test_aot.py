"""launch/aot.py: the planner compiles a sharded step ahead of time and reports memory/flops;
every 7B stage (Baichuan-Omni-1.5 and v1) traces its bf16 train step on abstract shapes.

Here it targets the 8 simulated CPU devices; with the `tpu` extra the same code compiles
for TPU topologies (e.g. v5p:4x4x4, recorded in the README)."""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from configs import backbone_tiny
from launch.aot import plan, stage_step
from launch.aot_plans import keep_memory_report, roofline
from omni_jax import sharding as shd
from omni_jax.models.audio_head import AudioHead

OMNI15_STAGES = ("image_text_1", "image_text_2", "image_audio_text_1", "image_audio_text_2", "omni_pretrain",
                 "sft_1", "sft_2", "audio_tokenizer", "flow_matching", "vocoder")
V1_STAGES = ("image_language_1", "image_language_2", "image_language_3", "video_language", "audio_language",
             "omni_alignment", "sft")
# CI traces the stages that between them run every component and every trainable set (vision
# trained in image_text_2, speech in omni_pretrain, every v1 part in sft, the three own-task
# stages); OMNI_JAX_TEST_ALL_7B=1 traces all 17 (about 20 s each on 2 cores)
EVERY_PATH = {"image_text_2", "omni_pretrain", "audio_tokenizer", "flow_matching", "vocoder", "sft"}
ALL_7B = os.environ.get("OMNI_JAX_TEST_ALL_7B", "") == "1"


def _stage_params(family: str, names) -> list:
    return [pytest.param(f"configs.{family}.{n}", marks=() if ALL_7B or n in EVERY_PATH else pytest.mark.skip(
        reason="set OMNI_JAX_TEST_ALL_7B=1 to trace every 7B stage (CI traces one per path)")) for n in names]


def test_roofline_is_the_largest_of_flops_hbm_and_ici_time():
    """1 s of v5p flops, 1 s of HBM bytes and 3 s of interconnect (an all-reduce moves twice its
    result): the ICI bound sets the step; without collective counts the bound is flops/bytes."""
    r = dict(devices=4, model_flops_per_step=4 * 459e12, hlo_matmul_flops_per_device=459e12,
             hlo_bytes_per_device=2765e9, hlo_collective_bytes_per_device={"all-reduce": 600e9, "all-gather": 600e9})
    rf = roofline(r, "v5p")
    assert (rf["flops_s"], rf["bytes_s"], rf["ici_s"], rf["bound_s"], rf["bound_by"]) == (1.0, 1.0, 3.0, 3.0, "ici")
    assert rf["mfu_bound"] == pytest.approx(1 / 3)
    del r["hlo_collective_bytes_per_device"]
    rf = roofline(r, "v5p")
    assert "ici_s" not in rf and rf["bound_s"] == 1.0 and rf["mfu_bound"] == 1.0


def test_plan_on_a_cpu_mesh_reports_memory_and_flops(tmp_path):
    c = backbone_tiny.get_config("runlocal")
    c.mesh.update(data=2, fsdp=2, tensor=2)
    r = plan(c, "cpu", dump_dir=str(tmp_path / "dump"))
    # XLA's memory-usage report of this compile (per-compile dump options), cut to its HBM section
    largest = keep_memory_report(str(tmp_path / "dump"), str(tmp_path / "memory.txt"))
    assert largest and all(";" in chunk and "[" in chunk for chunk in largest), largest
    assert (tmp_path / "memory.txt").read_text().startswith("Memory Space: default")
    assert r["devices"] == 8 and r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2, "context": 1}
    m = r["per_device_bytes"]
    assert m["arguments"] > 0 and m["total"] >= m["arguments"] - m["aliased"]
    assert m["aliased"] > 0  # the state is donated: inputs alias outputs
    assert r["compiler_flops_per_device"] > 0 and r["analytic_flops_per_step"] > 0


def test_an_omni_plan_says_it_has_no_analytic_flops_and_writes_strict_json(capsys):
    """The omni tasks have no closed-form flop count: the report holds null (valid JSON, not NaN)
    and the printout says where the compiled count is, instead of printing nan."""
    from launch.aot import _print

    c = importlib.import_module("configs.omni15.image_text_1").get_config("test")
    c.mesh.update(data=2, fsdp=4)
    r = plan(c, "cpu")
    assert r["task"] == "OmniTask" and r["analytic_flops_per_step"] is None and r["compiler_flops_per_device"] > 0
    assert "ideal_step_s_at_100pct_mfu" not in r
    json.dumps(r, allow_nan=False)
    _print(r)
    out = capsys.readouterr().out
    assert "analytic flops/step: none for task 'OmniTask'" in out and "nan" not in out


def test_unknown_stage_is_a_clear_error():
    c = backbone_tiny.get_config("runlocal")
    with pytest.raises(SystemExit, match=r"--stage='sft_9' is not a stage of this config; its stages: \['pretrain'\]"):
        plan(c, "cpu", "sft_9")


def test_unknown_topology_is_a_clear_error():
    c = backbone_tiny.get_config("runlocal")
    with pytest.raises(SystemExit, match="cannot describe TPU topology 'v9z:1x1'"):
        plan(c, "v9z:1x1")


@pytest.mark.parametrize("module", _stage_params("omni15", OMNI15_STAGES) + _stage_params("omni_v1", V1_STAGES))
def test_every_7b_stage_traces_its_bf16_train_step(module):
    """jax.eval_shape of the sharded train step (8 CPU devices, fsdp): nothing is materialised.
    Parameters stay fp32, the matmuls compute in bf16 (configs/common.py bf16_compute), and
    the audio head sees (rows * F, depth, embed) with F = the speech-frame budget of the
    stage's rows (config.data.shapes.max_speech_frames), never rows * seq_len; stages whose
    batches carry no speech do not run it at all."""
    c = importlib.import_module(module).get_config("7b")
    mesh = shd.make_mesh(c.mesh.to_dict())
    seen = []

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, AudioHead) and context.method_name == "__call__":
            seen.append((args[0].shape, args[1].shape))
        return next_fun(*args, **kwargs)

    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        stage, task, layout, fn, state, batch = stage_step(c, mesh)
        with nn.intercept_methods(spy):  # the step only (the init's shape pass calls the head on 2 frames)
            new_state, metrics = jax.eval_shape(fn, state, batch)
    assert {a.dtype for a in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
    assert jax.tree.structure(new_state.params) == jax.tree.structure(state.params)
    assert metrics["objective"].shape == () and metrics["objective"].dtype == jnp.float32
    assert all(v == "bfloat16" for k, v in _dtypes(c.model).items()), _dtypes(c.model)
    speech = "speech_target_index" in batch
    assert bool(seen) == speech, (stage.name, seen)
    if speech:
        rows, seq = batch["tokens"].shape
        budget = task.shapes.speech_frame_budget
        assert budget == c.data.shapes.max_speech_frames == seq // 4
        depth, d = task.model_cfg.audio_head.depth, task.model_cfg.audio_head.hidden_size
        assert set(seen) == {((rows * budget, d), (rows * budget, depth, d))}


def _dtypes(model) -> dict:
    out = {}
    for name, part in model.items():
        for sub in ("encoder", "bridge", "decoder"):
            if sub in part:
                out[f"{name}.{sub}"] = part[sub].get("dtype")
        if "dtype" in part:
            out[name] = part.dtype
    return out
