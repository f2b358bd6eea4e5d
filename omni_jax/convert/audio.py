"""Conversion rules for the audio branch: Whisper encoder, audio bridge (Conv-GMLP + RVQ), decoder.

PyTorch layouts:
  "release"  Baichuan-Omni-1.5: `audio_tokenizer.audio_model.*` (Whisper encoder + a stored
             `positional_embedding` sinusoid buffer), `audio_tokenizer.audio_bridge_model.*`
             (incl. `vq_list.N.codebook.{cluster_size,embed_avg,embed}`) and
             `audio_tokenizer.audio_decoder.*` (reference_state_dict.tsv, in that order).
  "hf"       transformers' WhisperEncoder (`conv1`, `embed_positions.weight`, `layers.N...`);
             mount it under "model.encoder." for WhisperForConditionalGeneration.

Our side is one tree of collections:
  {"params":  {"audio_encoder": ..., "audio_bridge": ..., "audio_decoder": ...},
   "vq_stats": {"audio_bridge": {"vq_N": {"embed", "embed_avg", "cluster_size"}}}}
The sinusoid position tables are not variables of ours (they are computed): `export_*` writes
them and `import_*` checks that the checkpoint's tables equal them, then drops them. Internally
they travel as a third pseudo-collection "buffers" so that the rule machinery orders them.

Transforms: torch Linear (out, in) <-> our (in, out); q/k/v (heads*hd, d) <-> (d, heads, hd);
out_proj (d, heads*hd) <-> (heads, hd, d); Conv1d (out, in, k) <-> (k, in, out);
ConvTranspose1d (in, out, k) <-> (k, in, out); LayerNorm/GroupNorm weight <-> scale.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np

from omni_jax.convert.mapping import (ConversionError, Rule, conv1d, conv_transpose1d, export_params, export_shapes,
                                      import_params, linear, prefixed, same)

RELEASE_PREFIX = {
    "audio_encoder": "audio_tokenizer.audio_model.",
    "audio_bridge": "audio_tokenizer.audio_bridge_model.",
    "audio_decoder": "audio_tokenizer.audio_decoder.",
}
MODULES = tuple(RELEASE_PREFIX)


def _norm(ours: str, theirs: str, bias: bool = True) -> list[Rule]:
    out = [same(ours + "scale", theirs + "weight")]
    return out + [same(ours + "bias", theirs + "bias")] if bias else out


def layer_rules(d: int, heads: int, ours: str = "layers/", theirs: str = "layers.{i}.",
                norm_bias: bool = True) -> list[Rule]:
    """One stacked AudioTransformerLayer <-> OmniWhisperTransformerLayer / WhisperEncoderLayer,
    in their registration order (k, v, q, out, self_attn_layer_norm, fc1, fc2, final_layer_norm)."""
    hd = d // heads

    def qkv(n):
        return Rule(f"{ours}self_attn/{n}_proj/kernel", f"{theirs}self_attn.{n}_proj.weight",
                    lambda w: w.reshape(d, heads * hd).T, lambda w: w.T.reshape(d, heads, hd))

    def qkv_bias(n):
        return Rule(f"{ours}self_attn/{n}_proj/bias", f"{theirs}self_attn.{n}_proj.bias",
                    lambda b: b.reshape(heads * hd), lambda b: b.reshape(heads, hd))

    return [
        qkv("k"), qkv("v"), qkv_bias("v"), qkv("q"), qkv_bias("q"),
        Rule(f"{ours}self_attn/out_proj/kernel", f"{theirs}self_attn.out_proj.weight",
             lambda w: w.reshape(heads * hd, d).T, lambda w: w.T.reshape(heads, hd, d)),
        same(f"{ours}self_attn/out_proj/bias", f"{theirs}self_attn.out_proj.bias"),
        *_norm(f"{ours}self_attn_layer_norm/", f"{theirs}self_attn_layer_norm.", norm_bias),
        linear(f"{ours}fc1/kernel", f"{theirs}fc1.weight"), same(f"{ours}fc1/bias", f"{theirs}fc1.bias"),
        linear(f"{ours}fc2/kernel", f"{theirs}fc2.weight"), same(f"{ours}fc2/bias", f"{theirs}fc2.bias"),
        *_norm(f"{ours}final_layer_norm/", f"{theirs}final_layer_norm.", norm_bias),
    ]


def encoder_rules(cfg, flavour: str = "release", *, params: str = "", buffers: str | None = None) -> list[Rule]:
    """WhisperEncoder rules, PyTorch names relative to the encoder module.

    params / buffers: our path prefixes of the encoder's params and of its position table
    (None: no position rule). Release order: positional_embedding, conv1, conv2, layers,
    layer_norm; transformers order: conv1, conv2, embed_positions, layers, layer_norm.
    """
    if flavour not in ("release", "hf"):
        raise ValueError(f"unknown Whisper checkpoint flavour {flavour!r}; use 'release' or 'hf'")
    stem = [conv1d(params + "conv1/kernel", "conv1.weight"), same(params + "conv1/bias", "conv1.bias"),
            conv1d(params + "conv2/kernel", "conv2.weight"), same(params + "conv2/bias", "conv2.bias")]
    pos = []
    if buffers is not None:
        pos = [same(buffers + "positional_embedding",
                    "positional_embedding" if flavour == "release" else "embed_positions.weight")]
    layers = layer_rules(cfg.d_model, cfg.num_heads, params + "layers/", "layers.{i}.")
    tail = _norm(params + "layer_norm/", "layer_norm.")
    return (pos + stem if flavour == "release" else stem + pos) + layers + tail


def bridge_rules(cfg, *, params: str = "", stats: str = "") -> list[Rule]:
    """AudioBridge rules (PyTorch names relative to `audio_bridge_model`), release order:
    gate_proj, up_proj, down_proj, layer_norm, proj_decoder, vq_list.N.codebook.{cluster_size,
    embed_avg, embed}. params / stats: our prefixes of the bridge's params and vq_stats."""
    rules = [
        conv1d(params + "gate_proj/kernel", "gate_proj.weight"),
        conv1d(params + "up_proj/kernel", "up_proj.weight"),
        linear(params + "down_proj/kernel", "down_proj.weight"),
        *_norm(params + "layer_norm/", "layer_norm."),
        linear(params + "proj_decoder/kernel", "proj_decoder.weight"),
        same(params + "proj_decoder/bias", "proj_decoder.bias"),
    ]
    for i in range(len(cfg.codebook_sizes)):
        for n in ("cluster_size", "embed_avg", "embed"):
            rules.append(same(f"{stats}vq_{i}/{n}", f"vq_list.{i}.codebook.{n}"))
    return rules


