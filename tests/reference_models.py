"""Tiny random transformers reference models (no downloads) shared by parity tests."""

import torch
from transformers import Qwen2Config as HFQwen2Config
from transformers import Qwen2ForCausalLM

from omni_jax.train import step as _step

random_params = _step.random_params  # the tests' random parameters of a task

TINY_QWEN2 = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=8, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, max_position_embeddings=512)


def tiny_hf_qwen2(seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = HFQwen2Config(**{**TINY_QWEN2, **overrides}, attn_implementation="eager")
    model = Qwen2ForCausalLM(cfg).eval()
    # random (not zero) biases so that bias handling is actually exercised
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def state_dict_numpy(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
