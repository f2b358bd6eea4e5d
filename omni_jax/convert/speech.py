"""Conversion rules for the speech-output modules (omni_jax/models/{audio_head,flow_matching,hift}.py).

Release names (tests/fixtures/reference_state_dict.tsv, reference_vocoder_state_dict.tsv):
  audio_embed     model.audio_embed_layers.{i}.weight
  audio_head      audio_head.transformer_layers.{l}.{self_attention.in_proj_weight, ...}, headnorm, heads.{i}
  flow_matching   audio_tokenizer.audio_flow_matching_decoder.{prenet, conditional_decoder}.*
  vocoder         HiFT state dict (hift.pt): m_source, conv_pre, ups, source_downs, source_resblocks,
                  resblocks, conv_post, f0_predictor; weight-normed convs as weight_g / weight_v.

`release_rules(head_cfg, fm_cfg)` mounts the first three under our top-level names
`audio_embed/`, `flow_matching/`, `audio_head/` in the release's registration order.
`vocoder_rules(cfg, flavour)` covers the separate `vocoder` tree: flavour "weight_norm" reads
and writes weight_g / weight_v (folded on import: weight = v * (g / ||v||), the norm over every
axis but torch's dim 0, which is the output channel of a Conv1d and the INPUT channel of a
ConvTranspose1d); "folded" uses plain `.weight` tensors (torch's remove_weight_norm layout).
Unfolded export writes g = ||w|| and v = w, computed with the same float64 norm as the fold,
so export -> import is bit-exact in both flavours.

Layouts: torch Linear (out, in) <-> our (in, out); torch Conv1d (out, in, k) <-> our (k, in, out);
torch ConvTranspose1d (in, out, k) <-> our (k, in, out); attention projections split heads.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from omni_jax.convert.mapping import Rule, conv1d, conv_layouts, linear, prefixed, same
from omni_jax.models.audio_head import AudioHeadConfig
from omni_jax.models.flow_matching import FlowMatchingConfig

RELEASE_FM_PREFIX = "audio_tokenizer.audio_flow_matching_decoder."


def heads_in(ours: str, theirs: str, heads: int, head_dim: int) -> Rule:
    """torch Linear (heads * head_dim, in) <-> our kernel (in, heads, head_dim)."""
    return Rule(ours, theirs, lambda w: w.reshape(w.shape[0], heads * head_dim).T,
                lambda w: w.T.reshape(w.shape[1], heads, head_dim))


def heads_bias(ours: str, theirs: str, heads: int, head_dim: int) -> Rule:
    return Rule(ours, theirs, lambda b: b.reshape(heads * head_dim), lambda b: b.reshape(heads, head_dim))


def heads_out(ours: str, theirs: str, heads: int, head_dim: int) -> Rule:
    """torch Linear (out, heads * head_dim) <-> our kernel (heads, head_dim, out)."""
    return Rule(ours, theirs, lambda w: w.reshape(heads * head_dim, w.shape[-1]).T,
                lambda w: w.T.reshape(heads, head_dim, w.shape[0]))


# ------------------------------------------------------------------- audio embed / head


def audio_embed_rules(cfg: AudioHeadConfig) -> list[Rule]:
    return [same(f"tables_{i}/embedding", f"model.audio_embed_layers.{i}.weight") for i in range(cfg.depth)]


def audio_head_rules(cfg: AudioHeadConfig) -> list[Rule]:
    d, h, hd, depth = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.depth
    f = cfg.ffn_mult * d
    L = "audio_head.transformer_layers.{i}."
    p = "layers/"
    rules = [
        Rule(p + "in_proj/kernel", L + "self_attention.in_proj_weight",
             lambda w: w.reshape(d, 3 * h * hd).T, lambda w: w.T.reshape(d, 3, h, hd)),
        Rule(p + "in_proj/bias", L + "self_attention.in_proj_bias",
             lambda b: b.reshape(3 * h * hd), lambda b: b.reshape(3, h, hd)),
        heads_out(p + "out_proj/kernel", L + "self_attention.out_proj.weight", h, hd),
        same(p + "out_proj/bias", L + "self_attention.out_proj.bias"),
        same(p + "layernorm1/scale", L + "layernorm1.weight"),
        same(p + "layernorm2/scale", L + "layernorm2.weight"),
        # linear1.weight (F, depth * D) viewed (F, depth, D): position l uses [:, l, :]
        Rule(p + "linear1/kernel", L + "linear1.weight",
             lambda k: k.transpose(2, 0, 1).reshape(f, depth * d),
             lambda w: w.reshape(f, depth, d).transpose(1, 2, 0)),
        same(p + "linear1/bias", L + "linear1.bias"),
        Rule(p + "linear2/kernel", L + "linear2.weight",
             lambda k: k.transpose(2, 0, 1).reshape(d, depth * f),
             lambda w: w.reshape(d, depth, f).transpose(1, 2, 0)),
        same(p + "linear2/bias", L + "linear2.bias"),
        same("headnorm/scale", "audio_head.headnorm.weight"),
    ]
    for i in range(depth):
        rules += [linear(f"heads_{i}/kernel", f"audio_head.heads.{i}.weight"),
                  same(f"heads_{i}/bias", f"audio_head.heads.{i}.bias")]
    return rules


# ------------------------------------------------------------------------ flow matching


def _ln(ours: str, theirs: str) -> list[Rule]:
    return [same(ours + "/scale", theirs + ".weight"), same(ours + "/bias", theirs + ".bias")]


def _lin(ours: str, theirs: str, bias: bool = True) -> list[Rule]:
    out = [linear(ours + "/kernel", theirs + ".weight")]
    return out + [same(ours + "/bias", theirs + ".bias")] if bias else out


def _conv(ours: str, theirs: str) -> list[Rule]:
    return [conv1d(ours + "/kernel", theirs + ".weight"), same(ours + "/bias", theirs + ".bias")]


def _causal_block(ours: str, theirs: str) -> list[Rule]:
    return _conv(ours + "/conv", theirs + ".block.0") + _ln(ours + "/norm", theirs + ".block.2")


def _resnet(ours: str, theirs: str) -> list[Rule]:
    return (_lin(ours + "/mlp", theirs + ".mlp.1") + _causal_block(ours + "/block1", theirs + ".block1")
            + _causal_block(ours + "/block2", theirs + ".block2") + _conv(ours + "/res_conv", theirs + ".res_conv"))


def _transformer(cfg: FlowMatchingConfig, ours: str, theirs: str) -> list[Rule]:
    h, hd = cfg.num_heads, cfg.attention_head_dim
    return (_ln(ours + "/norm1", theirs + ".norm1")
            + [heads_in(ours + f"/to_{n}/kernel", theirs + f".attn1.to_{n}.weight", h, hd) for n in "qkv"]
            + [heads_out(ours + "/to_out/kernel", theirs + ".attn1.to_out.0.weight", h, hd),
               same(ours + "/to_out/bias", theirs + ".attn1.to_out.0.bias")]
            + _ln(ours + "/norm3", theirs + ".norm3")
            + _lin(ours + "/ff_proj", theirs + ".ff.net.0.proj") + _lin(ours + "/ff_out", theirs + ".ff.net.2"))


def _unet_block(cfg: FlowMatchingConfig, ours: str, theirs: str, sampler: str | None) -> list[Rule]:
    rules = _resnet(ours + "/resnet", theirs + ".0")
    for j in range(cfg.n_blocks):
        rules += _transformer(cfg, ours + f"/transformer_{j}", theirs + f".1.{j}")
    if sampler:
        rules += _conv(ours + "/" + sampler, theirs + ".2")
    return rules


def flow_matching_rules(cfg: FlowMatchingConfig) -> list[Rule]:
    """Rules for a FlowMatchingDecoder's params; PyTorch names relative to the decoder module."""
    d, h = cfg.prenet_d_model, cfg.prenet_heads
    hd = d // h
    P, L = "prenet/", "prenet.transformer_layers.{i}."
    pl = P + "layers/"
    rules = [same(P + "positional_embedding", "prenet.positional_embedding")]
    rules += _lin(P + "in_mlp_0", "prenet.in_mlp.0") + _lin(P + "in_mlp_2", "prenet.in_mlp.2")
    rules += [
        heads_in(pl + "k_proj/kernel", L + "self_attn.k_proj.weight", h, hd),
        heads_in(pl + "v_proj/kernel", L + "self_attn.v_proj.weight", h, hd),
        heads_bias(pl + "v_proj/bias", L + "self_attn.v_proj.bias", h, hd),
        heads_in(pl + "q_proj/kernel", L + "self_attn.q_proj.weight", h, hd),
        heads_bias(pl + "q_proj/bias", L + "self_attn.q_proj.bias", h, hd),
        heads_out(pl + "out_proj/kernel", L + "self_attn.out_proj.weight", h, hd),
        same(pl + "out_proj/bias", L + "self_attn.out_proj.bias"),
        same(pl + "self_attn_layer_norm/scale", L + "self_attn_layer_norm.weight"),
        *_lin(pl + "fc1", L + "fc1"), *_lin(pl + "fc2", L + "fc2"),
        same(pl + "final_layer_norm/scale", L + "final_layer_norm.weight"),
        same(P + "final_norm/scale", "prenet.final_norm.weight"),
        linear(P + "out_proj/kernel", "prenet.out_proj.weight"),
    ]
    E, C = "estimator/", "conditional_decoder."
    rules += _lin(E + "time_mlp_1", C + "time_mlp.linear_1") + _lin(E + "time_mlp_2", C + "time_mlp.linear_2")
    rules += _unet_block(cfg, E + "down", C + "down_blocks.0", "downsample")
    rules += _unet_block(cfg, E + "mid/block", C + "mid_blocks.{i}", None)
    rules += _unet_block(cfg, E + "up", C + "up_blocks.0", "upsample")
    rules += _causal_block(E + "final_block", C + "final_block")
    rules += _conv(E + "final_proj", C + "final_proj")
    return rules