def decoder_rules(cfg, *, params: str = "", buffers: str | None = None) -> list[Rule]:
    """AudioDecoder rules (names relative to `audio_decoder`), release order: positional_embedding,
    dconv1.{conv,norm}, layers, layer_norm, dconv2.{conv,norm}, post_net.layers.{0,1,3,4,...,12}."""
    pos = [] if buffers is None else [same(buffers + "positional_embedding", "positional_embedding")]

    def convt(name):
        return [conv_transpose1d(f"{params}{name}/conv/kernel", f"{name}.conv.weight"),
                same(f"{params}{name}/conv/bias", f"{name}.conv.bias"),
                *_norm(f"{params}{name}/norm/", f"{name}.norm.")]

    post = []
    for i in range(len(cfg.postnet_channels)):
        post += [conv1d(f"{params}post_net/conv_{i}/kernel", f"post_net.layers.{3 * i}.weight"),
                 same(f"{params}post_net/conv_{i}/bias", f"post_net.layers.{3 * i}.bias"),
                 *_norm(f"{params}post_net/norm_{i}/", f"post_net.layers.{3 * i + 1}.")]
    n = 3 * len(cfg.postnet_channels)
    post += [conv1d(f"{params}post_net/proj/kernel", f"post_net.layers.{n}.weight"),
             same(f"{params}post_net/proj/bias", f"post_net.layers.{n}.bias")]
    return (pos + convt("dconv1") + layer_rules(cfg.d_model, cfg.num_heads, params + "layers/", "layers.{i}.")
            + _norm(params + "layer_norm/", "layer_norm.") + convt("dconv2") + post)


# ---------------------------------------------------------------------------------
# Position tables ("buffers").
# ---------------------------------------------------------------------------------


