"""Exports to PyTorch for both omni models: Baichuan-Omni (v1) as a transformers remote-code
model, and the parts of either model as the Hugging Face classes people load directly.

v1 (omni_jax/models/omni_v1.py) -> a self-contained model directory:
  DIR/config.json                 OmniV1Config (auto_map -> the two files below) + our config.model
                                  under "omni_jax" (so the import back is exact)
  DIR/model.safetensors           the state dict of OmniV1ForCausalLM (names: `V1_PREFIX`)
  DIR/configuration_omni_v1.py    } omni_jax/convert/torch_v1/ (package data, copied)
  DIR/modeling_omni_v1.py         }
  AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) loads it offline.

Parts (`PART_CLASSES`), each a directory with config.json + model.safetensors:
  llm            Qwen2ForCausalLM                        (both models; convert/qwen2.py "hf")
  vision         Qwen2VisionTransformerPretrainedModel   (1.5's NaViT + merger; convert/vision.py navit_rules "hf")
  siglip         SiglipVisionModel                       (v1; convert/vision.py siglip_rules)
  audio_encoder  WhisperEncoder                          (v1's encoder, or 1.5's audio tokenizer encoder)

The whole 1.5 model goes to the release layout (omni_jax/convert/omni.py save_release).
`export_workdir` does any of these from a trainer workdir (launch/convert.py --mode=export_torch).
Parity with JAX on random inputs: omni_jax/convert/torch_parity.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from omni_jax.convert import audio as audio_conv
from omni_jax.convert import qwen2 as qwen2_conv
from omni_jax.convert import vision as vision_conv
from omni_jax.convert.mapping import Rule, export_params, import_params, linear, prefixed, same
from omni_jax.convert.safetensors_io import INDEX_NAME, SINGLE_NAME, open_state_dict, save_state_dict
from omni_jax.convert.torch_v1 import MODEL_FILES

V1_PARTS = ("model", "llm", "siglip", "audio_encoder")
OMNI15_PARTS = ("release", "llm", "vision", "audio_encoder")
MODEL_PARTS = {"omni_v1": V1_PARTS, "omni": OMNI15_PARTS}
MODEL_NAMES = {"omni_v1": "Baichuan-Omni v1", "omni": "Baichuan-Omni-1.5"}
DEFAULT_PARTS = {"omni_v1": ("model",), "omni": ("release",)}
PART_CLASSES = {"model": "OmniV1ForCausalLM (remote code)", "release": "the Baichuan-Omni-1.5 release layout",
                "llm": "Qwen2ForCausalLM", "vision": "Qwen2VisionTransformerPretrainedModel",
                "siglip": "SiglipVisionModel", "audio_encoder": "WhisperEncoder"}
_TORCH_DTYPES = ("float32", "bfloat16", "float16")
DTYPES = {"model": _TORCH_DTYPES, "llm": _TORCH_DTYPES, "vision": _TORCH_DTYPES, "siglip": _TORCH_DTYPES,
          "audio_encoder": _TORCH_DTYPES, "release": ("bfloat16", "float32")}
CONFIG_NAME = "config.json"
OURS_KEY = "omni_jax"
# the top-level torch modules of OmniV1ForCausalLM, per component of our tree
V1_PREFIX = {"llm": "language_model.", "siglip": "vision_model.vision_model.", "v1_projector": "vision_projector.",
             "v1_video_projector": "video_projector.", "audio_encoder": "audio_encoder.",
             "v1_audio_projector": "audio_projector.", "v1_boundary_head": "audio_boundary_head."}


class ExportError(ValueError):
    """Bad export request: the message names the thing and the fix."""


# ---------------------------------------------------------------------------------------
# Checks shared by every target.
# ---------------------------------------------------------------------------------------


def check_parts(kind: str, parts: Sequence[str]) -> tuple[str, ...]:
    """The parts asked for, checked against the model's (kind: "omni_v1" or "omni")."""
    have = MODEL_PARTS[kind]
    bad = [p for p in parts if p not in have]
    if bad:
        other = [k for k, v in MODEL_PARTS.items() if k != kind and all(b in v for b in bad)]
        hint = f" ({', '.join(bad)}: a part of {MODEL_NAMES[other[0]]})" if other else ""
        raise ExportError(f"{MODEL_NAMES[kind]} has no part {bad}{hint}; its parts are {list(have)} "
                          f"(--parts=NAME[,NAME...])")
    if not parts:
        raise ExportError(f"no part to export; choose from {list(have)}")
    return tuple(dict.fromkeys(parts))


