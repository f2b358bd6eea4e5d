r"""Weights to and from PyTorch, and a logit checker (MaxText's forward_pass_logit_checker idea).

Export a trained checkpoint (the trainer's --workdir) as safetensors + config.json:
  python -m launch.convert --mode=export --config=configs/backbone_tiny.py --workdir=runs/x \
      --out=exported/ --flavour=hf [--dtype=bfloat16] [--step=N] [--max_shard_mb=5000]

Check that a Hugging Face checkpoint directory gives the same logits in transformers and
in omni_jax (after our import), on random tokens:
  python -m launch.convert --mode=check --src=exported/ [--tolerance=1e-4]

The whole Baichuan-Omni-1.5 model (omni_jax/convert/omni.py has the layout):
  # a trainer workdir whose config has task "omni" -> the release layout: sharded safetensors +
  # index + config.json (release format) + vocoder/ (HiFT state dict, weight_g / weight_v)
  python -m launch.convert --mode=export_release --config=<omni config> --workdir=runs/x --out=release/ \
      [--dtype=bfloat16] [--step=N] [--max_shard_mb=5000] [--vocoder_weight_norm=false] [--exclude=audio_text_adapter]
  # the release layout -> an omni_jax checkpoint (OUT/checkpoints/0 with params + RVQ state,
  # OUT/model_config.json = our config.model); train from it with --config.init.checkpoint=OUT
  # (or point config.init.checkpoint at the release directory itself: the omni task imports either)
  python -m launch.convert --mode=import_release --src=release/ --out=runs/imported \
      [--vocoder_src=hift.safetensors] [--exclude=vocoder]

Any omni model trained here to PyTorch (omni_jax/convert/export_torch.py), from its workdir alone:
  # v1 -> a transformers remote-code model: AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
  # 1.5 -> the release layout; either -> parts as the Hugging Face classes, each in DIR/<part>/:
  #   llm (Qwen2ForCausalLM), vision (1.5: Qwen2VisionTransformerPretrainedModel), siglip (v1: SiglipVisionModel),
  #   audio_encoder (WhisperEncoder)
  python -m launch.convert --mode=export_torch --src=runs/omni_v1_tiny --out=exported/ \
      [--parts=model,llm,siglip,audio_encoder] [--dtype=bfloat16] [--step=N] [--overwrite]
Prints the files written and, when torch is installed, JAX vs PyTorch max abs diff on a random input.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import flag_errors

FLAGS = flags.FLAGS


def export(config, workdir: str, out: str, flavour: str, dtype=None, step=None, max_shard_mb=5000) -> list[str]:
    import jax

    from omni_jax import sharding as shd
    from omni_jax.convert.safetensors_io import save_state_dict
    from omni_jax.tasks import get_task
    from omni_jax.train import step as step_lib
    from omni_jax.train.checkpoint import Checkpointer
    from omni_jax.workdir import workdir_path

    task = get_task(config)
    ckpt = Checkpointer(workdir_path(workdir) / "checkpoints")
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise SystemExit(f"no checkpoint in {workdir}/checkpoints")
    abstract = shd.unbox(step_lib.abstract_init(task, "params"))
    params = jax.device_get(ckpt.restore_params(step, abstract))
    tensors = task.export_state_dict(params, flavour, dtype)
    files = save_state_dict(out, tensors, max_shard_bytes=max_shard_mb << 20,
                            metadata={"omni_jax_step": str(step), "flavour": flavour})
    cfg = task.export_config(flavour)
    if dtype:
        cfg["torch_dtype"] = dtype
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return files


def _exclude_hint(e: Exception) -> Exception:
    return app.UsageError(f"{e}\n(on the command line: --exclude=NAME[,NAME...])")


def export_release(config, workdir: str, out: str, dtype="bfloat16", step=None, max_shard_mb=5000,
                   vocoder_weight_norm: bool = True, exclude=()) -> list[str]:
    """A trainer workdir (task "omni") -> the release layout in `out` (omni_jax/convert/omni.py save_release).
    The checkpoint's params and RVQ state are checked against config.model before anything is written."""
    from omni_jax.convert import omni as oc
    from omni_jax.workdir import workdir_path

    if config.get("task") != "omni":
        raise app.UsageError(f"--mode=export_release exports the omni model: the config's task is {config.get('task')!r}, "
                             "not 'omni' (use --mode=export for a single-part task)")
    foreign = [c for c in oc.workdir_components(workdir, step) if c not in oc.KNOWN_COMPONENTS and c not in exclude]
    if foreign:
        raise _exclude_hint(ValueError(oc.foreign_components_message(foreign, f"the checkpoint in {workdir}")))
    abstract_params, abstract_state = oc.abstract_variables(config.model)
    try:
        params, state = oc.import_release(workdir, config.model, abstract_params, abstract_state,
                                          exclude=tuple(exclude), step=step)
        return oc.save_release(out, params, state, config.model, dtype=dtype or None, max_shard_bytes=max_shard_mb << 20,
                               exclude=tuple(exclude), vocoder_weight_norm=vocoder_weight_norm,
                               metadata={"omni_jax_workdir": os.fspath(workdir_path(workdir))})
    except ValueError as e:
        if "exclude=" in str(e):
            raise _exclude_hint(e) from e
        raise