def _tolerance(dtype) -> float:
    """How far a stored sinusoid table may be from ours: torch's float32 exp/sin differ from
    numpy's by ~2e-4 at 3000 positions; bf16/fp16 storage adds half an ulp (<= 4e-3 for |x| <= 1)."""
    eps = float(np.finfo(np.float32).eps) if np.dtype(dtype) == np.float32 else 2.0 ** -7
    return max(2e-3, 2 * eps)


def check_sinusoids(name: str, got: Any, want: np.ndarray) -> None:
    got = np.asarray(got)
    if tuple(got.shape) != tuple(want.shape):
        raise ConversionError(f"{name}: shape {tuple(got.shape)}, expected the sinusoid table {tuple(want.shape)}")
    d = float(np.abs(got.astype(np.float32) - want).max())
    if not d <= _tolerance(got.dtype):
        raise ConversionError(
            f"{name} is not the Whisper sinusoid table (max abs diff {d:.3g} > {_tolerance(got.dtype):.1g}). "
            "omni_jax computes these positions instead of storing them; a checkpoint with trained or "
            "different positions cannot be imported.")


def _abstract_table(rows: int, channels: int):
    return jax.ShapeDtypeStruct((rows, channels), np.float32)


# ---------------------------------------------------------------------------------
# The Whisper encoder alone (transformers or release names).
# ---------------------------------------------------------------------------------


def _encoder_tree_rules(cfg, flavour: str, prefix: str) -> list[Rule]:
    return prefixed(encoder_rules(cfg, flavour, params="params/", buffers="buffers/"), theirs=prefix)


def export_encoder(params: Mapping[str, Any], cfg, flavour: str = "hf", prefix: str = "", dtype: Any = None) -> dict:
    """Our WhisperEncoder params -> {PyTorch name: array} (with the position table), in
    registration order. prefix: e.g. "model.encoder." or "audio_tokenizer.audio_model."."""
    from omni_jax.models.whisper import sinusoids

    tree = {"params": params, "buffers": {"positional_embedding": sinusoids(cfg.max_source_positions, cfg.d_model)}}
    return export_params(tree, _encoder_tree_rules(cfg, flavour, prefix), dtype)


def import_encoder(state_dict: Mapping[str, Any], cfg, abstract_params: Mapping[str, Any], flavour: str = "hf",
                   prefix: str = "", *, ignore: Sequence[str] = (), source: str = "checkpoint") -> dict:
    """{PyTorch name: array} -> our WhisperEncoder params (numpy). The stored position table must
    equal the sinusoids (checked, then dropped)."""
    from omni_jax.models.whisper import sinusoids

    table = sinusoids(cfg.max_source_positions, cfg.d_model)
    name = prefix + ("positional_embedding" if flavour == "release" else "embed_positions.weight")
    if name in state_dict:
        check_sinusoids(name, state_dict[name], table)
    abstract = {"params": abstract_params, "buffers": {"positional_embedding": _abstract_table(*table.shape)}}
    out = import_params(state_dict, _encoder_tree_rules(cfg, flavour, prefix), abstract, ignore=ignore, source=source)
    return out["params"]


# ---------------------------------------------------------------------------------
# The whole audio tokenizer (release names).
# ---------------------------------------------------------------------------------


def _check_modules(modules: Sequence[str]) -> tuple[str, ...]:
    bad = [m for m in modules if m not in MODULES]
    if bad:
        raise ValueError(f"unknown audio module(s) {bad}; choose from {list(MODULES)}")
    return tuple(m for m in MODULES if m in modules)


def tokenizer_rules(cfg, modules: Sequence[str] = MODULES) -> list[Rule]:
    """Release rules over {"params": {module: ...}, "vq_stats": {"audio_bridge": ...},
    "buffers": {module: {"positional_embedding"}}} for the chosen modules, in release order."""
    modules = _check_modules(modules)
    out = []
    if "audio_encoder" in modules:
        out += prefixed(encoder_rules(cfg.encoder, "release", params="params/audio_encoder/",
                                      buffers="buffers/audio_encoder/"), theirs=RELEASE_PREFIX["audio_encoder"])
    if "audio_bridge" in modules:
        out += prefixed(bridge_rules(cfg.bridge, params="params/audio_bridge/", stats="vq_stats/audio_bridge/"),
                        theirs=RELEASE_PREFIX["audio_bridge"])
    if "audio_decoder" in modules:
        out += prefixed(decoder_rules(cfg.decoder, params="params/audio_decoder/", buffers="buffers/audio_decoder/"),
                        theirs=RELEASE_PREFIX["audio_decoder"])
    return out