def check_dtype(part: str, dtype: str | None) -> str | None:
    if dtype is None:
        return None
    ok = DTYPES[part]
    if dtype not in ok:
        raise ExportError(f"dtype {dtype!r} is not supported for {part} ({PART_CLASSES[part]}); use one of {list(ok)}")
    return dtype


_EXPORT_FILES = (CONFIG_NAME, SINGLE_NAME, INDEX_NAME, "generation_config.json", "vocoder") + MODEL_FILES


def _export_entries(directory: str) -> list[str]:
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    parts = {p for v in MODEL_PARTS.values() for p in v}
    return [n for n in names if n in _EXPORT_FILES or n in parts or n.endswith(".safetensors")]


def prepare_out(directory: str, overwrite: bool = False) -> None:
    """Refuses a directory holding another export unless `overwrite` (then only export files go)."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ExportError(f"--out={directory} is a file; give a directory")
    old = _export_entries(directory)
    if old and not overwrite:
        raise ExportError(f"--out={directory} already holds an export ({', '.join(old)}); choose a new directory or "
                          "pass --overwrite (overwrite=True) to replace it")
    for n in old:
        p = os.path.join(directory, n)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    os.makedirs(directory, exist_ok=True)


def _write_json(path: str, obj) -> str:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")
    return path


def _unbox(tree):
    from omni_jax import sharding as shd

    return shd.unbox(tree)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------
# Rules and configs of the parts.
# ---------------------------------------------------------------------------------------


def whisper_hf_config_dict(cfg) -> dict:
    """A transformers WhisperConfig dict for our WhisperEncoderConfig (encoder keys; a 1-layer decoder stub)."""
    if (cfg.kernel_size, cfg.stride, cfg.layer_norm_eps) != (3, 2, 1e-5):
        raise ExportError(f"transformers' WhisperEncoder has kernel_size 3, stride 2 and layer_norm_eps 1e-5; this "
                          f"encoder has {cfg.kernel_size}, {cfg.stride}, {cfg.layer_norm_eps}: it cannot be exported as one")
    return {"architectures": ["WhisperEncoder"], "model_type": "whisper", "d_model": cfg.d_model,
            "encoder_layers": cfg.num_layers, "encoder_attention_heads": cfg.num_heads,
            "encoder_ffn_dim": cfg.ffn_dim, "num_mel_bins": cfg.num_mel_bins,
            "max_source_positions": cfg.max_source_positions, "activation_function": "gelu",
            "decoder_layers": 1, "decoder_attention_heads": cfg.num_heads, "decoder_ffn_dim": cfg.ffn_dim,
            "scale_embedding": False}


def whisper_config_from_hf(d: Mapping[str, Any], **overrides):
    from omni_jax.models.whisper import WhisperEncoderConfig

    return WhisperEncoderConfig(num_mel_bins=d["num_mel_bins"], d_model=d["d_model"], num_layers=d["encoder_layers"],
                                num_heads=d["encoder_attention_heads"], ffn_dim=d["encoder_ffn_dim"],
                                max_source_positions=d["max_source_positions"], **overrides)


def _whisper_rules(cfg, ours: str, buffers: str, theirs: str) -> list[Rule]:
    return prefixed(audio_conv.encoder_rules(cfg, "hf", params=ours, buffers=buffers), theirs=theirs)


def _gmlp_rules(cfg) -> list[Rule]:
    """Our V1AudioProjector <-> modeling_omni_v1.ConvGMLP (Conv1d (out, in, k) <-> ours (k, in, out))."""
    conv = lambda o, t: Rule(o, t, lambda w: w.transpose(2, 1, 0), lambda w: w.transpose(2, 1, 0))
    rules = [conv("gate_proj/kernel", "gate_proj.weight"), conv("up_proj/kernel", "up_proj.weight")]
    if cfg.shortcut == "linear":
        rules += [linear("shortcut/kernel", "shortcut.weight"), same("shortcut/bias", "shortcut.bias")]
    return rules + [linear("out_proj/kernel", "out_proj.weight"), same("out_proj/bias", "out_proj.bias")]


def v1_rules(cfg) -> list[Rule]:
    """Rules over {"params": OmniV1 params, "buffers": {"audio_encoder": {"positional_embedding"}}} <->
    OmniV1ForCausalLM's state dict, in its registration order."""
    P = "params/"
    return (prefixed(qwen2_conv.rules(cfg.llm, "hf"), ours=P + "llm/", theirs=V1_PREFIX["llm"])
            + vision_conv.siglip_rules(cfg.siglip, prefix=V1_PREFIX["siglip"], ours=P + "siglip/")
            + vision_conv.v1_projector_rules(cfg.v1_projector, prefix=V1_PREFIX["v1_projector"],
                                             video_prefix=V1_PREFIX["v1_video_projector"], ours=P + "v1_projector/",
                                             ours_video=P + "v1_video_projector/")
            + _whisper_rules(cfg.audio_encoder, P + "audio_encoder/", "buffers/audio_encoder/", V1_PREFIX["audio_encoder"])
            + prefixed(_gmlp_rules(cfg.v1_audio_projector), ours=P + "v1_audio_projector/",
                       theirs=V1_PREFIX["v1_audio_projector"])
            + prefixed([linear("fc1/kernel", "fc1.weight"), same("fc1/bias", "fc1.bias"),
                        Rule("conv/kernel", "conv.weight", lambda w: w.transpose(2, 1, 0), lambda w: w.transpose(2, 1, 0)),
                        same("conv/bias", "conv.bias"), linear("fc2/kernel", "fc2.weight"), same("fc2/bias", "fc2.bias")],
                       ours=P + "v1_boundary_head/", theirs=V1_PREFIX["v1_boundary_head"]))


