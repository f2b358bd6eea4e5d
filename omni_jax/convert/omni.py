"""Whole-model conversion: omni_jax's Omni15 (omni_jax/models/omni.py) <-> the released
Baichuan-Omni-1.5 PyTorch checkpoint.

The release is one state dict (tests/fixtures/reference_state_dict.tsv, sharded safetensors with
a Hugging Face index) plus a config.json (tests/fixtures/reference_config.json); its vocoder
ships separately (third_party/cosy24k_vocoder/hift.pt; names in reference_vocoder_state_dict.tsv).
This module assembles the branches' rule tables (convert/{vision,qwen2,audio,speech}.py) into
the release's registration order:

  model.visual_model.*               visual          model.visual_bridge_model.*  visual_bridge
  model.embed_tokens / layers / norm llm             model.audio_embed_layers.*   audio_embed
  audio_tokenizer.audio_model.*      audio_encoder   (+ the stored sinusoid table, checked)
  audio_tokenizer.audio_bridge_model.*  audio_bridge; its vq_list.N.codebook.* = the model STATE
  audio_tokenizer.audio_decoder.*    audio_decoder   (+ the stored sinusoid table, checked)
  audio_tokenizer.audio_flow_matching_decoder.*  flow_matching
  audio_head.*                       audio_head      lm_head.weight  llm (last)

API (params = the Omni15 tree, state = {"audio_bridge": {"vq_i": {embed, embed_avg, cluster_size}}}):
  export_release(params, state, cfg, dtype=None, exclude=())   -> {release name: array}, release order
  export_release_shapes(cfg)                                   -> {release name: shape} (abstract)
  export_vocoder(params, cfg, weight_norm=True, dtype=None)    -> the HiFT state dict
  import_release(src, cfg, abstract_params, abstract_state, only=None, exclude=(), vocoder_src=None)
                                                                -> (params, state)
  import_vocoder_release(path, cfg, abstract_vocoder_params)   -> vocoder params
  release_config_json(cfg, torch_dtype="bfloat16")             -> config.json dict (release format)
  model_config_from_release(config_json)                        -> our `config.model` ConfigDict
  save_release(directory, params, state, cfg, ...) / load_release(directory, ...)

Directory layout written by `save_release` (and read by `load_release` / `import_release`):
  DIR/config.json                       the release's config format (+ an "omni_jax" key, see below)
  DIR/model.safetensors                 or model-0000k-of-0000n.safetensors + model.safetensors.index.json
  DIR/vocoder/model.safetensors         the HiFT state dict (weight_g / weight_v like hift.pt, or
                                        folded .weight), float32 unless asked otherwise
  DIR/vocoder/config.json               {"vocoder_config": our HiFTConfig, "weight_norm": bool}
On import the vocoder is also found in DIR/cosy24k_vocoder/ or DIR/third_party/cosy24k_vocoder/
(where release downloads keep it), once converted to safetensors; a bare hift.pt there is refused
with the one-line conversion command.
The release's own vocoder (hift.pt, a pickle) is converted once outside omni_jax, e.g.
`safetensors.torch.save_file(torch.load('hift.pt', weights_only=True), 'DIR/vocoder/model.safetensors')`.

Components the release does not have (the audio tokenizer task's training-only
`audio_text_adapter`) are never dropped silently: name them in `exclude=` (export: left out;
import: not returned, so the trainer keeps their initialisation) or choose with `only=`.
`import_release` also accepts an omni_jax workdir (a directory with checkpoints/, e.g. written
by `launch.convert --mode=import_release`): its latest checkpoint's params / model_state are
taken with the same checks, which is how `config.init.checkpoint` starts training from it.

config.json: every value the release format can hold is derived from our config; the rest of the
release file is carried as the documented constants `RELEASE_CONSTANTS` (tokenizer ids, image
preprocessing, Hugging Face bookkeeping, CLIP leftovers in visual_config, ...). Fields of our config
the release format cannot express (training hyper-parameters such as the RVQ EMA decay, compute
dtypes, a non-release vocoder, the audio head's head_dim, ...) are written under the extra key
"omni_jax" only where they differ from what the release values imply; for the 7B release preset
there are none, so its config.json equals the reference file. PyTorch's config loader keeps
unknown keys as attributes, so the file still loads there.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import glob
import json
import os
import shutil
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from omni_jax.convert import audio as audio_conv
from omni_jax.convert import qwen2 as qwen2_conv
from omni_jax.convert import speech as speech_conv
from omni_jax.convert import vision as vision_conv
from omni_jax.convert.mapping import ConversionError, Rule, export_params, export_shapes, import_params, prefixed
from omni_jax.convert.safetensors_io import INDEX_NAME, SINGLE_NAME, open_state_dict, save_state_dict

# The Omni15 components in the release's main state dict, in its registration order.
RELEASE_COMPONENTS = ("visual", "visual_bridge", "llm", "audio_embed", "audio_encoder", "audio_bridge",
                      "audio_decoder", "flow_matching", "audio_head")
VOCODER = "vocoder"  # in the release, but as its own state dict
KNOWN_COMPONENTS = RELEASE_COMPONENTS + (VOCODER,)
TRAINING_ONLY = ("audio_text_adapter", "audio_ctc_head")  # omni_jax/tasks/audio_tokenizer.py; not in the release
STATE_KEYS = ("audio_bridge",)
CONFIG_NAME = "config.json"
VOCODER_DIR = "vocoder"
# where release downloads keep the vocoder (web_demo/constants.py: third_party/cosy24k_vocoder/hift.pt)
RELEASE_VOCODER_DIRS = ("cosy24k_vocoder", os.path.join("third_party", "cosy24k_vocoder"))
OVERRIDES_KEY = "omni_jax"

# Release names per component: tensors of components that are not being imported are skipped.
_NAMES = {
    "visual": r"model\.visual_model\..*",
    "visual_bridge": r"model\.visual_bridge_model\..*",
    "llm": r"(model\.(embed_tokens|layers|norm)|lm_head)\..*",
    "audio_embed": r"model\.audio_embed_layers\..*",
    "audio_encoder": r"audio_tokenizer\.audio_model\..*",
    "audio_bridge": r"audio_tokenizer\.audio_bridge_model\.(?!vq_list\.).*",
    "audio_decoder": r"audio_tokenizer\.audio_decoder\..*",
    "flow_matching": r"audio_tokenizer\.audio_flow_matching_decoder\..*",
    "audio_head": r"audio_head\..*",
}
_STATE_NAMES = r"audio_tokenizer\.audio_bridge_model\.vq_list\..*"
# Weightless buffers other PyTorch saves may carry (rotary inv_freq, position ids).
_BUFFERS = tuple(qwen2_conv.IGNORE) + tuple(vision_conv.IGNORE)


def _as_cfg(cfg):
    from omni_jax.models.omni import Omni15Config

    if isinstance(cfg, Omni15Config):
        return cfg
    return Omni15Config.from_config(cfg)


def _unbox(tree):
    from omni_jax import sharding as shd

    return None if tree is None else shd.unbox(tree)


def abstract_variables(cfg) -> tuple[dict, dict]:
    """(abstract params, abstract state) of an Omni15 for `cfg`: ShapeDtypeStruct leaves, no memory."""
    return jax.tree.map(lambda x: x, _abstract_variables(_as_cfg(cfg)))  # a fresh tree per call


@functools.lru_cache(maxsize=8)
def _abstract_variables(cfg) -> tuple[dict, dict]:
    from omni_jax.models.omni import Omni15

    model = Omni15(cfg)
    key = jax.ShapeDtypeStruct((2,), np.uint32)
    return (_unbox(jax.eval_shape(model.init, key)), _unbox(jax.eval_shape(model.init_state, key)))


# ---------------------------------------------------------------------------------------
# Rules: the branches' tables over one tree {"params": ..., "state": ..., "buffers": ...}.
# ---------------------------------------------------------------------------------------


def _sections(cfg) -> list[tuple[str, list[Rule]]]:
    """(component or "state", rules) in the release's registration order."""
    P = "params/"
    llm = qwen2_conv.rules(cfg.llm, "release")
    head = [r for r in llm if r.ours.startswith("lm_head/")]
    body = [r for r in llm if not r.ours.startswith("lm_head/")]
    pre = audio_conv.RELEASE_PREFIX
    bridge = audio_conv.bridge_rules(cfg.audio.bridge, params=P + "audio_bridge/", stats="state/audio_bridge/")
    return [
        ("visual", prefixed(vision_conv.navit_encoder_rules(cfg.vision), ours=P + "visual/", theirs="model.visual_model.")),
        ("visual_bridge", prefixed(vision_conv.navit_bridge_rules(cfg.vision), ours=P + "visual_bridge/",
                                   theirs="model.visual_bridge_model.")),
        ("llm", prefixed(body, ours=P + "llm/")),
        ("audio_embed", prefixed(speech_conv.audio_embed_rules(cfg.audio_head), ours=P + "audio_embed/")),
        ("audio_encoder", prefixed(audio_conv.encoder_rules(cfg.audio.encoder, "release", params=P + "audio_encoder/",
                                                            buffers="buffers/audio_encoder/"), theirs=pre["audio_encoder"])),
        ("audio_bridge", prefixed([r for r in bridge if r.ours.startswith(P)], theirs=pre["audio_bridge"])),
        ("state", prefixed([r for r in bridge if r.ours.startswith("state/")], theirs=pre["audio_bridge"])),
        ("audio_decoder", prefixed(audio_conv.decoder_rules(cfg.audio.decoder, params=P + "audio_decoder/",
                                                            buffers="buffers/audio_decoder/"), theirs=pre["audio_decoder"])),
        ("flow_matching", prefixed(speech_conv.flow_matching_rules(cfg.flow_matching), ours=P + "flow_matching/",
                                   theirs=speech_conv.RELEASE_FM_PREFIX)),
        ("audio_head", prefixed(speech_conv.audio_head_rules(cfg.audio_head), ours=P + "audio_head/")),
        ("llm", prefixed(head, ours=P + "llm/")),
    ]