def _tables(cfg, modules) -> dict[str, Any]:
    from omni_jax.models.whisper import sinusoids

    out = {}
    if "audio_encoder" in modules:
        out["audio_encoder"] = {"positional_embedding": sinusoids(cfg.encoder.max_source_positions, cfg.encoder.d_model)}
    if "audio_decoder" in modules:
        out["audio_decoder"] = {"positional_embedding": sinusoids(cfg.decoder.max_positions, cfg.decoder.d_model)}
    return out


def _subset(variables: Mapping[str, Any], modules) -> dict[str, Any]:
    params = dict(variables["params"])
    missing = [m for m in modules if m not in params]
    if missing:
        raise ValueError(f"the variables have no params for {missing} (top-level params: {sorted(params)})")
    out = {"params": {m: params[m] for m in modules}}
    if "audio_bridge" in modules:
        stats = dict(variables.get("vq_stats", {}))
        if "audio_bridge" not in stats:
            raise ValueError("exporting the audio bridge needs its codebooks: variables['vq_stats']['audio_bridge']")
        out["vq_stats"] = {"audio_bridge": stats["audio_bridge"]}
    return out


def export_tokenizer(variables: Mapping[str, Any], cfg, modules: Sequence[str] = MODULES, dtype: Any = None) -> dict:
    """{"params": ..., "vq_stats": ...} -> {release name: array} in the release's order, with the
    sinusoid position buffers. dtype: e.g. "bfloat16" for the release format."""
    modules = _check_modules(modules)
    tree = dict(_subset(variables, modules), buffers=_tables(cfg, modules))
    return export_params(tree, tokenizer_rules(cfg, modules), dtype)


def tokenizer_export_shapes(abstract_variables: Mapping[str, Any], cfg, modules: Sequence[str] = MODULES) -> dict:
    """{release name: shape} from abstract variables (no memory used), release order."""
    modules = _check_modules(modules)
    tables = {m: {"positional_embedding": _abstract_table(*t["positional_embedding"].shape)}
              for m, t in _tables(cfg, modules).items()}
    return export_shapes(dict(_subset(abstract_variables, modules), buffers=tables), tokenizer_rules(cfg, modules))


def import_tokenizer(state_dict: Mapping[str, Any], cfg, abstract_variables: Mapping[str, Any],
                     modules: Sequence[str] = MODULES, *, ignore: Sequence[str] = (),
                     source: str = "checkpoint") -> dict:
    """{release name: array} -> {"params": {module: ...}, "vq_stats": {"audio_bridge": ...}} (numpy).
    Every tensor is checked (missing / wrong shape / unexpected); position buffers must be the sinusoids.
    Tensors of other release modules (LLM, vision, flow matching...) must be listed in `ignore`."""
    modules = _check_modules(modules)
    tables = _tables(cfg, modules)
    for m, t in tables.items():
        name = RELEASE_PREFIX[m] + "positional_embedding"
        if name in state_dict:
            check_sinusoids(name, state_dict[name], t["positional_embedding"])
    abstract = dict(_subset(abstract_variables, modules),
                    buffers={m: {"positional_embedding": _abstract_table(*t["positional_embedding"].shape)}
                             for m, t in tables.items()})
    out = import_params(state_dict, tokenizer_rules(cfg, modules), abstract, ignore=ignore, source=source)
    out.pop("buffers", None)
    return out


__all__ = ["bridge_rules", "decoder_rules", "tokenizer_rules", "export_tokenizer", "tokenizer_export_shapes",
           "import_tokenizer", "export_encoder", "import_encoder", "encoder_rules", "layer_rules", "check_sinusoids", "RELEASE_PREFIX", "MODULES",
           "prefixed", "export_params", "export_shapes", "import_params"]