def _sinusoid_table(enc_cfg) -> np.ndarray:
    from omni_jax.models.whisper import sinusoids

    return sinusoids(enc_cfg.max_source_positions, enc_cfg.d_model)


# ---------------------------------------------------------------------------------------
# v1: the remote-code model.
# ---------------------------------------------------------------------------------------


def v1_abstract_params(cfg) -> dict:
    from omni_jax.models.omni_v1 import OmniV1

    return _unbox(jax.eval_shape(lambda r: OmniV1(cfg).init(r, 32), jax.ShapeDtypeStruct((2,), np.uint32)))


def _model_dict(cfg) -> dict:
    return {k: _jsonable(dataclasses.asdict(getattr(cfg, k))) for k in
            ("llm", "siglip", "v1_projector", "audio_encoder", "v1_audio_projector")}


def v1_config_json(cfg, token_ids: Mapping[str, int], torch_dtype: str = "float32") -> dict:
    """config.json of the remote-code model. token_ids: {"image", "video", "audio", "eos"} placeholder ids."""
    p, ap = cfg.v1_projector, cfg.v1_audio_projector
    if cfg.siglip.use_head:
        raise ExportError("config.model.siglip.use_head=True: v1 reads SigLIP's patch tokens, the pooling head is "
                          "unused; set use_head=False before exporting")
    text = dict(qwen2_conv.hf_config_dict(cfg.llm), torch_dtype=torch_dtype)
    eos = token_ids.get("eos")
    if eos is not None:
        text["eos_token_id"] = int(eos)
    return {
        "architectures": ["OmniV1ForCausalLM"], "model_type": "omni_v1",
        "auto_map": {"AutoConfig": "configuration_omni_v1.OmniV1Config",
                     "AutoModelForCausalLM": "modeling_omni_v1.OmniV1ForCausalLM",
                     "AutoModel": "modeling_omni_v1.OmniV1ForCausalLM"},
        "llm_config": text, "vision_config": vision_conv.siglip_hf_config_dict(cfg.siglip),
        "audio_config": whisper_hf_config_dict(cfg.audio_encoder),
        "pool_grid": list(p.pool_grid), "video_kernel": p.video_kernel, "video_pool_grid": list(p.video_pool_grid),
        "projector_act": p.hidden_act, "audio_rate": ap.rate, "audio_shortcut": ap.shortcut,
        "image_token_id": token_ids.get("image"), "video_token_id": token_ids.get("video"),
        "audio_token_id": token_ids.get("audio"), "eos_token_id": None if eos is None else int(eos),
        "tie_word_embeddings": False, "torch_dtype": torch_dtype, OURS_KEY: _model_dict(cfg),
    }


