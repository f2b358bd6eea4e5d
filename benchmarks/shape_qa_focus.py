"""What keeps the LLM from reading the shape? Focused image QA runs from a checkpoint (issue #14).

  python benchmarks/shape_qa_focus.py --workdir=runs/omni15_tiny --out=/tmp/focus \
      [--step=2400 --encoder=supervised --kinds=shape,colour --vision_lr=2e-3 --steps=200]

The main job answers 'what shape is C?' at chance (benchmarks/README.md, "Why the shape is not
read"). This trains the run's own image_text_2 stage (the trainer, the run's config.json: LLM +
bridge and vision encoder at their stage rates) from the run's checkpoint `--step` (default: where
image_text_1 starts, 2400 in the default run since 5 Dec, 1140 before: after the vocoder, the
vision encoder still at its random initialisation; image_text_1 is skipped) for `--steps` steps
on ONE-SHAPE train pictures asked only the question kinds of `--kinds` (one in-memory record per
picture and kind: 'shape' = what shape is C?, 'colour' = what colour is
the S?, 'size' = is the C S big or small?), into a new workdir `--out`; then prints
benchmarks/image_qa_kinds.py's table for the first 100 test and train records.

`--encoder=supervised` first trains the NaViT + bridge on the shape label
(benchmarks/vision_shape_ceiling.py `train_encoder`, `--encoder_steps`, head on the tokens' mean)
and writes them into the copied checkpoint: an encoder whose tokens hold the shape, standing in for
a pretrained one. `--vision_lr` replaces the vision encoder's rate in image_text_2 (1e-8 ~ frozen;
the bridge keeps the LLM's rate). Nothing is written to `--workdir`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # image_qa_kinds, vision_shape_ceiling

def focused_records(kinds) -> list[dict]:
    """The one-shape train pictures of the embedded image set, one record per picture and kind."""
    from image_qa_kinds import one_shape, the_shape
    from omni_jax.data import default_dataset

    out = []
    for _, ex in default_dataset.generate("images", "train"):
        if not one_shape(ex):
            continue
        for k in kinds:
            q, a = default_dataset.OBJECT_QUESTIONS[k](*the_shape(ex))
            out.append(dict(ex, id=f"{ex['id']}-{k}", question=q, answer=a))
    return out


def copy_checkpoint(workdir: str, step: int, out: str, replace: dict | None) -> None:
    """`workdir`'s checkpoint `step` -> `out`/checkpoints/`step`, with the components of `replace`
    (top-level param name -> tree) written over the copy's params."""
    import jax
    import numpy as np

    from omni_jax.train.checkpoint import Checkpointer

    dst_dir = os.path.join(out, "checkpoints")
    os.makedirs(dst_dir, exist_ok=True)
    if not replace:
        shutil.copytree(os.path.join(workdir, "checkpoints", str(step)), os.path.join(dst_dir, str(step)))
        return
    src = Checkpointer(os.path.join(workdir, "checkpoints"))
    tree, meta = src.restore_tree(step), src.read_meta(step)
    data = src.read_data_state(step)
    src.close()
    for name, new in replace.items():
        tree["params"][name] = jax.tree.map(lambda old, x: np.asarray(x, dtype=old.dtype), tree["params"][name], new)
    dst = Checkpointer(dst_dir)
    dst.save(step, tree, meta, data, force=True)
    dst.wait()
    dst.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a trained omni_jax 1.5 run of configs/omni15/pipeline.py")
    p.add_argument("--out", required=True, help="a new workdir for the focused run")
    p.add_argument("--step", type=int, default=None,
                   help="the checkpoint to start from: where image_text_1 starts (default: that step of the run)")
    p.add_argument("--steps", type=int, default=200, help="image_text_2 steps")
    p.add_argument("--kinds", default="shape",
                   help="comma-separated kinds of default_dataset.OBJECT_QUESTIONS (shape, colour, size)")
    p.add_argument("--encoder", default="run", choices=("run", "supervised"))
    p.add_argument("--encoder_steps", type=int, default=200)
    p.add_argument("--vision_lr", type=float, default=None, help="the vision encoder's rate (default: the stage's)")
    a = p.parse_args(argv)
    from omni_jax.data.default_dataset import OBJECT_QUESTIONS

    kinds = a.kinds.split(",")
    if set(kinds) - set(OBJECT_QUESTIONS):
        raise SystemExit(f"--kinds={a.kinds}: use kinds of {sorted(OBJECT_QUESTIONS)}")
    if os.path.exists(a.out):
        raise SystemExit(f"--out={a.out} exists; give a new directory")

    import ml_collections

    import image_qa_kinds
    from omni_jax.data.sources import register_memory_source
    from omni_jax.train.trainer import train

    c = ml_collections.ConfigDict(json.load(open(os.path.join(a.workdir, "config.json"))))
    names = list(c.stage_order)
    if "image_text_1" not in names or "image_text_2" not in names:
        raise SystemExit(f"{a.workdir} has no image_text_1 / image_text_2 stage (stages: {names})")
    start = sum(int(c.stages[s].steps) for s in names[:names.index("image_text_1")])
    a.step = start if a.step is None else a.step
    if a.step != start:
        raise SystemExit(f"--step={a.step}: the focused run resumes where image_text_1 starts in this run, "
                         f"step {start}; pass --step={start}")
    for s in names[names.index("image_text_1"):]:
        c.stages[s].steps = 0
    c.stages.image_text_2.steps = a.steps
    c.stages.image_text_2.data.mixture = {"image_qa": {"dataset": "memory:shape_qa_focus", "format": "image_qa",
                                                       "split": "train", "weight": 1.0}}
    if a.vision_lr is not None:
        c.stages.image_text_2.groups.vision.lr = a.vision_lr
    c.train.steps = sum(int(c.stages[s].steps) for s in names)
    c.evaluate.at_end = False

    replace = None
    if a.encoder == "supervised":
        from vision_shape_ceiling import train_encoder

        from omni_jax.generate.omni_infer import OmniRunner

        print(f"training the vision encoder + bridge of step {a.step} on the shape label ({a.encoder_steps} steps)")
        replace = train_encoder(OmniRunner.load(a.workdir, step=a.step), steps=a.encoder_steps, pool="mean",
                                report_every=a.encoder_steps)
    copy_checkpoint(a.workdir, a.step, a.out, replace)

    records = focused_records(kinds)
    register_memory_source("shape_qa_focus", records)
    print(f"image_text_2 for {a.steps} steps on {len(records)} one-shape records ({', '.join(kinds)} questions), "
          f"encoder: {a.encoder}, vision lr {c.stages.image_text_2.groups.vision.lr}", flush=True)
    result = train(c, a.out)
    if result["status"] != "done":
        raise SystemExit(f"training stopped: {result}")
    image_qa_kinds.main(["--workdir", a.out, "--splits=test,train", "--limit=100"])


if __name__ == "__main__":
    main()
