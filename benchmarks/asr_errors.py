"""ASR errors per word class, train split next to test split: what does a trained omni run not hear? (issue #14)

  python benchmarks/asr_errors.py --workdir=runs/omni15_tiny [--splits=test,train --limit=40 --step=N]

The embedded speech set speaks one of three sentence templates (omni_jax/data/default_dataset.py
`_utterance`: "a <size> <colour> <shape>.", "there are <number> <colour> <shape>s.", "the <colour>
<shape> is <relation> the <colour> <shape>.") in one of 44 voices of the built-in synthesiser. The
main job's evaluation reports one CER over the test split; this transcribes the first `limit` clips
of each split with the evaluation's prompt (OmniRunner, greedy) and prints, per split, the CER and
WER, how often the reply has the reference's template (its words outside the classes below, in
order), and the accuracy of each reference word by class (colour, shape, number, size, relation;
a word counts as heard when jiwer's word alignment of reply to reference marks it equal). A split
heard well in train and badly in test is not generalised (too few clips or voices); badly in both,
not learnt. Test clips whose transcript also occurs in the train split are counted apart.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def word_class(word: str) -> str:
    from omni_jax.data.default_dataset import plural
    from omni_jax.data.text_corpus import COLOURS, NUMBER_WORDS, SHAPES, SIZES

    w = word.strip(".")
    if w in COLOURS:
        return "colour"
    if w in SHAPES or w in {plural(s) for s in SHAPES}:
        return "shape"
    if w in NUMBER_WORDS:
        return "number"
    if w in SIZES:
        return "size"
    if w in ("above", "below", "next", "to"):
        return "relation"
    return "template"


def template(sentence: str) -> tuple[str, ...]:
    """The sentence with every class word replaced by its class."""
    return tuple(w if word_class(w) == "template" else word_class(w) for w in sentence.replace(".", " ").split())


def heard_words(hyp: str, ref: str) -> list[tuple[str, bool]]:
    """(reference word, heard) for every reference word, by jiwer's word alignment."""
    import jiwer

    norm = lambda s: " ".join(s.lower().replace(".", " ").split()) or "-"
    out = jiwer.process_words(norm(ref), norm(hyp))
    words = out.references[0]
    ok = [False] * len(words)
    for chunk in out.alignments[0]:
        if chunk.type == "equal":
            for i in range(chunk.ref_start_idx, chunk.ref_end_idx):
                ok[i] = True
    return list(zip(words, ok))


def transcripts(runner, split: str, limit: int) -> list[tuple[str, str]]:
    """(reference, reply) for the first `limit` clips of the speech split: the evaluation's first
    ASR prompt, greedy, up to 64 tokens."""
    from omni_jax.data import default_dataset
    from omni_jax.data.formats import DEFAULT_PROMPTS
    from omni_jax.generate.omni_infer import Prompt
    from omni_jax.generate.sampling import SamplingParams

    out = []
    for n, (_, ex) in enumerate(default_dataset.generate("speech", split)):
        if n == limit:
            break
        hyp = runner.respond(Prompt(text=DEFAULT_PROMPTS["asr"][0], audio=[ex["audio"]]), max_new_tokens=64,
                             text=SamplingParams(do_sample=False)).text.strip()
        out.append((ex["transcript"], hyp))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a trained omni_jax omni workdir (1.5 or v1)")
    p.add_argument("--splits", default="test,train")
    p.add_argument("--limit", type=int, default=40, help="clips per split (the test split has 40)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    a = p.parse_args(argv)

    from omni_jax.data import default_dataset
    from omni_jax.generate.omni_infer import OmniRunner
    from omni_jax.tasks.omni_eval import char_error_rate, word_error_rate

    runner = OmniRunner.load(a.workdir, step=a.step)
    train_texts = {ex["transcript"] for _, ex in default_dataset.generate("speech", "train")}
    splits = a.splits.split(",")
    stats = {s: collections.defaultdict(lambda: [0, 0]) for s in splits}
    cer, wer, examples = collections.defaultdict(list), collections.defaultdict(list), {}
    confusions = collections.Counter()
    for split in splits:
        for ref, hyp in transcripts(runner, split, a.limit):
            seen = split != "train" and ref in train_texts
            key = f"{split} (transcript also in train)" if seen else split
            cer[key].append(char_error_rate(hyp, ref))
            wer[key].append(word_error_rate(hyp, ref))
            examples.setdefault(key, (ref, hyp))
            st = stats[split]
            st["sentence"][0] += template(hyp) == template(ref)
            st["sentence"][1] += 1
            pairs = heard_words(hyp, ref)
            for (w, ok) in pairs:
                st[word_class(w)][0] += ok
                st[word_class(w)][1] += 1
            if split != "train" and template(hyp) == template(ref):  # word-for-word confusions
                for r, h in zip(ref.replace(".", " ").split(), hyp.replace(".", " ").split()):
                    if r != h and word_class(r) in ("colour", "shape", "number"):
                        confusions[(r, h)] += 1
    import numpy as np

    print("| split | clips | CER | WER | example (reference -> reply) |")
    print("|---|---|---|---|---|")
    for key in cer:
        ref, hyp = examples[key]
        print(f"| {key} | {len(cer[key])} | {np.mean(cer[key]):.2f} | {np.mean(wer[key]):.2f} | {ref!r} -> {hyp!r} |")
    print()
    print("| reference words heard | " + " | ".join(splits) + " |")
    print("|---|" + "---|" * len(splits))
    for cls in ("sentence", "template", "colour", "shape", "number", "size", "relation"):
        cells = []
        for s in splits:
            r, t = stats[s][cls]
            cells.append(f"{r}/{t} = {r / max(t, 1):.2f}")
        label = {"sentence": "sentence template right", "template": "template words"}.get(cls, f"{cls} words")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if confusions:
        print("confusions where the template is right (reference -> reply):",
              ", ".join(f"{r} -> {h} x{c}" for (r, h), c in confusions.most_common(10)))


if __name__ == "__main__":
    main()
