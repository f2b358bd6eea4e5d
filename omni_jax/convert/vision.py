"""Conversion rules for the vision branch: NaViT + bridge (1.5), SigLIP + v1 projectors (v1).

NaViT (models/navit.py), two PyTorch layouts:
  "release"  Baichuan-Omni-1.5: `model.visual_model.{patch_embed,blocks}.*` and
             `model.visual_bridge_model.{ln_q,mlp.0,mlp.2}.*` (reference_state_dict.tsv).
  "hf"       Qwen2-VL: `visual.{patch_embed,blocks}.*` and `visual.merger.*` (the hub
             checkpoints); `prefix=""` gives the names of a standalone transformers
             Qwen2VisionTransformerPretrainedModel, `prefix="model.visual."` those of a
             transformers-5 Qwen2VLForConditionalGeneration state dict.
SigLIP (models/siglip.py): transformers SiglipVisionModel names under `prefix`
  (`"vision_model."` for hub SiglipModel checkpoints such as siglip-so400m-patch14-384,
  `""` for a standalone SiglipVisionModel).
v1 projectors (models/v1_projectors.py): no public code exists; the PyTorch names are ours,
  an nn.Sequential(Linear, GELU, Linear) at `{prefix}mlp.{0,2}` and an nn.Conv2d at
  `{video_prefix}conv` (tests/models/test_v1_projectors.py builds exactly these modules).

Our parameter trees mount under the omni model's top-level names: `visual/`,
`visual_bridge/`, `siglip/`, `v1_projector/`, `v1_video_projector/`.
"""

from __future__ import annotations

from typing import Any, Mapping

from omni_jax.convert.mapping import Rule, linear, prefixed, same
from omni_jax.models.navit import NaViTConfig
from omni_jax.models.siglip import SiglipConfig
from omni_jax.models.v1_projectors import V1ProjectorConfig

FLAVOURS = ("release", "hf")

# Buffers some PyTorch checkpoints carry that hold no weights.
IGNORE = (r"(.*\.)?rotary_pos_emb\.inv_freq", r"(.*\.)?embeddings\.position_ids")
# A SigLIP checkpoint's attention-pooling head, when the model is built without it (use_head=False).
SIGLIP_HEAD_IGNORE = (r"(.*\.)?head\..*",)


def _heads_linear(ours: str, theirs: str, heads: int, head_dim: int, *, out_heads: bool) -> Rule:
    """torch Linear (out, in) <-> our per-head kernel: (E, H, hd) when the output is split
    into heads (q/k/v), (H, hd, E) when the input is (attention output projections)."""
    if out_heads:
        return Rule(ours, theirs, lambda k: k.reshape(k.shape[0], heads * head_dim).T,
                    lambda w: w.T.reshape(w.shape[1], heads, head_dim))
    return Rule(ours, theirs, lambda k: k.reshape(heads * head_dim, k.shape[-1]).T,
                lambda w: w.T.reshape(heads, head_dim, w.shape[0]))


def _reshaped(ours: str, theirs: str, ours_shape: tuple[int, ...], theirs_shape: tuple[int, ...]) -> Rule:
    return Rule(ours, theirs, lambda x: x.reshape(theirs_shape), lambda x: x.reshape(ours_shape))


# ------------------------------------ NaViT ------------------------------------


