"""Tiny random transformers vision references (no downloads) for the vision branch's tests."""

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

TINY_NAVIT = dict(depth=3, embed_dim=64, hidden_size=48, num_heads=4, mlp_ratio=4)
TINY_SIGLIP = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   image_size=56, patch_size=14, layer_norm_eps=1e-6)


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random (not zero / one) biases and norm weights so their handling is exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_q" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def tiny_hf_navit(seed: int = 0, **overrides) -> Qwen2VisionTransformerPretrainedModel:
    torch.manual_seed(seed)
    cfg = Qwen2VLVisionConfig(**{**TINY_NAVIT, **overrides})
    return _randomise(Qwen2VisionTransformerPretrainedModel._from_config(cfg, attn_implementation="eager").eval())


def tiny_hf_siglip(seed: int = 0, **overrides) -> SiglipVisionModel:
    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(**{**TINY_SIGLIP, **overrides})
    return _randomise(SiglipVisionModel._from_config(cfg, attn_implementation="eager").eval())


def state_dict_numpy(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
