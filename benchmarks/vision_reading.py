"""Does the LLM read the picture? Three measurements per checkpoint of a 1.5 run (issue #14).

  python benchmarks/vision_reading.py --workdir=runs/omni15_tiny --steps=1140,1180,1330,1780

benchmarks/image_qa_kinds.py shows that a linear probe reads a picture's colour from its vision
tokens while the answers stay wrong. This asks where between the tokens and the answer it is lost,
on the embedded image set's one-shape pictures (omni_jax/data/default_dataset.py `_scene`):

* vision-token geometry: the LLM's first RMSNorm sees each token scaled to the same norm; after
  that scaling, how much of a token is the direction common to all pictures (`common`, the norm of
  the mean token over sqrt(hidden): 1 = every token the same direction) and how much differs by
  the shape's colour (`colour`, the rms distance of the per-colour mean tokens from the overall
  mean, over sqrt(hidden)); and the raw token norm next to the text embeddings' norm;
* teacher-forced accuracy (rows built by the training formats, one sample per row, greedy
  argmax): the first character of the colour word in a caption ("it is a big r|ed circle") and
  the first answer character per question kind after its article ('a |cross.'; the byte tokenizer
  makes it one character: 'b' for both blue and black);
* picture swap: the colour question asked about another picture of the same size whose answer
  differs: how much the answer's distribution moves (max |delta logit|, and p(true character)
  with the real vs the swapped picture).
"""

from __future__ import annotations

import argparse
import collections
import io
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/image_qa_kinds.py


class Reader:
    """A trained run at one step, and single-sample rows built by the training formats."""

    def __init__(self, workdir: str, step: int):
        import jax
        import numpy as np

        from configs.omni15 import pipeline
        from omni_jax.data.omni_pipeline import sample_context
        from omni_jax.generate.omni_infer import OmniRunner

        self.np = np
        self.runner = OmniRunner.load(workdir, step=step)
        self.shapes, self.ctx = sample_context(pipeline.get_config(), tts=False)
        self.task = self.runner.task
        self._hidden = jax.jit(self.task.model.hidden)
        self._tokens = jax.jit(self.task.model.vision_tokens)

    def rows(self, records, fmt: str):
        """(batch of len(records) rows, one sample each)."""
        import jax.numpy as jnp

        from omni_jax.data import formats
        from omni_jax.data.omni_pipeline import single_sample_rows

        samples = [formats.FORMATS[fmt].fn(r, self.ctx, self.np.random.default_rng(0), fmt) for r in records]
        out = single_sample_rows(samples, self.ctx, self.shapes)
        return out, {k: jnp.asarray(v) for k, v in out.items() if k in self.task.fields}

    def logits(self, records, fmt: str):
        """(host rows, logits (B, T, vocab)) of single-sample rows."""
        out, b = self.rows(records, fmt)
        h, _ = self._hidden(self.runner.params, self.runner.state, b)
        return out, self.np.asarray(h @ self.runner.params["llm"]["lm_head"]["kernel"])

    def vision_tokens(self, record):
        """The picture's LLM-width vision tokens."""
        from image_qa_kinds import picture_tokens

        return picture_tokens(self.runner, self._tokens, record["image"])[0]


def _colour(record) -> str:
    from image_qa_kinds import the_shape

    return the_shape(record)[1]


def geometry(r: Reader, records) -> dict:
    np = r.np
    from omni_jax.data.text_corpus import COLOURS

    toks = [r.vision_tokens(x) for x in records]
    normed = [t / np.sqrt((t ** 2).mean(-1, keepdims=True)) for t in toks]
    d = toks[0].shape[-1]
    per_image = np.stack([n.mean(0) for n in normed])
    colour = np.array([COLOURS.index(_colour(x)) for x in records])
    means = np.stack([per_image[colour == k].mean(0) for k in np.unique(colour)])
    emb = np.asarray(r.runner.params["llm"]["embed_tokens"]["embedding"])[1:256]
    return {"token norm": float(np.mean([np.linalg.norm(t, axis=-1).mean() for t in toks])),
            "text embedding norm": float(np.linalg.norm(emb, axis=-1).mean()),
            "common": float(np.linalg.norm(np.concatenate(normed).mean(0)) / np.sqrt(d)),
            "colour": float(np.sqrt(((means - per_image.mean(0)) ** 2).sum(-1).mean()) / np.sqrt(d))}


