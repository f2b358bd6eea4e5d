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

from omni_jax.convert.mapping import ConversionError, Rule, export_params, export_shapes, import_params, linear, prefixed, same

RELEASE_PREFIX = {
    "audio_encoder": "audio_tokenizer.audio_model.",
    "audio_bridge": "audio_tokenizer.audio_bridge_model.",
    "audio_decoder": "audio_tokenizer.audio_decoder.",
}
MODULES = tuple(RELEASE_PREFIX)


def _conv(ours: str, theirs: str) -> Rule:
    """torch Conv1d weight (out, in, k) <-> our kernel (k, in, out)."""
    return Rule(ours, theirs, lambda w: w.transpose(2, 1, 0), lambda w: w.transpose(2, 1, 0))


def _conv_t(ours: str, theirs: str) -> Rule:
    """torch ConvTranspose1d weight (in, out, k) <-> our kernel (k, in, out)."""
    return Rule(ours, theirs, lambda w: w.transpose(1, 2, 0), lambda w: w.transpose(2, 0, 1))


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
    stem = [_conv(params + "conv1/kernel", "conv1.weight"), same(params + "conv1/bias", "conv1.bias"),
            _conv(params + "conv2/kernel", "conv2.weight"), same(params + "conv2/bias", "conv2.bias")]
    pos = []
    if buffers is not None:
        pos = [same(buffers + "positional_embedding",
                    "positional_embedding" if flavour == "release" else "embed_positions.weight")]
    layers = layer_rules(cfg.d_model, cfg.num_heads, params + "layers/", "layers.{i}.")
    tail = _norm(params + "layer_norm/", "layer_norm.")
    return (pos + stem if flavour == "release" else stem + pos) + layers + tail


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


__all__ = ["encoder_rules", "layer_rules", "check_sinusoids", "RELEASE_PREFIX", "MODULES",
           "prefixed", "export_params", "export_shapes", "import_params"]