def import_release(src: str, out: str, model_config=None, exclude=(), vocoder_src=None) -> str:
    """The release layout in `src` -> an omni_jax checkpoint directory `out` the trainer starts from
    (config.init.checkpoint=out): out/checkpoints/0 holds {"step", "params", "model_state"} (no optimizer
    state), out/model_config.json our `config.model`. Returns the checkpoint directory."""
    import numpy as np

    from omni_jax.convert import omni as oc
    from omni_jax.train.checkpoint import Checkpointer
    from omni_jax.workdir import workdir_path, write_text_atomic

    out_dir = workdir_path(out)  # a workdir the trainer starts from: local or gs://
    if (out_dir / "checkpoints").is_dir():
        raise app.UsageError(f"--out={out} already holds checkpoints; choose a new directory")
    try:
        rc = oc.load_release(src, model_config, exclude=tuple(exclude), vocoder_src=vocoder_src)
    except ValueError as e:
        if "exclude=" in str(e):
            raise _exclude_hint(e) from e
        raise
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(out_dir / "checkpoints", async_save=False)
    tree = {"step": np.zeros((), np.int32), "params": rc.params, "model_state": rc.state}
    meta = {"stage": "import_release", "stage_index": -1, "stage_step": 0, "step": 0, "task": "omni",
            "source": os.path.abspath(src), "model": rc.model_config.to_dict()}
    ckpt.save(0, tree, meta, {}, force=True)
    ckpt.close()
    write_text_atomic(out_dir / "model_config.json", rc.model_config.to_json_best_effort(indent=2))
    return os.path.join(out, "checkpoints", "0")


def export_torch(src: str, out: str, parts=None, dtype=None, step=None, overwrite: bool = False,
                 check_parity: bool = True) -> dict:
    """A trainer workdir of an omni model -> PyTorch directories (omni_jax/convert/export_torch.py); prints
    what was written and, with torch installed, the parity on a random input. Returns {part: max abs diff}."""
    import importlib.util

    from omni_jax.convert import export_torch as et

    try:
        loaded, written = et.export_workdir(src, out, parts or None, dtype or None, overwrite, step)
    except et.ExportError as e:
        raise app.UsageError(str(e)) from None
    have_torch = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    parity = {}
    for w in written:
        top = sorted(os.path.basename(f) for f in w.files if os.path.dirname(f) == w.directory)
        print(f"{w.part}: {et.PART_CLASSES[w.part]} -> {w.directory} ({', '.join(top)})")
        if check_parity and have_torch:
            from omni_jax.convert import torch_parity as tp

            parity[w.part], what = tp.check_written(loaded, w.part, w.directory, dtype or None)
            print(f"  {what}")
    if check_parity and not have_torch:
        print("torch / transformers are not installed: parity not checked")
    return parity