def _check_v1_params(params: Mapping[str, Any]) -> None:
    from omni_jax.models.omni_v1 import COMPONENTS

    have = sorted(params)
    if sorted(COMPONENTS) != have:
        raise ExportError(f"these are not Baichuan-Omni v1 parameters: components {have}, v1 has {sorted(COMPONENTS)}"
                          + (" (this looks like the 1.5 model: export it with parts ['release', 'llm', 'vision', "
                             "'audio_encoder'])" if "visual" in params else ""))


def export_v1_state_dict(params: Mapping[str, Any], cfg, dtype: str | None = None) -> dict[str, Any]:
    _check_v1_params(params)
    table = _sinusoid_table(cfg.audio_encoder)
    out = export_params({"params": dict(params), "buffers": {"audio_encoder": {"positional_embedding": table}}},
                        v1_rules(cfg), dtype)
    out[V1_PREFIX["audio_encoder"] + "embed_positions.weight"] = table  # a fixed table, not a weight: kept fp32
    return out


def save_v1(directory: str, params: Mapping[str, Any], cfg, token_ids: Mapping[str, int], dtype: str | None = None,
            overwrite: bool = False, prepared: bool = False) -> list[str]:
    """Writes the remote-code model directory (module docstring). Returns the files written."""
    dtype = check_dtype("model", dtype)
    params = _unbox(dict(params))
    _check_v1_params(params)
    config = v1_config_json(cfg, token_ids, dtype or cfg.llm.param_dtype)
    if not prepared:
        prepare_out(directory, overwrite)
    files = save_state_dict(directory, export_v1_state_dict(params, cfg, dtype), metadata={"format": "pt"})
    files.append(_write_json(os.path.join(directory, CONFIG_NAME), config))
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_v1")
    for name in MODEL_FILES:
        shutil.copyfile(os.path.join(src, name), os.path.join(directory, name))
        files.append(os.path.join(directory, name))
    return files


def v1_config_from_json(j: Mapping[str, Any]):
    """Our OmniV1Config from the remote-code config.json (its "omni_jax" record when present)."""
    from omni_jax.models.omni_v1 import OmniV1Config

    if j.get("model_type") != "omni_v1":
        raise ExportError(f"config.json has model_type {j.get('model_type')!r}, not 'omni_v1': not a v1 export")
    if OURS_KEY in j:
        return OmniV1Config.from_config(j[OURS_KEY])
    t, v, a = j["llm_config"], j["vision_config"], j["audio_config"]
    llm, sig, enc = qwen2_conv.config_from_hf(t), vision_conv.siglip_config_from_hf(v), whisper_config_from_hf(a)
    model = {k: _jsonable(dataclasses.asdict(c)) for k, c in (("llm", llm), ("siglip", sig), ("audio_encoder", enc))}
    model["v1_projector"] = dict(vision_width=sig.hidden_size, llm_width=llm.hidden_size, vision_grid=sig.grid,
                                 pool_grid=j["pool_grid"], video_kernel=j["video_kernel"],
                                 video_pool_grid=j["video_pool_grid"], hidden_act=j["projector_act"])
    model["v1_audio_projector"] = dict(d_model=enc.d_model, llm_hidden_size=llm.hidden_size, rate=j["audio_rate"],
                                       shortcut=j["audio_shortcut"])
    return OmniV1Config.from_config(model)