def release_rules(head_cfg: AudioHeadConfig, fm_cfg: FlowMatchingConfig) -> list[Rule]:
    """audio_embed/, flow_matching/, audio_head/ <-> release names, in release order."""
    return (prefixed(audio_embed_rules(head_cfg), ours="audio_embed/")
            + prefixed(flow_matching_rules(fm_cfg), ours="flow_matching/", theirs=RELEASE_FM_PREFIX)
            + prefixed(audio_head_rules(head_cfg), ours="audio_head/"))


def audio_head_config_from_release(config: dict, **overrides) -> AudioHeadConfig:
    """AudioHeadConfig from the release config.json (hidden_size, audio_config)."""
    a = config["audio_config"]
    kw = dict(hidden_size=config["hidden_size"], codebook_sizes=tuple(a["vq_config"]["codebook_sizes"]),
              num_layers=a["audio_head_transformer_layers"], head_dim=128)
    kw.update(overrides)
    return AudioHeadConfig(**kw)


def flow_matching_config_from_release(config: dict, **overrides) -> FlowMatchingConfig:
    """FlowMatchingConfig from the release config.json `flow_matching_config`."""
    f = config["flow_matching_config"]
    c = f["cfm_params"]
    kw = dict(
        n_mels=f["in_channels"], prenet_in_dim=f["prenet_in_dim"], prenet_d_model=f["prenet_d_model"],
        prenet_heads=f["prenet_attention_heads"], prenet_ffn_dim=f["prenet_ffn_dim"],
        prenet_layers=f["prenet_nlayers"], prenet_max_positions=f["prenet_max_source_positions"],
        prenet_length_ratio=float(f["prenet_target_mel_length_scale_ratio"]), channels=tuple(f["channels"]),
        num_heads=f["num_heads"], attention_head_dim=f["attention_head_dim"], n_blocks=f["n_blocks"],
        num_mid_blocks=f["num_mid_blocks"], sigma_min=c["sigma_min"], t_scheduler=c["t_scheduler"],
        training_cfg_rate=c["training_cfg_rate"], inference_cfg_rate=c["inference_cfg_rate"],
        n_timesteps=f["diffusion_steps"], reg_loss_type=c["reg_loss_type"], loss_weight=f["loss_weight"],
        prior_loss_weight=f["prenet_loss_weight"],
    )
    if f.get("prenet_out_dim", kw["n_mels"]) != kw["n_mels"]:
        raise ValueError("flow_matching_config: prenet_out_dim must equal in_channels (mu is the mel prior)")
    kw.update(overrides)
    return FlowMatchingConfig(**kw)