def navit_encoder_rules(cfg: NaViTConfig) -> list[Rule]:
    """NaViT params (relative) <-> encoder tensors (relative), in PyTorch registration order."""
    e, h, hd, c = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.in_channels
    t, p = cfg.temporal_patch_size, cfg.patch_size
    B, b = "blocks.{i}.", "blocks/"
    return [
        # Conv3d with kernel = stride is a matmul over the flattened (c, t, y, x) patch.
        Rule("patch_embed/kernel", "patch_embed.proj.weight",
             lambda k: k.T.reshape(e, c, t, p, p), lambda w: w.reshape(e, -1).T),
        same(b + "norm1/scale", B + "norm1.weight"),
        same(b + "norm1/bias", B + "norm1.bias"),
        same(b + "norm2/scale", B + "norm2.weight"),
        same(b + "norm2/bias", B + "norm2.bias"),
        # fused qkv rows are [q | k | v], each heads-major: (3, H, hd) on our side
        Rule(b + "attn/qkv/kernel", B + "attn.qkv.weight",
             lambda k: k.reshape(e, 3 * e).T, lambda w: w.T.reshape(e, 3, h, hd)),
        _reshaped(b + "attn/qkv/bias", B + "attn.qkv.bias", (3, h, hd), (3 * e,)),
        _heads_linear(b + "attn/proj/kernel", B + "attn.proj.weight", h, hd, out_heads=False),
        same(b + "attn/proj/bias", B + "attn.proj.bias"),
        linear(b + "mlp/fc1/kernel", B + "mlp.fc1.weight"),
        same(b + "mlp/fc1/bias", B + "mlp.fc1.bias"),
        linear(b + "mlp/fc2/kernel", B + "mlp.fc2.weight"),
        same(b + "mlp/fc2/bias", B + "mlp.fc2.bias"),
    ]


def navit_bridge_rules(cfg: NaViTConfig) -> list[Rule]:
    """PatchMerger params (relative) <-> `ln_q`, `mlp.0`, `mlp.2` (nn.Sequential indices)."""
    return [
        same("ln_q/scale", "ln_q.weight"),
        same("ln_q/bias", "ln_q.bias"),
        linear("fc1/kernel", "mlp.0.weight"),
        same("fc1/bias", "mlp.0.bias"),
        linear("fc2/kernel", "mlp.2.weight"),
        same("fc2/bias", "mlp.2.bias"),
    ]


def navit_rules(cfg: NaViTConfig, flavour: str = "release", *, prefix: str = "visual.",
                ours_encoder: str = "visual/", ours_bridge: str = "visual_bridge/") -> list[Rule]:
    """Encoder + bridge rules mounted under our top-level names.

    flavour "release": model.visual_model.* / model.visual_bridge_model.* (prefix unused).
    flavour "hf": {prefix}* / {prefix}merger.* (Qwen2-VL).
    """
    if flavour == "release":
        enc, bridge = "model.visual_model.", "model.visual_bridge_model."
    elif flavour == "hf":
        enc, bridge = prefix, prefix + "merger."
    else:
        raise ValueError(f"unknown vision checkpoint flavour {flavour!r}; use one of {FLAVOURS}")
    return (prefixed(navit_encoder_rules(cfg), ours=ours_encoder, theirs=enc)
            + prefixed(navit_bridge_rules(cfg), ours=ours_bridge, theirs=bridge))


def navit_config_from_hf(d: Mapping[str, Any], **overrides) -> NaViTConfig:
    """Our NaViTConfig from a transformers Qwen2VLVisionConfig dict or the release's
    `visual_config`.

    The release's dict also carries CLIP leftovers the Qwen2-VL code never reads
    (num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    layer_norm_eps=1e-5); only depth / num_heads / mlp_ratio count (the block norms are
    hard-coded to eps 1e-6). Beware: transformers 5's Qwen2VLVisionConfig aliases
    num_hidden_layers -> depth and num_attention_heads -> num_heads, so feeding it the
    release dict builds a 12-block, 12-head encoder; this function reads the right keys."""
    rope = d.get("rope_theta") or (d.get("rope_parameters") or {}).get("rope_theta", 1e4)
    embed = d["embed_dim"]
    kw = dict(
        embed_dim=embed, depth=d["depth"], num_heads=d["num_heads"],
        mlp_dim=int(embed * d.get("mlp_ratio", 4)), in_channels=d.get("in_channels", d.get("in_chans", 3)),
        patch_size=d.get("spatial_patch_size", d.get("patch_size", 14)),
        temporal_patch_size=d.get("temporal_patch_size", 2),
        spatial_merge_size=d.get("spatial_merge_size", 2), rope_theta=rope,
        hidden_act=d.get("hidden_act", "quick_gelu"), out_hidden_size=d["hidden_size"],
    )
    kw.update(overrides)
    return NaViTConfig(**kw)