def load_v1(directory: str):
    """The remote-code directory -> (OmniV1Config, params as numpy), every tensor checked; the stored
    Whisper position table must be the sinusoids. Exact for a float32 export."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.exists(path):
        raise ExportError(f"{directory} has no {CONFIG_NAME}: not a v1 export")
    with open(path) as fh:
        cfg = v1_config_from_json(json.load(fh))
    sd = open_state_dict(directory)
    name = V1_PREFIX["audio_encoder"] + "embed_positions.weight"
    table = _sinusoid_table(cfg.audio_encoder)
    if name in sd:
        audio_conv.check_sinusoids(name, sd[name], table)
    tree = {"params": v1_abstract_params(cfg),
            "buffers": {"audio_encoder": {"positional_embedding": jax.ShapeDtypeStruct(table.shape, np.float32)}}}
    out = import_params(sd, v1_rules(cfg), tree, ignore=qwen2_conv.IGNORE + vision_conv.IGNORE, source=directory)
    return cfg, out["params"]


# ---------------------------------------------------------------------------------------
# Parts as the Hugging Face classes.
# ---------------------------------------------------------------------------------------


def part_rules(part: str, part_cfg) -> tuple[list[Rule], Sequence[str]]:
    """(rules over {"params": <part params>, "buffers": ...}, ignore) for one part's transformers class.
    Part params: llm -> Qwen2LM params; vision -> {"visual", "visual_bridge"}; siglip -> Siglip params;
    audio_encoder -> WhisperEncoder params."""
    P = "params/"
    if part == "llm":
        return prefixed(qwen2_conv.rules(part_cfg, "hf"), ours=P), qwen2_conv.IGNORE
    if part == "vision":
        return vision_conv.navit_rules(part_cfg, "hf", prefix="", ours_encoder=P + "visual/",
                                       ours_bridge=P + "visual_bridge/"), vision_conv.IGNORE
    if part == "siglip":
        return vision_conv.siglip_rules(part_cfg, prefix="vision_model.", ours=P), vision_conv.IGNORE
    if part == "audio_encoder":
        return _whisper_rules(part_cfg, P, "buffers/", ""), ()
    raise ExportError(f"unknown part {part!r}; use one of {sorted(set(PART_CLASSES) - {'model', 'release'})}")


def part_config_json(part: str, part_cfg, torch_dtype: str) -> dict:
    if part == "llm":
        d = qwen2_conv.hf_config_dict(part_cfg)
    elif part == "vision":
        # Qwen2VisionTransformerPretrainedModel's own config class is Qwen2VLVisionConfig ("qwen2_vl_vision")
        d = dict(vision_conv.navit_hf_config_dict(part_cfg), model_type="qwen2_vl_vision",
                 architectures=["Qwen2VisionTransformerPretrainedModel"])
    elif part == "siglip":
        d = dict(vision_conv.siglip_hf_config_dict(part_cfg), architectures=["SiglipVisionModel"])
    else:
        d = whisper_hf_config_dict(part_cfg)
    return dict(d, torch_dtype=torch_dtype)


def _part_tree(part: str, params, part_cfg) -> dict:
    tree = {"params": params}
    if part == "audio_encoder":
        tree["buffers"] = {"positional_embedding": _sinusoid_table(part_cfg)}
    return tree


def save_part(directory: str, part: str, params, part_cfg, dtype: str | None = None, overwrite: bool = False,
              prepared: bool = False) -> list[str]:
    """One part as its transformers class: directory/config.json + model.safetensors."""
    dtype = check_dtype(part, dtype)
    rules, _ = part_rules(part, part_cfg)
    config = part_config_json(part, part_cfg, dtype or getattr(part_cfg, "param_dtype", "float32"))
    if not prepared:
        prepare_out(directory, overwrite)
    os.makedirs(directory, exist_ok=True)
    tensors = export_params(_part_tree(part, _unbox(params), part_cfg), rules, dtype)
    if part == "audio_encoder":  # the fixed position table stays fp32 (JAX computes it in fp32)
        tensors["embed_positions.weight"] = _sinusoid_table(part_cfg)
    files = save_state_dict(directory, tensors)
    files.append(_write_json(os.path.join(directory, CONFIG_NAME), config))
    return files


def load_part(directory: str, part: str, part_cfg, abstract_params) -> Any:
    """A saved part -> our params (numpy), every tensor checked (the Whisper table must be the sinusoids)."""
    rules, ignore = part_rules(part, part_cfg)
    sd = open_state_dict(directory)
    tree = {"params": _unbox(abstract_params)}
    if part == "audio_encoder":
        table = _sinusoid_table(part_cfg)
        if "embed_positions.weight" in sd:
            audio_conv.check_sinusoids("embed_positions.weight", sd["embed_positions.weight"], table)
        tree["buffers"] = {"positional_embedding": jax.ShapeDtypeStruct(table.shape, np.float32)}
    return import_params(sd, rules, tree, ignore=ignore, source=directory)["params"]


# ---------------------------------------------------------------------------------------
# From a trainer workdir.
# ---------------------------------------------------------------------------------------


class Loaded(NamedTuple):
    kind: str  # "omni_v1" | "omni"
    config: Any  # the run's ConfigDict
    cfg: Any  # OmniV1Config | Omni15Config
    params: dict
    state: Any
    step: int


def workdir_config(src: str):
    """(kind, the run's ConfigDict) of a trainer workdir of an omni model; anything else is refused."""
    import ml_collections

    from omni_jax.convert import omni as oc

    if not oc.is_workdir(src):
        raise ExportError(f"--src={src} is not an omni_jax trainer workdir (it has no checkpoints/); give the "
                          "--workdir a training run wrote")
    path = os.path.join(src, CONFIG_NAME)
    if not os.path.exists(path):
        raise ExportError(f"{src} has checkpoints/ but no {CONFIG_NAME} (the trainer writes both)")
    with open(path) as fh:
        config = ml_collections.ConfigDict(json.load(fh))
    task = config.get("task")
    if task not in MODEL_PARTS:
        raise ExportError(f"{src} is a run of task {task!r}, not an omni model (task 'omni' = Baichuan-Omni-1.5 or "
                          "'omni_v1' = Baichuan-Omni v1): export_torch cannot export it; for a single-part task use "
                          "--mode=export --config=... --workdir=...")
    return task, config


def read_workdir(src: str, step: int | None = None) -> Loaded:
    """A trainer workdir of an omni model: its config.json and checkpoint (params [+ RVQ state])."""
    from omni_jax.convert import omni as oc

    task, config = workdir_config(src)
    if task == "omni_v1":
        from omni_jax.models.omni_v1 import OmniV1Config

        cfg = OmniV1Config.from_config(config.model)
        items, step = oc.restore_workdir(src, step, items=("params",))
        saved = items.get("params") or {}
        abstract = v1_abstract_params(cfg)
        params = {c: oc._take(saved.get(c), abstract[c], f"params/{c}", f"checkpoint {src}/checkpoints/{step}")
                  for c in abstract}
        return Loaded(task, config, cfg, params, None, step)
    from omni_jax.models.omni import Omni15Config

    cfg = Omni15Config.from_config(config.model)
    abstract_params, abstract_state = oc.abstract_variables(config.model)
    have = set(oc.workdir_components(src, step))
    exclude = tuple(c for c in abstract_params if c not in have)
    params, state = oc.import_release(src, config.model, abstract_params, abstract_state, exclude=exclude, step=step)
    _, step = oc._workdir_step(src, step)
    return Loaded(task, config, cfg, params, state, step)


def token_ids_of(config) -> dict[str, int]:
    """The placeholder ids of the run's tokenizer (images: img_pad, video frames: video_place, audio: audio_pad)."""
    from omni_jax.data.omni_pipeline import data_tokenizer

    tok = data_tokenizer(config, config.data)
    return {"image": tok.special("img_pad"), "video": tok.special("video_place"), "audio": tok.special("audio_pad"),
            "eos": tok.eos_id}


def part_params(loaded: Loaded, part: str) -> tuple[Any, Any]:
    """(params, config) of one part of a loaded model."""
    p, c = loaded.params, loaded.cfg
    if part == "llm":
        return p["llm"], c.llm
    if part == "siglip":
        return p["siglip"], c.siglip
    if part == "vision":
        return {"visual": p["visual"], "visual_bridge": p["visual_bridge"]}, c.vision
    if part == "audio_encoder":
        return p["audio_encoder"], (c.audio_encoder if loaded.kind == "omni_v1" else c.audio.encoder)
    raise ExportError(f"{part!r} is not a component part")


class Written(NamedTuple):
    part: str
    directory: str
    files: list


def export_loaded(loaded: Loaded, out: str, parts: Sequence[str] | None = None, dtype: str | None = None,
                  overwrite: bool = False) -> list[Written]:
    """Writes the chosen parts of a loaded model: the whole model ("model" / "release") into `out`,
    every other part into out/<part>/."""
    parts = check_parts(loaded.kind, DEFAULT_PARTS[loaded.kind] if parts is None else parts)
    for part in parts:
        check_dtype(part, dtype)
    prepare_out(out, overwrite)
    written = []
    for part in parts:
        if part == "model":
            files = save_v1(out, loaded.params, loaded.cfg, token_ids_of(loaded.config), dtype, prepared=True)
            written.append(Written(part, out, files))
        elif part == "release":
            from omni_jax.convert import omni as oc

            missing = [c for c in oc.RELEASE_COMPONENTS if c not in loaded.params]
            if missing:
                raise ExportError(f"the checkpoint has no {missing}: the release layout needs every component; "
                                  f"export parts instead (--parts=llm,vision,audio_encoder)")
            exclude = () if oc.VOCODER in loaded.params else (oc.VOCODER,)
            files = oc.save_release(out, loaded.params, loaded.state, loaded.cfg, dtype=dtype or "bfloat16",
                                    exclude=exclude, overwrite=True)
            written.append(Written(part, out, files))
        else:
            params, cfg = part_params(loaded, part)
            d = os.path.join(out, part)
            written.append(Written(part, d, save_part(d, part, params, cfg, dtype, prepared=True)))
    return written


def export_workdir(src: str, out: str, parts: Sequence[str] | None = None, dtype: str | None = None,
                   overwrite: bool = False, step: int | None = None) -> tuple[Loaded, list[Written]]:
    """A trainer workdir (task "omni_v1" or "omni") -> PyTorch directories (module docstring)."""
    kind, _ = workdir_config(src)
    for part in check_parts(kind, DEFAULT_PARTS[kind] if parts is None else parts):  # before anything is read
        check_dtype(part, dtype)
    if _export_entries(out) and not overwrite:
        prepare_out(out)  # raises: the directory holds another export
    loaded = read_workdir(src, step)
    return loaded, export_loaded(loaded, out, parts, dtype, overwrite)


__all__ = [
    "V1_PARTS", "OMNI15_PARTS", "PART_CLASSES", "DTYPES", "ExportError", "check_parts", "check_dtype", "prepare_out",
    "v1_rules", "v1_config_json", "v1_config_from_json", "export_v1_state_dict", "save_v1", "load_v1",
    "part_rules", "part_config_json", "save_part", "load_part", "whisper_hf_config_dict", "whisper_config_from_hf",
    "workdir_config", "read_workdir", "token_ids_of", "part_params", "export_loaded", "export_workdir", "Loaded", "Written",
]
