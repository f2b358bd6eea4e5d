"""launch/convert.py: export a trained checkpoint to Hugging Face layout, load it in
transformers, and check logits against omni_jax (the logit checker)."""

import os

import jax
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from configs import backbone_tiny
from launch.convert import check, export
from omni_jax.convert.safetensors_io import load_state_dict
from omni_jax.train.trainer import train


def test_export_trained_checkpoint_and_check_logits(tmp_path):
    c = backbone_tiny.get_config("runlocal")
    c.train.steps = 2
    train(c, str(tmp_path / "run"))
    files = export(c, str(tmp_path / "run"), str(tmp_path / "hf"), "hf")
    assert any(f.endswith("model.safetensors") for f in files)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), torch_dtype=torch.float32)
    assert model.config.num_hidden_layers == 2
    assert check(str(tmp_path / "hf"), 1e-5) <= 1e-5
    # the exported weights are the trained ones, not a fresh init
    export(c, str(tmp_path / "run"), str(tmp_path / "rel"), "release", dtype="bfloat16")
    sd = load_state_dict(str(tmp_path / "rel"))
    assert "model.layers.1.self_attn.W_pack.weight" in sd and sd["lm_head.weight"].dtype.name == "bfloat16"


# ---- --mode=export_torch (omni_jax/convert/export_torch.py) from trainer workdirs ----


def _workdir(path, config, params, state=None):
    """A trainer-style workdir (config.json + checkpoints/3 with params [+ model_state]) without training."""
    from omni_jax.train.checkpoint import Checkpointer

    path.mkdir()
    (path / "config.json").write_text(config.to_json_best_effort(indent=2))
    ck = Checkpointer(str(path / "checkpoints"), async_save=False)
    tree = {"step": np.asarray(3, np.int32), "params": params}
    if state is not None:
        tree["model_state"] = state
    ck.save(3, tree, {"step": 3, "task": config.task}, {}, force=True)
    ck.close()
    return str(path)


def _random(abstract, seed):
    rs = np.random.RandomState(seed)
    return jax.tree.map(lambda a: (0.1 * rs.randn(*a.shape)).astype(np.float32), abstract)


def test_export_torch_v1_workdir_command_line(tmp_path):
    import subprocess
    import sys

    from configs.omni_v1 import stages
    from omni_jax.convert import export_torch as et
    from omni_jax.models.omni_v1 import OmniV1Config

    c = stages.base("test")
    params = _random(et.v1_abstract_params(OmniV1Config.from_config(c.model)), 0)
    src = _workdir(tmp_path / "run", c, params)
    cmd = [sys.executable, "-m", "launch.convert", "--mode=export_torch", f"--src={src}", f"--out={tmp_path / 'pt'}",
           "--parts=model,siglip"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    print(r.stdout)
    assert f"model: OmniV1ForCausalLM (remote code) -> {tmp_path / 'pt'} (config.json, configuration_omni_v1.py, " \
           "model.safetensors, modeling_omni_v1.py)" in r.stdout
    assert f"siglip: SiglipVisionModel -> {tmp_path / 'pt' / 'siglip'} (config.json, model.safetensors)" in r.stdout
    diffs = [float(x.split()[-1]) for x in r.stdout.split("max abs diff")[1:] for x in [x.split(",")[0].split("\n")[0]]]
    assert len(diffs) == 2 and max(diffs) <= 1e-5
    # a second export into the same directory is refused, with the flag that allows it
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root, env=dict(os.environ))
    assert r.returncode != 0 and "already holds an export" in r.stderr and "--overwrite" in r.stderr


def test_export_torch_omni15_workdir_release_and_parts(tmp_path, capsys):
    import pytest
    from absl import app

    from configs.omni15 import stages
    from launch.convert import export_torch
    from omni_jax.convert import omni as oc

    c = stages.base("test")
    abstract_params, abstract_state = oc.abstract_variables(c.model)
    src = _workdir(tmp_path / "run", c, _random(abstract_params, 1), _random(abstract_state, 2))
    parity = export_torch(src, str(tmp_path / "pt"), ["release", "vision", "llm"], dtype="float32")
    out = capsys.readouterr().out
    print(out)
    assert "release: the Baichuan-Omni-1.5 release layout" in out and "vision: Qwen2VisionTransformerPretrainedModel" in out
    assert set(parity) == {"release", "vision", "llm"}
    assert parity["release"] == 0.0 and parity["vision"] <= 1e-5 and parity["llm"] <= 1e-5
    with pytest.raises(app.UsageError, match=r"Baichuan-Omni-1.5 has no part \['siglip'\]"):
        export_torch(src, str(tmp_path / "other"), ["siglip"])
    with pytest.raises(app.UsageError, match=r"dtype 'float16' is not supported for release"):
        export_torch(src, str(tmp_path / "other"), ["release"], dtype="float16")
    assert not os.path.exists(tmp_path / "other")
