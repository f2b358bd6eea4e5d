"""Can the tiny vision encoder learn the shape at all? A supervised ceiling for image QA (issue #14).

  python benchmarks/vision_shape_ceiling.py --workdir=runs/omni15_tiny --step=1140 [--steps=400 --lr=2e-3]

The main job's image QA answers 'what shape is C?' at chance while colour, size and count are
learnt (benchmarks/image_qa_kinds.py). This separates "the encoder cannot" from "the training
signal does not teach it": it takes the run's NaViT + bridge at `step` (1140 = before
image_text_1: the encoder still at its random initialisation) and trains them, with a linear head
on the mean | max (`--pool`) of the picture's LLM-width vision tokens, on the shape of the embedded image
set's one-shape 56 x 56 pictures (one layout: 16 patches, 4 tokens) alone, AdamW at `lr`,
batches of 32. Prints held-out and train accuracy every 100 steps (chance 1/6). Nothing is
written back to the run.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/image_qa_kinds.py

FIELDS = ("vision_patches", "vision_positions", "vision_segment_ids")


def pictures(runner, split: str, count: int):
    """The one-shape 56 x 56 pictures among the first `count` records: (batch fields, shape labels)."""
    import numpy as np

    from image_qa_kinds import one_shape, the_shape
    from omni_jax.data import default_dataset
    from omni_jax.data.text_corpus import SHAPES
    from omni_jax.generate.omni_infer import Prompt

    rows, labels = [], []
    for n, (_, ex) in enumerate(default_dataset.generate("images", split)):
        if n == count:
            break
        if not one_shape(ex):
            continue
        b = runner.prompt_batch(Prompt(text="x", images=[ex["image"]]), speech=False)
        if (b["vision_segment_ids"] > 0).sum() != 16:  # 84 x 84 pictures: another layout
            continue
        rows.append({k: b[k][0] for k in FIELDS})
        labels.append(SHAPES.index(the_shape(ex)[2]))
    return {k: np.stack([r[k] for r in rows]) for k in FIELDS}, np.array(labels)


def train_encoder(runner, *, steps: int, lr: float = 2e-3, pool: str = "mean,max", report_every: int = 100):
    """Trains the run's NaViT + bridge (and a linear head on the pooled tokens) on the shape label of
    the one-shape 56 x 56 train pictures; prints held-out / train accuracy every `report_every`
    steps and returns {"visual", "visual_bridge"} (the rest of the run's params untouched)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    model = runner.task.model
    (x_tr, y_tr), (x_te, y_te) = pictures(runner, "train", 1200), pictures(runner, "test", 100)
    hidden = runner.config.model.llm.hidden_size
    params = {"visual": runner.params["visual"], "visual_bridge": runner.params["visual_bridge"],
              "head": {"w": 0.01 * jax.random.normal(jax.random.PRNGKey(0), (len(pool.split(",")) * hidden, 6)),
                       "b": jnp.zeros(6)}}

    def logits(p, b):
        vt = model.vision_tokens(p, *(b[k] for k in FIELDS))
        pools = {"mean": vt.mean(1), "max": vt.max(1)}  # one layout: every row has its 4 tokens
        pooled = jnp.concatenate([pools[k] for k in pool.split(",")], -1)
        return pooled @ p["head"]["w"] + p["head"]["b"]

    opt = optax.adamw(lr, weight_decay=0.0)
    state = opt.init(params)

    @jax.jit
    def step(p, state, b, y):
        loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(logits(q, b), y).mean()  # noqa: E731
        g = jax.grad(loss)(p)
        u, state = opt.update(g, state, p)
        return optax.apply_updates(p, u), state

    predict = jax.jit(lambda p, b: logits(p, b).argmax(-1))
    acc = lambda p, x, y: float(np.mean(np.asarray(predict(p, x)) == y))  # noqa: E731
    print(f"one-shape 56 x 56 pictures: {len(y_tr)} train / {len(y_te)} test; shape accuracy, chance {1 / 6:.2f}")
    rng = np.random.default_rng(0)
    for i in range(steps + 1):
        if i % report_every == 0 or i == steps:
            print(f"  step {i}: held-out {acc(params, x_te, y_te):.2f}, train {acc(params, x_tr, y_tr):.2f}", flush=True)
        if i < steps:
            idx = rng.choice(len(y_tr), 32)
            params, state = step(params, state, {k: v[idx] for k, v in x_tr.items()}, y_tr[idx])
    return {"visual": params["visual"], "visual_bridge": params["visual_bridge"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a trained omni_jax 1.5 workdir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--pool", default="mean,max", choices=("mean,max", "mean"),
                   help="how the head pools the 4 tokens (an attention read is a weighted mean)")
    a = p.parse_args(argv)

    from omni_jax.generate.omni_infer import OmniRunner

    train_encoder(OmniRunner.load(a.workdir, step=a.step), steps=a.steps, lr=a.lr, pool=a.pool)


if __name__ == "__main__":
    main()