# ------------------------------------------------------------------------------ vocoder

VOCODER_FLAVOURS = ("weight_norm", "folded")


def _norm_except_dim0(v):
    """||v|| over every axis but 0, keepdims, computed in float64 (numpy) and returned in v's dtype."""
    axes = tuple(range(1, v.ndim))
    if isinstance(v, np.ndarray):
        v64 = v.astype(np.float64)
        return np.sqrt((v64 * v64).sum(axis=axes, keepdims=True)).astype(v.dtype)
    return jnp.sqrt((v * v).sum(axis=axes, keepdims=True))


def fold_weight_norm(g, v):
    """torch weight_norm(dim=0): weight = v * (g / ||v||) (torch._weight_norm's order)."""
    return v * (g / _norm_except_dim0(v))


def unfold_weight_norm(w):
    """A weight -> (g, v) with g = ||w|| and v = w; fold_weight_norm(g, v) returns w bit for bit."""
    return _norm_except_dim0(w), w


def _wn(ours: str, theirs: str, flavour: str, transposed: bool = False) -> list[Rule]:
    """A (possibly weight-normed) conv: bias, then weight (folded) or weight_g, weight_v."""
    to_t, to_o = conv_layouts(transposed)
    rules = [same(ours + "/bias", theirs + ".bias")]
    if flavour == "folded":
        return rules + [Rule(ours + "/kernel", theirs + ".weight", to_t, to_o)]
    return rules + [Rule(ours + "/kernel", (theirs + ".weight_g", theirs + ".weight_v"),
                         lambda k: unfold_weight_norm(to_t(k)), lambda gv: to_o(fold_weight_norm(*gv)))]