def check(src: str, tolerance: float, batch: int = 2, length: int = 32) -> float:
    """Max abs difference of logits: transformers (eager, fp32) vs omni_jax on random tokens."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from omni_jax import sharding as shd
    from omni_jax.convert import qwen2 as conv
    from omni_jax.convert.mapping import import_params
    from omni_jax.convert.safetensors_io import load_state_dict
    from omni_jax.models.qwen2 import Qwen2LM

    with open(os.path.join(src, "config.json")) as f:
        cfg = conv.config_from_hf(json.load(f))
    model = Qwen2LM(cfg)
    z = jnp.zeros((1, 4), jnp.int32)
    abstract = shd.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), z, z, z)["params"])
    params = import_params(load_state_dict(src), conv.rules(cfg, "hf"), abstract, ignore=conv.IGNORE, source=src)
    ids = np.random.RandomState(0).randint(1, cfg.vocab_size, (batch, length)).astype(np.int32)
    pos = np.broadcast_to(np.arange(length, dtype=np.int32), ids.shape)
    ours = np.asarray(model.apply({"params": params}, ids, pos, np.ones_like(ids)))
    ref_model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(ids).long()).logits.numpy()
    diff = float(np.abs(ours - ref).max())
    top1 = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    print(f"logits max abs diff {diff:.3e} (tolerance {tolerance:g}); top-1 agreement {top1:.1%}")
    return diff


def _main(argv):
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    from omni_jax import distributed

    distributed.initialize_single_process_tool("launch.convert")  # first: before anything touches jax devices
    exclude = tuple(x for x in (FLAGS.exclude or []) if x)
    if FLAGS.mode == "export_release":
        if not (FLAGS.config and FLAGS.workdir and FLAGS.out):
            raise app.UsageError("--mode=export_release needs --config, --workdir and --out")
        files = export_release(FLAGS.config, FLAGS.workdir, FLAGS.out, FLAGS.dtype or "bfloat16", FLAGS.step,
                               FLAGS.max_shard_mb, FLAGS.vocoder_weight_norm, exclude)
        print(f"wrote {len(files)} file(s) to {FLAGS.out}")
        return 0
    if FLAGS.mode == "import_release":
        if not (FLAGS.src and FLAGS.out):
            raise app.UsageError("--mode=import_release needs --src and --out")
        model = FLAGS.config.model if FLAGS.config else None
        path = import_release(FLAGS.src, FLAGS.out, model, exclude, FLAGS.vocoder_src)
        print(f"wrote {path}; train from it with --config.init.checkpoint={FLAGS.out}")
        return 0
    if FLAGS.mode == "export_torch":
        if not (FLAGS.src and FLAGS.out):
            raise app.UsageError("--mode=export_torch needs --src (a trainer workdir) and --out")
        export_torch(FLAGS.src, FLAGS.out, [p for p in FLAGS.parts or [] if p], FLAGS.dtype, FLAGS.step, FLAGS.overwrite)
        return 0
    if FLAGS.mode == "export":
        if not (FLAGS.config and FLAGS.workdir and FLAGS.out):
            raise app.UsageError("--mode=export needs --config, --workdir and --out")
        files = export(FLAGS.config, FLAGS.workdir, FLAGS.out, FLAGS.flavour, FLAGS.dtype, FLAGS.step, FLAGS.max_shard_mb)
        print(f"wrote {len(files)} file(s) to {FLAGS.out}")
        return 0
    if not FLAGS.src:
        raise app.UsageError("--mode=check needs --src")
    return 0 if check(FLAGS.src, FLAGS.tolerance) <= FLAGS.tolerance else 1


def _define_flags() -> None:
    """Defined when the command runs, so several launch modules can be imported together."""
    from omni_jax import distributed

    distributed.define_flags(flags)
    config_flags.DEFINE_config_file("config", None, "The config the checkpoint was trained with.", lock_config=True)
    flags.DEFINE_enum("mode", None, ["export", "check", "export_release", "import_release", "export_torch"],
                      "What to do.")
    flags.DEFINE_string("workdir", None, "Trainer workdir to export from.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
    flags.DEFINE_string("out", None, "Output directory for safetensors + config.json.")
    flags.DEFINE_enum("flavour", "hf", ["hf", "release"], "PyTorch naming layout.")
    flags.DEFINE_string("dtype", None, "Cast exported tensors, e.g. bfloat16.")
    flags.DEFINE_integer("max_shard_mb", 5000, "Shard size for the safetensors files.")
    flags.DEFINE_string("src", None, "Checkpoint directory to check (--mode=check) or import (--mode=import_release); "
                        "the trainer workdir for --mode=export_torch.")
    flags.DEFINE_list("exclude", [], "Omni components to leave out of export_release / import_release "
                      "(e.g. audio_text_adapter, vocoder).")
    flags.DEFINE_bool("vocoder_weight_norm", True, "export_release: write the vocoder as weight_g / weight_v "
                      "(like hift.pt) rather than folded .weight.")
    flags.DEFINE_string("vocoder_src", None, "import_release: the HiFT state dict (safetensors) when --src has no vocoder/.")
    flags.DEFINE_list("parts", [], "export_torch: what to write (default: v1 'model', 1.5 'release'); v1: model, llm, "
                      "siglip, audio_encoder; 1.5: release, llm, vision, audio_encoder.")
    flags.DEFINE_bool("overwrite", False, "export_torch: replace an earlier export in --out.")
    flags.DEFINE_float("tolerance", 1e-4, "Max abs logit difference accepted by --mode=check.")
    flags.mark_flags_as_required(["mode"])


def main():
    _define_flags()
    app.run(_main, flags_parser=flag_errors.parse_flags)


if __name__ == "__main__":
    sys.exit(main())