def navit_hf_config_dict(cfg: NaViTConfig) -> dict:
    """A transformers Qwen2VLVisionConfig dict for exporting under Qwen2-VL names."""
    if cfg.mlp_dim % cfg.embed_dim:
        raise ValueError(f"mlp_dim={cfg.mlp_dim} is not a multiple of embed_dim={cfg.embed_dim}: "
                         "transformers' Qwen2VLVisionConfig only has mlp_ratio")
    return {
        "model_type": "qwen2_vl", "depth": cfg.depth, "embed_dim": cfg.embed_dim,
        "hidden_size": cfg.out_hidden_size, "hidden_act": cfg.hidden_act,
        "mlp_ratio": cfg.mlp_dim // cfg.embed_dim, "num_heads": cfg.num_heads,
        "in_channels": cfg.in_channels, "patch_size": cfg.patch_size,
        "spatial_merge_size": cfg.spatial_merge_size, "temporal_patch_size": cfg.temporal_patch_size,
        "rope_parameters": {"rope_type": "axial", "rope_theta": cfg.rope_theta},
    }


# ------------------------------------ SigLIP ------------------------------------


def siglip_rules(cfg: SiglipConfig, *, prefix: str = "vision_model.", ours: str = "siglip/") -> list[Rule]:
    """SiglipVisionModel tensors (transformers names) <-> our Siglip params."""
    d, h, hd, c, p = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.num_channels, cfg.patch_size
    L, l = "encoder.layers.{i}.", "layers/"
    rules = [
        Rule("embeddings/patch_embedding/kernel", "embeddings.patch_embedding.weight",
             lambda k: k.T.reshape(d, c, p, p), lambda w: w.reshape(d, -1).T),
        same("embeddings/patch_embedding/bias", "embeddings.patch_embedding.bias"),
        same("embeddings/position_embedding", "embeddings.position_embedding.weight"),
        same(l + "layer_norm1/scale", L + "layer_norm1.weight"),
        same(l + "layer_norm1/bias", L + "layer_norm1.bias"),
    ]
    for n in ("k", "v", "q"):  # transformers registers k, v, q
        rules += [
            _heads_linear(f"{l}self_attn/{n}_proj/kernel", f"{L}self_attn.{n}_proj.weight", h, hd, out_heads=True),
            _reshaped(f"{l}self_attn/{n}_proj/bias", f"{L}self_attn.{n}_proj.bias", (h, hd), (d,)),
        ]
    rules += [
        _heads_linear(l + "self_attn/out_proj/kernel", L + "self_attn.out_proj.weight", h, hd, out_heads=False),
        same(l + "self_attn/out_proj/bias", L + "self_attn.out_proj.bias"),
        same(l + "layer_norm2/scale", L + "layer_norm2.weight"),
        same(l + "layer_norm2/bias", L + "layer_norm2.bias"),
        linear(l + "mlp/fc1/kernel", L + "mlp.fc1.weight"),
        same(l + "mlp/fc1/bias", L + "mlp.fc1.bias"),
        linear(l + "mlp/fc2/kernel", L + "mlp.fc2.weight"),
        same(l + "mlp/fc2/bias", L + "mlp.fc2.bias"),
        same("post_layernorm/scale", "post_layernorm.weight"),
        same("post_layernorm/bias", "post_layernorm.bias"),
    ]
    if cfg.use_head:
        rules += [
            _reshaped("head/probe", "head.probe", (d,), (1, 1, d)),
            # nn.MultiheadAttention's in_proj rows are [q | k | v]
            Rule("head/attention/in_proj/kernel", "head.attention.in_proj_weight",
                 lambda k: k.reshape(d, 3 * d).T, lambda w: w.T.reshape(d, 3, h, hd)),
            _reshaped("head/attention/in_proj/bias", "head.attention.in_proj_bias", (3, h, hd), (3 * d,)),
            _heads_linear("head/attention/out_proj/kernel", "head.attention.out_proj.weight", h, hd, out_heads=False),
            same("head/attention/out_proj/bias", "head.attention.out_proj.bias"),
            same("head/layernorm/scale", "head.layernorm.weight"),
            same("head/layernorm/bias", "head.layernorm.bias"),
            linear("head/mlp/fc1/kernel", "head.mlp.fc1.weight"),
            same("head/mlp/fc1/bias", "head.mlp.fc1.bias"),
            linear("head/mlp/fc2/kernel", "head.mlp.fc2.weight"),
            same("head/mlp/fc2/bias", "head.mlp.fc2.bias"),
        ]
    return prefixed(rules, ours=ours, theirs=prefix)