def release_rules(cfg, components: Sequence[str] = RELEASE_COMPONENTS, state: bool = True) -> list[Rule]:
    """The rules of the chosen components (and of the RVQ state) over
    {"params": {component: ...}, "state": {"audio_bridge": ...}, "buffers": {...}}, release order."""
    cfg = _as_cfg(cfg)
    bad = sorted(set(components) - set(RELEASE_COMPONENTS))
    if bad:
        raise ValueError(f"{bad} are not components of the release's main state dict {list(RELEASE_COMPONENTS)}")
    out = []
    for key, rules in _sections(cfg):
        if (key == "state" and state) or key in components:
            out += rules
    return out


def _tables(cfg, components, abstract: bool = False) -> dict:
    """The Whisper sinusoid tables the release stores for the audio encoder and decoder."""
    from omni_jax.models.whisper import sinusoids

    sizes = {"audio_encoder": (cfg.audio.encoder.max_source_positions, cfg.audio.encoder.d_model),
             "audio_decoder": (cfg.audio.decoder.max_positions, cfg.audio.decoder.d_model)}
    return {c: {"positional_embedding": jax.ShapeDtypeStruct(s, np.float32) if abstract else sinusoids(*s)}
            for c, s in sizes.items() if c in components}


# ---------------------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------------------


def _check_export_tree(params: Mapping[str, Any], state, exclude: Sequence[str]) -> None:
    foreign = sorted(set(params) - set(KNOWN_COMPONENTS) - set(exclude))
    if foreign:
        raise ValueError(foreign_components_message(foreign, "params"))
    missing = [c for c in RELEASE_COMPONENTS if c not in params]
    if missing:
        raise ValueError(f"params lack the release component(s) {missing} (it has {sorted(params)}); the release "
                         "checkpoint needs all of " + str(list(RELEASE_COMPONENTS)))
    if state is None or "audio_bridge" not in state:
        raise ValueError("the release checkpoint carries the RVQ codebooks (audio_tokenizer.audio_bridge_model.vq_list.*): "
                         "pass the model state {'audio_bridge': {'vq_i': ...}} (TrainState.model_state / Omni15.init_state)")
    extra = sorted(set(state) - set(STATE_KEYS))
    if extra:
        raise ValueError(f"model state has {extra} besides {list(STATE_KEYS)}; the release has no such tensors")