def _resblock(ours: str, theirs: str, n: int, flavour: str) -> list[Rule]:
    rules = []
    for which in ("convs1", "convs2"):
        for j in range(n):
            rules += _wn(f"{ours}/{which}_{j}", f"{theirs}.{which}.{j}", flavour)
    for which in ("activations1", "activations2"):
        rules += [same(f"{ours}/{which}_{j}/alpha", f"{theirs}.{which}.{j}.alpha") for j in range(n)]
    return rules


def vocoder_rules(cfg, flavour: str = "weight_norm") -> list[Rule]:
    """Rules for a HiFTGenerator's params <-> the HiFT state dict (hift.pt names)."""
    if flavour not in VOCODER_FLAVOURS:
        raise ValueError(f"unknown vocoder flavour {flavour!r}; use one of {VOCODER_FLAVOURS}")
    rules = _lin("m_source/l_linear", "m_source.l_linear")
    rules += _wn("conv_pre", "conv_pre", flavour)
    n_up = len(cfg.upsample_rates)
    rules += sum((_wn(f"ups_{i}", f"ups.{i}", flavour, transposed=True) for i in range(n_up)), [])
    rules += sum((_conv(f"source_downs_{i}", f"source_downs.{i}") for i in range(n_up)), [])
    for i in range(n_up):
        rules += _resblock(f"source_resblocks_{i}", f"source_resblocks.{i}", len(cfg.source_resblock_dilations[i]), flavour)
    nk = len(cfg.resblock_kernel_sizes)
    for i in range(n_up):
        for j in range(nk):
            n = i * nk + j
            rules += _resblock(f"resblocks_{n}", f"resblocks.{n}", len(cfg.resblock_dilations[j]), flavour)
    rules += _wn("conv_post", "conv_post", flavour)
    for n in range(cfg.f0_layers):
        rules += _wn(f"f0_predictor/condnet_{n}", f"f0_predictor.condnet.{2 * n}", flavour)
    rules += _lin("f0_predictor/classifier", "f0_predictor.classifier")
    return rules


def import_vocoder(state_dict, cfg, abstract_params, *, flavour: str | None = None, source: str = "vocoder state dict"):
    """A HiFT state dict (numpy arrays, e.g. safetensors_io.load_state_dict) -> our params.

    The flavour is detected from the names (any `*.weight_g` -> "weight_norm") unless given.
    Weight-normed convolutions are folded. (The release ships hift.pt, a pickle: convert it once
    with `safetensors.torch.save_file(torch.load('hift.pt', weights_only=True), 'hift.safetensors')`.)
    """
    from omni_jax.convert.mapping import import_params

    if flavour is None:
        flavour = "weight_norm" if any(k.endswith(".weight_g") for k in state_dict) else "folded"
    return import_params(state_dict, vocoder_rules(cfg, flavour), abstract_params, source=source)


def vocoder_config_from_state_dict(shapes: dict, **overrides):
    """A HiFTConfig whose widths match a HiFT state dict's tensor shapes (name -> shape)."""
    from omni_jax.models.hift import HiFTConfig

    def shape(name):
        for suffix in (".weight_v", ".weight"):
            if name + suffix in shapes:
                return tuple(shapes[name + suffix])
        raise KeyError(f"vocoder state dict has no {name}.weight or {name}.weight_v")

    pre = shape("conv_pre")
    n_up = len([k for k in shapes if k.startswith("ups.") and k.endswith(("weight_v", ".weight"))])
    kw = dict(n_mels=pre[1], base_channels=pre[0],
              upsample_kernel_sizes=tuple(shape(f"ups.{i}")[2] for i in range(n_up)),
              nb_harmonics=tuple(shapes["m_source.l_linear.weight"])[1] - 1,
              istft_n_fft=shape("conv_post")[0] - 2, f0_channels=shape("f0_predictor.condnet.0")[0])
    kw.update(overrides)
    return HiFTConfig(**kw)