def siglip_config_from_hf(d: Mapping[str, Any], **overrides) -> SiglipConfig:
    """Our SiglipConfig from a transformers SiglipVisionConfig dict (or a SiglipConfig's
    `vision_config`)."""
    d = d.get("vision_config", d)
    kw = dict(
        hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
        num_channels=d.get("num_channels", 3), image_size=d["image_size"], patch_size=d["patch_size"],
        hidden_act=d.get("hidden_act", "gelu_pytorch_tanh"), layer_norm_eps=d.get("layer_norm_eps", 1e-6),
        use_head=d.get("vision_use_head", True),
    )
    kw.update(overrides)
    return SiglipConfig(**kw)


def siglip_hf_config_dict(cfg: SiglipConfig) -> dict:
    return {
        "model_type": "siglip_vision_model", "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_channels": cfg.num_channels,
        "image_size": cfg.image_size, "patch_size": cfg.patch_size, "hidden_act": cfg.hidden_act,
        "layer_norm_eps": cfg.layer_norm_eps, "vision_use_head": cfg.use_head,
    }


# --------------------------------- v1 projectors ---------------------------------


def v1_projector_rules(cfg: V1ProjectorConfig, *, prefix: str = "model.vision_projector.",
                       video_prefix: str = "model.video_projector.", ours: str = "v1_projector/",
                       ours_video: str = "v1_video_projector/", video: bool = True) -> list[Rule]:
    """Image projector (2-layer MLP after the mean pool) and video projector (2x2 conv)."""
    k = cfg.video_kernel
    img = [
        linear("fc1/kernel", "mlp.0.weight"),
        same("fc1/bias", "mlp.0.bias"),
        linear("fc2/kernel", "mlp.2.weight"),
        same("fc2/bias", "mlp.2.bias"),
    ]
    vid = [
        # torch Conv2d (out, in, kh, kw) <-> ours (kh * kw taps, in, out)
        Rule("conv/kernel", "conv.weight",
             lambda x: x.reshape(k, k, x.shape[1], x.shape[2]).transpose(3, 2, 0, 1),
             lambda w: w.transpose(2, 3, 1, 0).reshape(k * k, w.shape[1], w.shape[0])),
        same("conv/bias", "conv.bias"),
    ]
    out = prefixed(img, ours=ours, theirs=prefix)
    if video:
        out += prefixed(vid, ours=ours_video, theirs=video_prefix)
    return out


__all__ = [
    "FLAVOURS", "IGNORE", "SIGLIP_HEAD_IGNORE", "navit_rules", "navit_encoder_rules", "navit_bridge_rules",
    "navit_config_from_hf", "navit_hf_config_dict", "siglip_rules", "siglip_config_from_hf",
    "siglip_hf_config_dict", "v1_projector_rules",
]