def foreign_components_message(foreign, what: str) -> str:
    why = " (training only, not part of the release)" if set(foreign) <= set(TRAINING_ONLY) else ""
    return (f"{what} has component(s) {foreign}{why} that the release checkpoint does not have; pass "
            f"exclude={tuple(foreign)!r} to leave them out (on import they keep their initialisation), or choose "
            f"the components with only=[...] (release components: {list(KNOWN_COMPONENTS)})")


def export_release(params: Mapping[str, Any], state: Mapping[str, Any], cfg, dtype: Any = None, *,
                   exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Our Omni15 params + RVQ state -> the release's main state dict {name: numpy array}, in the
    release's order (reference_state_dict.tsv), with the sinusoid position buffers.

    `params` may hold the vocoder (exported separately by `export_vocoder`); any other component
    that is not in the release must be named in `exclude`. dtype: e.g. "bfloat16" (the release)."""
    cfg = _as_cfg(cfg)
    params, state = _unbox(dict(params)), _unbox(state)
    _check_export_tree(params, state, exclude)
    tree = {"params": {c: params[c] for c in RELEASE_COMPONENTS}, "state": {"audio_bridge": state["audio_bridge"]},
            "buffers": _tables(cfg, RELEASE_COMPONENTS)}
    return export_params(tree, release_rules(cfg), dtype)


def export_release_shapes(cfg, abstract_params=None, abstract_state=None) -> dict[str, tuple[int, ...]]:
    """{release name: shape} in release order, on abstract arrays (nothing is materialised)."""
    cfg = _as_cfg(cfg)
    if abstract_params is None or abstract_state is None:
        ap, st = abstract_variables(cfg)
        abstract_params = ap if abstract_params is None else abstract_params
        abstract_state = st if abstract_state is None else abstract_state
    tree = {"params": {c: abstract_params[c] for c in RELEASE_COMPONENTS},
            "state": {"audio_bridge": abstract_state["audio_bridge"]},
            "buffers": _tables(cfg, RELEASE_COMPONENTS, abstract=True)}
    return export_shapes(tree, release_rules(cfg))


def _vocoder_cfg(cfg):
    from omni_jax.models.hift import HiFTConfig

    return cfg if isinstance(cfg, HiFTConfig) else _as_cfg(cfg).vocoder


def _vocoder_flavour(weight_norm: bool) -> str:
    return "weight_norm" if weight_norm else "folded"


def export_vocoder(params: Mapping[str, Any], cfg, weight_norm: bool = True, dtype: Any = None) -> dict[str, Any]:
    """The vocoder as the release's HiFT state dict (reference_vocoder_state_dict.tsv): weight_norm=True
    writes weight_g / weight_v like hift.pt, False plain folded `.weight`. `params`: the Omni15 tree
    (or its "vocoder" subtree)."""
    params = _unbox(dict(params))
    voc = params[VOCODER] if VOCODER in params else params
    return export_params(voc, speech_conv.vocoder_rules(_vocoder_cfg(cfg), _vocoder_flavour(weight_norm)), dtype)


def abstract_vocoder_params(cfg) -> dict:
    """The vocoder's abstract params alone (as Omni15.init builds them), no memory used."""
    from omni_jax.models.hift import HiFTGenerator

    vcfg = _vocoder_cfg(cfg)
    key = jax.ShapeDtypeStruct((2,), np.uint32)
    init = lambda k: HiFTGenerator(vcfg).init(k, jax.numpy.zeros((1, 4, vcfg.n_mels)), k)["params"]
    return _unbox(jax.eval_shape(init, key))


def export_vocoder_shapes(cfg, weight_norm: bool = True, abstract_params=None) -> dict[str, tuple[int, ...]]:
    """{HiFT state dict name: shape} on abstract arrays (reference_vocoder_state_dict.tsv for the release)."""
    voc = abstract_vocoder_params(cfg) if abstract_params is None else _unbox(abstract_params)
    return export_shapes(voc, speech_conv.vocoder_rules(_vocoder_cfg(cfg), _vocoder_flavour(weight_norm)))


# ---------------------------------------------------------------------------------------
# Import.
# ---------------------------------------------------------------------------------------


def _select(abstract_params, only, exclude) -> list[str]:
    if abstract_params is None:
        return []
    have = list(abstract_params)
    only = None if only is None else tuple(only)
    typos = sorted(n for n in tuple(only or ()) + tuple(exclude)
                   if n not in have and n not in KNOWN_COMPONENTS + TRAINING_ONLY)
    if typos:
        raise ValueError(f"only/exclude name unknown component(s) {typos}; abstract_params has {sorted(have)}")
    if only is not None:
        absent = [c for c in only if c not in have]
        if absent:
            raise ValueError(f"only={list(only)}: abstract_params has no {absent} (it has {sorted(have)})")
    chosen = [c for c in have if (only is None or c in only) and c not in exclude]
    foreign = sorted(c for c in chosen if c not in KNOWN_COMPONENTS)
    if foreign:
        raise ValueError(foreign_components_message(foreign, "abstract_params"))
    return [c for c in KNOWN_COMPONENTS if c in chosen]


def is_workdir(src) -> bool:
    """An omni_jax trainer workdir (it has checkpoints/), as opposed to a release directory."""
    from omni_jax.workdir import workdir_path  # epath: gs://bucket/run workdirs too

    return isinstance(src, (str, os.PathLike)) and (workdir_path(src) / "checkpoints").is_dir()


def _vocoder_path(src, vocoder_src) -> str:
    if vocoder_src is not None:
        return vocoder_src
    if isinstance(src, (str, os.PathLike)) and os.path.isdir(src):
        for sub in (VOCODER_DIR,) + RELEASE_VOCODER_DIRS:
            cand = os.path.join(src, sub)
            if glob.glob(os.path.join(cand, "*.safetensors")):
                return cand
            if os.path.exists(os.path.join(cand, "hift.pt")):
                pt = os.path.join(cand, "hift.pt")
                raise ValueError(
                    f"{pt} is a pickle, which omni_jax never loads. Convert it once: python -c \"import torch, "
                    f"safetensors.torch as s; s.save_file(torch.load('{pt}', weights_only=True), "
                    f"'{os.path.join(cand, 'hift.safetensors')}')\" and import again.")
    where = src if isinstance(src, (str, os.PathLike)) else "a state dict"
    raise ValueError(
        f"the vocoder is requested (it is in abstract_params) but {where} has no {VOCODER_DIR}/ state dict. The "
        "release ships it separately (third_party/cosy24k_vocoder/hift.pt, a pickle: convert it once with "
        "safetensors.torch.save_file(torch.load('hift.pt', weights_only=True), 'hift.safetensors')); pass "
        f"vocoder_src=<that file>, or exclude=('{VOCODER}',) to keep its initialisation.")


def import_vocoder_release(path: str, cfg, abstract_vocoder_params, *, flavour: str | None = None) -> dict:
    """The release's HiFT state dict (a safetensors file, a directory holding it, or a save_release
    directory with vocoder/; weight_g/weight_v are folded, plain .weight taken as is) -> our vocoder
    params (numpy), every tensor checked."""
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(os.path.join(path, VOCODER_DIR)):
        path = os.path.join(path, VOCODER_DIR)  # a save_release directory
    sd = open_state_dict(path) if isinstance(path, (str, os.PathLike)) else path
    return speech_conv.import_vocoder(sd, _vocoder_cfg(cfg), _unbox(abstract_vocoder_params), flavour=flavour,
                                      source=str(path) if isinstance(path, (str, os.PathLike)) else "vocoder state dict")


def import_release(src, cfg, abstract_params=None, abstract_state=None, *, only: Sequence[str] | None = None,
                   exclude: Sequence[str] = (), vocoder_src: str | None = None,
                   source: str | None = None, step: int | None = None) -> tuple[dict | None, dict | None]:
    """The release checkpoint -> (params, state) as numpy trees, checked against the abstract trees.

    src: a release directory (sharded safetensors + index, or model.safetensors), a safetensors
        file, a {name: array} dict, or an omni_jax workdir (see the module docstring).
    cfg: Omni15Config or the `config.model` ConfigDict.
    abstract_params: the Omni15 params tree with ShapeDtypeStruct (or array, or boxed) leaves, or
        None (import the state only). Every component in it is imported (default), or those chosen
        by only= / exclude=. Components the release lacks raise unless excluded. The vocoder is read
        from DIR/vocoder/ or `vocoder_src`.
    abstract_state: {"audio_bridge": {"vq_i": ...}} or None (skip the RVQ codebooks).
    step: for an omni_jax workdir, the checkpoint step (default: the latest).
    Returns (params of the chosen components or None, state or None); dtypes follow the abstract trees
    (a bf16 checkpoint into fp32 params is exact). Every problem raises ConversionError naming the
    tensors: missing, wrong shape, unexpected, stored position tables that are not the sinusoids.
    """
    cfg = _as_cfg(cfg)
    abstract_params, abstract_state = _unbox(abstract_params), _unbox(abstract_state)
    if abstract_params is None and abstract_state is None:
        raise ValueError("import_release: nothing to import (abstract_params and abstract_state are both None)")
    comps = _select(abstract_params, only, exclude)
    if abstract_state is not None:
        extra = sorted(set(abstract_state) - set(STATE_KEYS))
        if extra:
            raise ValueError(f"abstract_state has {extra}; the release's model state is only {list(STATE_KEYS)}")
    if is_workdir(src):
        return _import_workdir(os.fspath(src), comps, abstract_params, abstract_state, step)
    main = [c for c in comps if c != VOCODER]
    want_state = abstract_state is not None
    params, state = ({} if abstract_params is not None else None), None
    if main or want_state:
        if isinstance(src, Mapping):
            sd, source = src, source or "state dict"
        else:
            sd, source = open_state_dict(os.fspath(src)), source or os.fspath(src)
        tables = _tables(cfg, main)
        for c, t in tables.items():
            name = audio_conv.RELEASE_PREFIX[c] + "positional_embedding"
            if name in sd:
                audio_conv.check_sinusoids(name, sd[name], t["positional_embedding"])
        ignore = [p for c, p in _NAMES.items() if c not in main] + ([] if want_state else [_STATE_NAMES]) + list(_BUFFERS)
        tree = {"params": {c: abstract_params[c] for c in main},
                "buffers": {c: {"positional_embedding": jax.ShapeDtypeStruct(t["positional_embedding"].shape, np.float32)}
                            for c, t in tables.items()}}
        if want_state:
            tree["state"] = {"audio_bridge": abstract_state["audio_bridge"]}
        try:
            out = import_params(sd, release_rules(cfg, main, want_state), tree, ignore=ignore, source=source)
        except ConversionError as e:  # mapping's hint names its own `ignore` argument, which this API has not
            raise ConversionError(str(e).replace("(wrong model, or add them to `ignore`)",
                                                 "(a different model, or not the release layout)")) from None
        if params is not None:
            params.update(out.get("params", {}))
        state = out.get("state") if want_state else None
    if VOCODER in comps:
        path = _vocoder_path(src, vocoder_src)
        params[VOCODER] = import_vocoder_release(path, cfg, abstract_params[VOCODER])
    return params, state


# ---------------------------------------------------------------------------------------
# omni_jax workdirs (the trainer's checkpoints) as a source.
# ---------------------------------------------------------------------------------------


def _workdir_step(workdir: str, step: int | None) -> tuple[str, int]:
    """(the saved TrainState's directory, step) of one checkpoint of an omni_jax workdir."""
    from omni_jax.train.checkpoint import Checkpointer
    from omni_jax.workdir import workdir_path

    ck = Checkpointer(workdir_path(workdir) / "checkpoints", async_save=False)
    try:
        steps = ck.all_steps()
        step = (max(steps) if steps else None) if step is None else step
        if step is None:
            raise ValueError(f"{workdir}/checkpoints holds no checkpoint")
        if step not in steps:
            raise ValueError(f"{workdir}/checkpoints has no step {step} (it has {sorted(steps)})")
    finally:
        ck.close()
    return ck.directory / str(step) / "state", step


def _saved_tree_metadata(path: str):
    import orbax.checkpoint as ocp

    # the handler, not a Checkpointer: `path` is one item of a step, and a Checkpointer looks there for
    # the step's own metadata file (logging "Metadata file does not exist" on every load)
    meta = ocp.PyTreeCheckpointHandler().metadata(path)
    return getattr(meta, "tree", meta)


def workdir_components(workdir: str, step: int | None = None) -> list[str]:
    """The top-level parameter components saved in a workdir's checkpoint (metadata only)."""
    tree = _saved_tree_metadata(_workdir_step(workdir, step)[0])
    return sorted(tree.get("params") or {})


def restore_workdir(workdir: str, step: int | None = None, items: Sequence[str] = ("params", "model_state")) -> tuple[dict, int]:
    """{item: numpy tree} of one checkpoint of an omni_jax workdir (default: the latest), reading only
    `items` of the saved TrainState (never the optimizer state). Returns (items, step)."""
    import orbax.checkpoint as ocp

    path, step = _workdir_step(workdir, step)
    tree = _saved_tree_metadata(path)
    item = {k: tree[k] for k in items if isinstance(tree, Mapping) and tree.get(k) is not None}
    if not item:
        return {}, step
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), item,
                            is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    restore_args = jax.tree.map(lambda a: ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype), abstract)
    out = ocp.PyTreeCheckpointHandler().restore(
        path, args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True))
    return {k: out[k] for k in item}, step


