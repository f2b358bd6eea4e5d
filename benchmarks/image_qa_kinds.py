"""Image QA accuracy per question kind: which visual skill does a trained omni run lack? (issue #14)

  python benchmarks/image_qa_kinds.py --workdir=runs/omni15_tiny [--splits=test,train --limit=100]

The embedded image set asks one of five kinds of question per picture (omni_jax/data/
default_dataset.py `_scene`): the colour of a named shape, the shape of a named colour, how many
shapes, big or small, and where one shape is relative to the other. The main job's evaluation
reports one accuracy over all of them; this asks the run (OmniRunner, greedy, the evaluation's
prompt) every question of the first `limit` records of each split and prints the accuracy per
kind (colour and shape words replaced by C and S), the same per kind on one-shape and on two-shape
pictures, and the most frequent colour confusions. Train-split
accuracy next to test-split accuracy separates not learnt (both low) from not generalised.
`--subset=videos` does the same for the video QA set (4 frames of one moving shape; `default_dataset.videos`):
where the shape moves, its colour, and which shape moves (motions replaced by M), prompted as
the evaluation's video_qa (frames, then the question).

`--probe` also asks whether the vision tokens hold what the answers lack: a linear softmax probe
(benchmarks/audio_code_probe.py `linear_probe`) of the colour and of the shape of one-shape
pictures from the bridge output (the LLM-width vision tokens of the picture pooled two ways: their
mean, and mean | max | min concatenated, which keeps more of a silhouette spread over 4-9 tokens),
against the same probe on the raw patches' mean, fitted on the one-shape pictures among the first
`--probe_train` train records and scored on the test split's one-shape pictures. With
`--subset=videos`, `--probe` asks the same of the motion (left / right / top / bottom; chance 0.25):
a probe of the direction from the video's LLM-width vision tokens kept in their order (temporal
group, row, column; the 56-pixel videos, whose 4 frames give 2 groups of 2 x 2 tokens), from their
mean | max | min (no position), from the difference of the second group's tokens and the first's,
and from the raw patches in order; fitted on the first `--probe_train` videos of the train stream
(the training split's records first, then unseen ones) and scored on 300 of the test stream.
`--step` reads any checkpoint of the run (e.g. a stage end) instead of the latest.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/audio_code_probe.py


def kind(question: str) -> str:
    from omni_jax.data.text_corpus import COLOURS, SHAPES

    q = re.sub(r"\b(" + "|".join(COLOURS) + r")\b", "C", question)
    return re.sub(r"\b(" + "|".join(SHAPES) + r")\b", "S", q)


def one_shape(record) -> bool:
    """Whether an embedded image record shows one shape (else two)."""
    return record["caption"].startswith("there is one shape. it is a ")


def the_shape(record) -> tuple[str, str, str]:
    """(size, colour, shape) of a one-shape record, from its caption ('... it is a big red circle. ...')."""
    size, colour, shape = record["caption"].split("it is a ")[1].split(".")[0].split()
    return size, colour, shape


def the_moving_shape(record) -> tuple[str, str, str, str]:
    """(size, colour, shape, direction) of an embedded video record, from its caption ('a big red
    circle moves to the left. ...')."""
    _, size, colour, shape, *_, move = record["caption"].split(".")[0].split()  # a {size} {colour} {shape} moves to the {move}
    return size, colour, shape, move


def picture_tokens(runner, tokens_fn, image):
    """(vision tokens (tokens, hidden), raw patches (patches, patch dim)) of one picture; see `media_tokens`."""
    from omni_jax.generate.omni_infer import Prompt

    return media_tokens(runner, tokens_fn, Prompt(text="x", images=[image]))


def media_tokens(runner, tokens_fn, prompt):
    """(vision tokens (tokens, hidden), raw patches (patches, patch dim)) of the picture or video of
    `prompt`, prompted as the runner prompts it, padding rows dropped (the media's patches are those
    with a segment id, its tokens the first quarter as many: the 2 x 2 merge; a video's in temporal
    group, row, column order); `tokens_fn` is the jitted `runner.task.model.vision_tokens`."""
    import jax.numpy as jnp
    import numpy as np

    b = runner.prompt_batch(prompt, speech=False)
    vt = tokens_fn(runner.params, *(jnp.asarray(b[k]) for k in ("vision_patches", "vision_positions",
                                                                "vision_segment_ids")))
    n = int((b["vision_segment_ids"][0] > 0).sum())
    return np.asarray(vt[0, :n // 4]), np.asarray(b["vision_patches"][0, :n])


def probe_vision_tokens(runner, n_train: int = 1200, n_test: int = 100) -> None:
    import jax
    import numpy as np

    from audio_code_probe import linear_probe
    from omni_jax.data import default_dataset
    from omni_jax.data.text_corpus import COLOURS, SHAPES

    tokens = jax.jit(runner.task.model.vision_tokens)

    def one_shape_pictures(split, count):
        feats, colour, shape = collections.defaultdict(list), [], []
        for n, (_, ex) in enumerate(default_dataset.generate("images", split)):
            if n == count:
                break
            if not one_shape(ex):
                continue
            vt, patches = picture_tokens(runner, tokens, ex["image"])
            feats["token mean"].append(vt.mean(0))
            feats["token mean|max|min"].append(np.concatenate([vt.mean(0), vt.max(0), vt.min(0)]))
            feats["raw patch mean"].append(patches.mean(0))
            _, c, s = the_shape(ex)
            colour.append(COLOURS.index(c))
            shape.append(SHAPES.index(s))
        return {k: np.stack(v) for k, v in feats.items()}, {"colour": np.array(colour), "shape": np.array(shape)}

    (x_tr, y_tr), (x_te, y_te) = one_shape_pictures("train", n_train), one_shape_pictures("test", n_test)
    print(f"linear probes on one-shape pictures ({len(y_tr['shape'])} train / {len(y_te['shape'])} test), "
          "held-out (train):")
    for name, k in (("colour", len(COLOURS)), ("shape", len(SHAPES))):
        cells = []
        for what in x_tr:
            a, b = linear_probe(x_tr[what], y_tr[name], x_te[what], y_te[name], k)
            cells.append(f"{what} {a:.2f} ({b:.2f})")
        print(f"  {name}: " + ", ".join(cells) + f"; chance {1 / k:.2f}")


def probe_video_motion(runner, n_train: int = 1200, n_test: int = 300, side: int = 56) -> None:
    import io

    import jax
    import numpy as np
    from PIL import Image

    from audio_code_probe import linear_probe
    from omni_jax.data import default_dataset
    from omni_jax.generate.omni_infer import Prompt

    moves = list(default_dataset._MOVES)
    tokens = jax.jit(runner.task.model.vision_tokens)

    def videos(split, count):
        feats, move = collections.defaultdict(list), []
        for _, ex in default_dataset.videos(split, count):
            if Image.open(io.BytesIO(ex["frames"][0])).size[0] != side:
                continue
            vt, patches = media_tokens(runner, tokens, Prompt(text="x", video_frames=list(ex["frames"]),
                                                              video_fps=float(ex["fps"])))
            half = len(vt) // 2
            feats["tokens in order"].append(vt.reshape(-1))
            feats["token mean|max|min"].append(np.concatenate([vt.mean(0), vt.max(0), vt.min(0)]))
            feats["second group - first"].append((vt[half:] - vt[:half]).reshape(-1))
            feats["raw patches in order"].append(patches.reshape(-1))
            move.append(moves.index(the_moving_shape(ex)[3]))
        return {k: np.stack(v) for k, v in feats.items()}, np.array(move)

    (x_tr, y_tr), (x_te, y_te) = videos("train", n_train), videos("test", n_test)
    print(f"linear probes of the motion on {side}-pixel videos ({len(y_tr)} train / {len(y_te)} test), "
          "held-out (train):")
    cells = []
    for what in x_tr:
        a, b = linear_probe(x_tr[what], y_tr, x_te[what], y_te, len(moves))
        cells.append(f"{what} {a:.2f} ({b:.2f})")
    print("  motion: " + ", ".join(cells) + f"; chance {1 / len(moves):.2f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a trained omni_jax omni workdir (1.5 or v1)")
    p.add_argument("--splits", default="test,train")
    p.add_argument("--limit", type=int, default=100, help="records per split (the test split has 100)")
    p.add_argument("--probe", action="store_true", help="also probe the vision tokens for colour and shape")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest), e.g. a stage end")
    p.add_argument("--probe_train", type=int, default=1200, help="train records read for the probes' fit")
    p.add_argument("--subset", default="images", choices=("images", "videos"), help="the QA set asked")
    a = p.parse_args(argv)

    from omni_jax.data import default_dataset
    from omni_jax.generate.omni_infer import OmniRunner, Prompt
    from omni_jax.generate.sampling import SamplingParams

    runner = OmniRunner.load(a.workdir, step=a.step)
    right = collections.defaultdict(lambda: [0, 0])
    confusions = collections.Counter()
    for split in a.splits.split(","):
        for n, (_, ex) in enumerate(default_dataset.generate(a.subset, split)):
            if n == a.limit:
                break
            if a.subset == "videos":
                prompt = Prompt(text=ex["question"], video_frames=list(ex["frames"]), video_fps=float(ex["fps"]))
                k, groups = re.sub(r"\b(left|right|top|bottom)\b", "M", kind(ex["question"])), ()
            else:
                prompt = Prompt(text=ex["question"], images=[ex["image"]])
                k, groups = kind(ex["question"]), ("one shape" if one_shape(ex) else "two shapes",)
            reply = runner.respond(prompt, max_new_tokens=24, text=SamplingParams(do_sample=False)).text.strip()
            ok = reply == ex["answer"]
            for key in [(k, split)] + [((k, g), split) for g in groups]:
                right[key][0] += ok
                right[key][1] += 1
            if not ok and k.startswith(("what colour", "where does")):
                confusions[(ex["answer"], reply)] += 1
    splits = a.splits.split(",")
    print("| question kind | " + " | ".join(splits) + " |")
    print("|---|" + "---|" * len(splits))
    for k in sorted({k for k, _ in right}, key=lambda k: (not isinstance(k, str), str(k))):
        cells = [f"{right[(k, s)][0]}/{right[(k, s)][1]} = {right[(k, s)][0] / max(right[(k, s)][1], 1):.2f}"
                 for s in splits]
        print(f"| {k if isinstance(k, str) else ', '.join(k)} | " + " | ".join(cells) + " |")
    print("colour / motion confusions (reference -> reply):", ", ".join(f"{r} -> {h} x{c}" for (r, h), c in confusions.most_common(8)))
    if a.probe and a.subset == "videos":
        probe_video_motion(runner, n_train=a.probe_train)
    elif a.probe:
        probe_vision_tokens(runner, n_train=a.probe_train)


if __name__ == "__main__":
    main()
