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