def _flat(tree) -> dict[str, Any]:
    from flax import traverse_util

    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _take(saved: Mapping | None, abstract: Mapping, what: str, source: str) -> dict:
    """A saved subtree checked leaf by leaf against its abstract tree; cast to the abstract dtypes."""
    from flax import traverse_util

    if saved is None:
        raise ConversionError(f"cannot import {source}: it has no {what}")
    got, want = _flat(saved), _flat(abstract)
    missing = [f"  {what}/{k} (expected shape {tuple(want[k].shape)})" for k in want if k not in got]
    wrong = [f"  {what}/{k}: got {tuple(np.shape(got[k]))}, expected {tuple(want[k].shape)}"
             for k in want if k in got and tuple(np.shape(got[k])) != tuple(want[k].shape)]
    unexpected = [f"  {what}/{k} {tuple(np.shape(got[k]))}" for k in got if k not in want]
    if missing or wrong or unexpected:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensor(s) with the wrong shape (does the model config match the {source}?):\n"
                         + "\n".join(wrong[:40]))
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing from the {source}:\n" + "\n".join(missing[:40]))
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) in the {source}:\n" + "\n".join(unexpected[:40]))
        raise ConversionError(f"cannot import {source}:\n" + "\n".join(parts))
    return traverse_util.unflatten_dict({tuple(k.split("/")): np.asarray(got[k]).astype(want[k].dtype) for k in want})