def teacher_forced(r: Reader, records) -> dict:
    from image_qa_kinds import kind

    np = r.np
    hits = collections.defaultdict(list)
    for i0 in range(0, len(records), 8):
        chunk = records[i0:i0 + 8]
        for fmt in ("caption", "image_qa"):
            out, lg = r.logits(chunk, fmt)
            for i, x in enumerate(chunk):
                trained = np.flatnonzero(out["loss_mask"][i] > 0)
                reply = r.ctx.tokenizer.decode([int(v) for v in out["targets"][i, trained]])
                if fmt == "caption":
                    t = trained[reply.index(" " + _colour(x) + " ", reply.index("it is a")) + 1]
                    assert r.ctx.tokenizer.decode([int(out["targets"][i, t])]) == _colour(x)[0], "one byte per character"
                else:  # the answer's first character after its article ('a cross.': 'c', not the 'a' every shape has)
                    t = trained[len(reply) - len(reply.removeprefix("an ").removeprefix("a "))]
                key = "caption colour" if fmt == "caption" else kind(x["question"])
                hits[key].append(int(lg[i, t].argmax()) == int(out["targets"][i, t]))
    return {k: (float(np.mean(v)), len(v)) for k, v in sorted(hits.items())}


def picture_swap(r: Reader, records) -> dict:
    np = r.np
    from PIL import Image

    size = {id(x): Image.open(io.BytesIO(x["image"])).size for x in records}
    asked = [x for x in records if x["question"].startswith("what colour")]
    pairs = [(a, dict(a, image=b["image"])) for a in asked for b in
             [next((b for b in asked if size[id(b)] == size[id(a)] and b["answer"] != a["answer"]), None)]
             if b is not None][:16]
    real, swapped = [], []
    for i0 in range(0, len(pairs), 8):
        for side, acc in ((0, real), (1, swapped)):
            out, lg = r.logits([p[side] for p in pairs[i0:i0 + 8]], "image_qa")
            for i in range(len(pairs[i0:i0 + 8])):
                t = np.flatnonzero(out["loss_mask"][i] > 0)[0]
                acc.append((lg[i, t], int(out["targets"][i, t])))
    prob = lambda lg, t: float(np.exp(lg[t] - lg.max()) / np.exp(lg - lg.max()).sum())
    return {"pairs": len(pairs),
            "max |delta logit|": float(np.mean([np.abs(a[0] - b[0]).max() for a, b in zip(real, swapped)])),
            "p(true) real": float(np.mean([prob(*a) for a in real])),
            "p(true) swapped": float(np.mean([prob(b[0], a[1]) for a, b in zip(real, swapped)]))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a trained omni_jax 1.5 workdir (configs/omni15/pipeline.py)")
    p.add_argument("--steps", default="", help="comma-separated checkpoint steps (default: the latest)")
    p.add_argument("--limit", type=int, default=200, help="train-split records read (one-shape pictures kept)")
    p.add_argument("--split", default="train")
    a = p.parse_args(argv)
    from image_qa_kinds import one_shape
    from omni_jax.convert.workdir import latest_step
    from omni_jax.data import default_dataset

    records = [x for _, x in itertools.islice(default_dataset.generate("images", a.split), a.limit) if one_shape(x)]
    steps = [int(s) for s in a.steps.split(",") if s] or [latest_step(a.workdir)]
    print(f"{len(records)} one-shape pictures of the {a.split} split; chance: colour 1/8 words, 7 first characters")
    for step in steps:
        r = Reader(a.workdir, step)
        g, tf, sw = geometry(r, records), teacher_forced(r, records), picture_swap(r, records)
        print(f"step {step}:")
        print("  vision tokens: " + ", ".join(f"{k} {v:.2f}" for k, v in g.items()))
        print("  teacher-forced first character: " + ", ".join(f"{k} {v:.2f} ({n})" for k, (v, n) in tf.items()))
        print(f"  picture swap ({sw['pairs']} colour questions): max |delta logit| {sw['max |delta logit|']:.2f}, "
              f"p(true) {sw['p(true) real']:.3f} real vs {sw['p(true) swapped']:.3f} swapped")


if __name__ == "__main__":
    main()