def _import_workdir(workdir: str, comps, abstract_params, abstract_state, step=None):
    items, step = restore_workdir(workdir, step)
    source = f"checkpoint {workdir}/checkpoints/{step}"
    params = None
    if abstract_params is not None:
        saved = items.get("params") or {}
        absent = [c for c in comps if c not in saved]
        if absent:
            raise ConversionError(f"cannot import {source}: it has no {absent} (its params: {sorted(saved)}); "
                                  f"exclude them or choose with only=[...]")
        params = {c: _take(saved[c], abstract_params[c], f"params/{c}", source) for c in comps}
    state = None
    if abstract_state is not None:
        state = _take(items.get("model_state"), abstract_state, "model_state", source)
    return params, state


# ---------------------------------------------------------------------------------------
# config.json in the release's format.
# ---------------------------------------------------------------------------------------

# Values of the release's config.json that are not hyper-parameters of our modules: Hugging Face
# bookkeeping, tokenizer ids (the released tokenizer's; omni_jax/data/special_tokens.py), image
# preprocessing (omni_jax/data/vision_preprocessing.py), feature-extractor settings, and the CLIP
# leftovers of visual_config that the Qwen2-VL encoder never reads. Written as they are in the release.
_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
RELEASE_CONSTANTS = {
    "top": {
        "_name_or_path": "_", "architectures": ["OmniForCausalLM"], "attention_qkv_pack": True,
        "auto_map": {"AutoConfig": "configuration_omni.OmniConfig", "AutoModelForCausalLM": "modeling_omni.OmniForCausalLM"},
        "omni_tokenizer_type": "auto", "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "max_position_embeddings": 8192, "model_type": "omni", "multimodal": ["audio", "image", "video", "audiogen"],
        "multimodal_special_token_list": [151676, 151677, 151678, 151679, 151680, 151681, 151682, 151683, 151684,
                                          151685, 151686, 151687, 151688, 151693, 151694, 151695, 151696, 151697,
                                          151698, 151699, 151700, 151701],
        "position_embedding_type": "rope", "sliding_window": 131072, "sparse_attention_heads": None,
        "sparse_attention_layers": [], "tie_word_embeddings": False, "train_multimodal_special_tokens_only": False,
        "transformers_version": "4.45.0.dev0", "use_cache": False, "use_norm_head": False, "use_sliding_window": False,
    },
    "audio_config": {
        "audio_delim_token_id": 151693, "audio_end_token_id": 151677, "audio_pad_token_id": 151678,
        "audio_start_token_id": 151676, "audiogen_end_token_id": 151701, "audiogen_start_token_id": 151700,
        "audiotext_end_token_id": 151698, "audiotext_pad_token_id": 151699, "audiotext_start_token_id": 151697,
        "enable": True, "n_fft": 400, "split_overlap": 0.0,
    },
    "vq_config": {"enable": True},
    "flow_matching_config": {
        "enable": True, "use_hires_mel": True, "max_audio_seconds": 30, "split_overlap": 0.1,
        "use_hidden_states_before_dconv2": True, "prenet_activation_function": "gelu", "unet_use_omni_attn": False,
        "spk_emb_dim": 0, "dropout": 0.0, "act_fn": "gelu", "cal_mel_mae": True,
    },
    "cfm_params": {"solver": "euler"},
    "vision_common": {
        "_name_or_path": "", "_attn_implementation": "flash_attention_2", "enable": True,
        "image_delimiter_token_id": 151688, "image_end_token_id": 151680, "image_line_token_id": 151682,
        "image_mean": _IMAGE_MEAN, "image_pad_token_id": 151681, "image_size": 224, "image_start_token_id": 151679,
        "image_std": _IMAGE_STD, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_length": 20,
        "min_length": 0, "min_pixels": 3136, "model_type": "clip_vision_model", "num_attention_heads": 12,
        "num_hidden_layers": 12,
    },
    "video_config": {"decode_way": "1fps", "max_frame_num": 32, "max_pixels": 602112, "video_end_token_id": 151696,
                     "video_place_token_id": 151694, "video_start_token_id": 151695},
    "visual_config": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": False, "length_penalty": 1.0,
                      "max_pixels": 3211264, "projection_dim": 512},
    "vocoder_config": {"enable": True, "enable_multi_scale": True, "max_audio_seconds": 30, "split_overlap": 0.0,
                       "n_fft": 1024},
}


def _num(x):
    """Integers stay integers in the JSON (30, not 30.0)."""
    return int(x) if float(x).is_integer() and not isinstance(x, bool) else float(x)


def _release_part(cfg, torch_dtype: str) -> dict:
    """The release-format dict derived from our config (no overrides)."""
    K = RELEASE_CONSTANTS
    llm, vis, a, head, fm, voc = cfg.llm, cfg.vision, cfg.audio, cfg.audio_head, cfg.flow_matching, cfg.vocoder
    enc, br, dec = a.encoder, a.bridge, a.decoder
    audio = {
        "audio_head_transformer_layers": head.num_layers, **{k: v for k, v in K["audio_config"].items() if k.endswith("_id")},
        "avg_pooler": br.pool, "d_model": enc.d_model,
        "decoder_attention_heads": dec.num_heads, "decoder_ffn_dim": dec.ffn_dim, "decoder_kernel_size": dec.kernel_size,
        "decoder_layers": dec.num_layers, "decoder_stride_size": dec.upsample2, "enable": K["audio_config"]["enable"],
        "encoder_attention_heads": enc.num_heads, "encoder_ffn_dim": enc.ffn_dim, "encoder_layers": enc.num_layers,
        "hop_length": dec.hop_length, "kernel_size": enc.kernel_size,
        "max_audio_seconds": _num(dec.max_positions * dec.hop_length / dec.sample_rate),
        "n_fft": K["audio_config"]["n_fft"], "num_mel_bins": enc.num_mel_bins, "sampling_rate": dec.sample_rate,
        "stride_size": enc.stride, "split_overlap": K["audio_config"]["split_overlap"],
        "vq_config": {**K["vq_config"], "codebook_sizes": list(br.codebook_sizes)},
    }
    fk = K["flow_matching_config"]
    flow = {
        "enable": fk["enable"], "use_hires_mel": fk["use_hires_mel"], "sampling_rate": voc.sampling_rate,
        "hop_length": voc.hop, "max_audio_seconds": fk["max_audio_seconds"], "split_overlap": fk["split_overlap"],
        "use_hidden_states_before_dconv2": fk["use_hidden_states_before_dconv2"], "prenet_in_dim": fm.prenet_in_dim,
        "prenet_out_dim": fm.n_mels, "prenet_d_model": fm.prenet_d_model, "prenet_attention_heads": fm.prenet_heads,
        "prenet_ffn_dim": fm.prenet_ffn_dim, "prenet_nlayers": fm.prenet_layers,
        "prenet_activation_function": fk["prenet_activation_function"],
        "prenet_max_source_positions": fm.prenet_max_positions,
        "prenet_target_mel_length_scale_ratio": float(fm.prenet_length_ratio), "prenet_loss_weight": fm.prior_loss_weight,
        "unet_use_omni_attn": fk["unet_use_omni_attn"], "loss_weight": fm.loss_weight, "in_channels": fm.n_mels,
        "spk_emb_dim": fk["spk_emb_dim"], "diffusion_steps": fm.n_timesteps, "channels": list(fm.channels),
        "dropout": fk["dropout"], "attention_head_dim": fm.attention_head_dim, "n_blocks": fm.n_blocks,
        "num_mid_blocks": fm.num_mid_blocks, "num_heads": fm.num_heads, "act_fn": fk["act_fn"],
        "cal_mel_mae": fk["cal_mel_mae"],
        "cfm_params": {"sigma_min": fm.sigma_min, "solver": K["cfm_params"]["solver"], "t_scheduler": fm.t_scheduler,
                       "training_cfg_rate": fm.training_cfg_rate, "inference_cfg_rate": fm.inference_cfg_rate,
                       "reg_loss_type": fm.reg_loss_type},
    }
    ratio = vis.mlp_dim // vis.embed_dim if vis.mlp_dim % vis.embed_dim == 0 else vis.mlp_dim / vis.embed_dim
    vision = {"depth": vis.depth, "embed_dim": vis.embed_dim, "hidden_act": vis.hidden_act,
              "hidden_size": vis.out_hidden_size, "in_channels": vis.in_channels, "in_chans": vis.in_channels,
              "merge_size": vis.spatial_merge_size, "mlp_ratio": ratio, "num_channels": vis.in_channels,
              "num_heads": vis.num_heads, "patch_size": vis.patch_size, "spatial_merge_size": vis.spatial_merge_size,
              "spatial_patch_size": vis.patch_size, "temporal_patch_size": vis.temporal_patch_size}
    video_config = dict(sorted({**K["vision_common"], **K["video_config"], **vision}.items()))
    visual_config = dict(sorted({**K["vision_common"], **K["visual_config"], **vision}.items()))
    vocoder = {"enable": K["vocoder_config"]["enable"], "enable_multi_scale": K["vocoder_config"]["enable_multi_scale"],
               "max_audio_seconds": K["vocoder_config"]["max_audio_seconds"], "sampling_rate": dec.mel_sample_rate,
               "hop_length": dec.mel_hop_length, "split_overlap": K["vocoder_config"]["split_overlap"],
               "n_fft": K["vocoder_config"]["n_fft"], "num_mel_bins": dec.num_mel_bins,
               # the audio decoder's post-net uses channels[:-1] (AudioTokenizerConfig.from_release)
               "channels": list(dec.postnet_channels) + [dec.postnet_channels[-1]]}
    top = dict(K["top"])
    out = {
        "_name_or_path": top["_name_or_path"], "architectures": top["architectures"],
        "attention_qkv_bias": llm.qkv_bias, "attention_qkv_pack": top["attention_qkv_pack"], "audio_config": audio,
        "auto_map": top["auto_map"], "omni_tokenizer_type": top["omni_tokenizer_type"],
        "bos_token_id": top["bos_token_id"], "eos_token_id": top["eos_token_id"], "flow_matching_config": flow,
        "head_dim": llm.head_dim, "hidden_act": top["hidden_act"], "hidden_size": llm.hidden_size,
        "initializer_range": llm.initializer_range, "intermediate_size": llm.intermediate_size,
        "max_position_embeddings": top["max_position_embeddings"], "max_window_layers": llm.num_layers,  # unused (no sliding window); 28 = all layers in the release
        "model_type": top["model_type"], "multimodal": top["multimodal"],
        "multimodal_special_token_list": top["multimodal_special_token_list"], "num_attention_heads": llm.num_heads,
        "num_hidden_layers": llm.num_layers, "num_key_value_heads": llm.num_kv_heads, "pad_token_id": llm.padding_idx,
        "position_embedding_type": top["position_embedding_type"], "rms_norm_eps": llm.rms_norm_eps,
        "rope_theta": float(llm.rope_theta), "sliding_window": top["sliding_window"],
        "sparse_attention_heads": top["sparse_attention_heads"], "sparse_attention_layers": top["sparse_attention_layers"],
        "tie_word_embeddings": top["tie_word_embeddings"], "torch_dtype": torch_dtype,
        "train_multimodal_special_tokens_only": top["train_multimodal_special_tokens_only"],
        "transformers_version": top["transformers_version"], "use_cache": top["use_cache"],
        "use_norm_head": top["use_norm_head"], "use_sliding_window": top["use_sliding_window"],
        "video_config": video_config, "visual_config": visual_config, "vocab_size": llm.vocab_size,
        "vocoder_config": vocoder,
    }
    return copy.deepcopy(out)


def _sections_of(cfg) -> dict[str, dict]:
    """Our config as {section: {field: value}} with audio split into encoder / bridge / decoder."""
    return {"llm": dataclasses.asdict(cfg.llm), "vision": dataclasses.asdict(cfg.vision),
            "audio": {k: dataclasses.asdict(getattr(cfg.audio, k)) for k in ("encoder", "bridge", "decoder")},
            "audio_head": dataclasses.asdict(cfg.audio_head), "flow_matching": dataclasses.asdict(cfg.flow_matching),
            "vocoder": dataclasses.asdict(cfg.vocoder)}


def _jsonable(x):
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return x


def _tuples(x):
    if isinstance(x, (tuple, list)):
        return tuple(_tuples(v) for v in x)
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    return x


def _diff(ours: dict, implied: dict) -> dict:
    out = {}
    for k, v in ours.items():
        if isinstance(v, dict):
            d = _diff(v, implied[k])
            if d:
                out[k] = d
        elif _tuples(v) != _tuples(implied[k]):
            out[k] = _jsonable(v)
    return out


def release_config_json(cfg, torch_dtype: str = "bfloat16") -> dict:
    """config.json in the release's format (tests/fixtures/reference_config.json) for our model config.

    torch_dtype: the dtype the tensors are saved in. Our settings that the format cannot hold go under
    "omni_jax" (only where they differ from what the release values imply; none for the 7B preset)."""
    cfg = _as_cfg(cfg)
    out = _release_part(cfg, torch_dtype)
    overrides = _diff(_sections_of(cfg), _sections_of(_implied_config(out)))
    if overrides:
        out[OVERRIDES_KEY] = overrides
    return out


def _implied_config(j: Mapping[str, Any]):
    """Our Omni15Config from the release-format keys alone (no "omni_jax" overrides)."""
    from omni_jax.models.audio_tokenizer import AudioTokenizerConfig
    from omni_jax.models.hift import HiFTConfig
    from omni_jax.models.omni import Omni15Config

    problems = []
    if not j.get("attention_qkv_pack", True):
        problems.append("attention_qkv_pack=false (separate q/k/v): the release layout packs them in W_pack")
    if j.get("use_norm_head"):
        problems.append("use_norm_head=true (a normalised lm_head) is not implemented")
    if j.get("use_sliding_window"):
        problems.append("use_sliding_window=true is not implemented (1.5 attends over the whole sequence)")
    if j.get("sparse_attention_layers"):
        problems.append(f"sparse_attention_layers={j['sparse_attention_layers']} is not implemented")
    if j.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={j['hidden_act']!r}: the Qwen2 MLP is SiLU-gated")
    if problems:
        raise ValueError("config.json describes a model omni_jax does not build:\n  " + "\n  ".join(problems))
    llm = qwen2_conv.config_from_hf(dict(j), qkv_bias=bool(j.get("attention_qkv_bias", True)),
                                    padding_idx=int(j.get("pad_token_id") or 0),
                                    initializer_range=float(j.get("initializer_range", 0.02)))
    vision = vision_conv.navit_config_from_hf(j["visual_config"])
    audio = AudioTokenizerConfig.from_release(j)
    head = speech_conv.audio_head_config_from_release(j)
    fm = speech_conv.flow_matching_config_from_release(j)
    f = j["flow_matching_config"]
    voc = HiFTConfig(n_mels=f["in_channels"], sampling_rate=f.get("sampling_rate", 24000))
    return Omni15Config(llm=llm, vision=vision, audio=audio, audio_head=head, flow_matching=fm, vocoder=voc)


def _merge(base: dict, over: Mapping, where: str) -> dict:
    out = dict(base)
    for k, v in over.items():
        if k not in base:
            raise ValueError(f"config.json {where}: unknown key {k!r}; valid keys: {sorted(base)}")
        out[k] = _merge(base[k], v, f"{where}.{k}") if isinstance(base[k], dict) else _tuples(v)
    return out


def model_config_from_release(config_json) -> ml_collections.ConfigDict:
    """Our `config.model` (the omni15 model config, as configs/common.py omni15_model) from a
    release-format config.json (a dict or a path); applies the "omni_jax" overrides when present."""
    from omni_jax.models.omni import Omni15Config

    if isinstance(config_json, (str, os.PathLike)):
        path = os.path.join(config_json, CONFIG_NAME) if os.path.isdir(config_json) else config_json
        with open(path) as fh:
            config_json = json.load(fh)
    sections = _merge(_sections_of(_implied_config(config_json)), config_json.get(OVERRIDES_KEY, {}), OVERRIDES_KEY)
    model = ml_collections.ConfigDict(sections)
    cfg = Omni15Config.from_config(model)  # checks that the parts fit
    hop = config_json["flow_matching_config"].get("hop_length")
    if hop is not None and hop != cfg.vocoder.hop:
        raise ValueError(f"config.json: flow_matching_config.hop_length={hop}, but the vocoder makes {cfg.vocoder.hop} "
                         "samples per mel frame (set omni_jax.vocoder.upsample_rates / istft_hop)")
    return model


# ---------------------------------------------------------------------------------------
# Directories.
# ---------------------------------------------------------------------------------------


def _existing(directory: str) -> list[str]:
    names = [CONFIG_NAME, SINGLE_NAME, INDEX_NAME, VOCODER_DIR]
    found = [n for n in names if os.path.exists(os.path.join(directory, n))]
    found += sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "model-*-of-*.safetensors")))
    return found


def save_release(directory: str, params: Mapping[str, Any], state: Mapping[str, Any], cfg, dtype: Any = "bfloat16",
                 max_shard_bytes: int = 5 << 30, *, exclude: Sequence[str] = (), vocoder_weight_norm: bool = True,
                 vocoder_dtype: Any = None, overwrite: bool = False, metadata: Mapping[str, str] | None = None) -> list[str]:
    """Writes the release layout (module docstring): sharded safetensors + index + config.json, and the
    vocoder (when `params` has it and it is not excluded) under vocoder/. Returns the files written.

    dtype: tensor dtype of the main state dict ("bfloat16" like the release; None keeps ours).
    vocoder_dtype: the vocoder's (None: ours, float32; weight_g/weight_v round trip exactly in fp32).
    overwrite: replace an earlier save in `directory` (only the files this function writes are removed)."""
    cfg = _as_cfg(cfg)
    params = _unbox(dict(params))
    old = _existing(directory) if os.path.isdir(directory) else []
    if old:
        if not overwrite:
            raise FileExistsError(f"{directory} already holds a checkpoint ({old}); pass overwrite=True to replace it")
        for n in old:
            p = os.path.join(directory, n)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    tensors = export_release(params, state, cfg, dtype, exclude=exclude)
    files = save_state_dict(directory, tensors, max_shard_bytes=max_shard_bytes, metadata=metadata)
    torch_dtype = str(np.dtype(jax.numpy.dtype(dtype))) if dtype is not None else cfg.llm.param_dtype
    _write_json(os.path.join(directory, CONFIG_NAME), release_config_json(cfg, torch_dtype))
    files.append(os.path.join(directory, CONFIG_NAME))
    if VOCODER in params and VOCODER not in exclude:
        vdir = os.path.join(directory, VOCODER_DIR)
        files += save_state_dict(vdir, export_vocoder(params, cfg, vocoder_weight_norm, vocoder_dtype),
                                 metadata={"weight_norm": str(bool(vocoder_weight_norm)).lower()})
        _write_json(os.path.join(vdir, CONFIG_NAME), {"vocoder_config": _jsonable(dataclasses.asdict(cfg.vocoder)),
                                                      "weight_norm": bool(vocoder_weight_norm)})
        files.append(os.path.join(vdir, CONFIG_NAME))
    return files


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


class ReleaseCheckpoint(NamedTuple):
    params: dict
    state: dict | None
    model_config: ml_collections.ConfigDict


def load_release(directory: str, model_config=None, *, only: Sequence[str] | None = None,
                 exclude: Sequence[str] = (), vocoder_src: str | None = None) -> ReleaseCheckpoint:
    """Reads a release directory: our config from its config.json (or `model_config`), then params and
    the RVQ state through `import_release`. The vocoder comes from DIR/vocoder/ or `vocoder_src`;
    without either, pass exclude=("vocoder",). Returns (params, state, model_config)."""
    if model_config is None:
        model_config = model_config_from_release(directory)
    abstract_params, abstract_state = abstract_variables(model_config)
    params, state = import_release(directory, model_config, abstract_params, abstract_state, only=only,
                                   exclude=exclude, vocoder_src=vocoder_src)
    return ReleaseCheckpoint(params, state, model_config)


__all__ = [
    "RELEASE_COMPONENTS", "KNOWN_COMPONENTS", "TRAINING_ONLY", "VOCODER", "VOCODER_DIR", "RELEASE_CONSTANTS",
    "abstract_variables", "foreign_components_message", "release_rules", "export_release", "export_release_shapes", "export_vocoder",
    "export_vocoder_shapes", "abstract_vocoder_params", "import_release", "import_vocoder_release", "restore_workdir", "workdir_components", "release_config_json",
    "model_config_from_release", "save_release", "load_release", "ReleaseCheckpoint",
]
