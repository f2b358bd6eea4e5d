"""Code-level ASR probe: do the audio tokenizer's RVQ codes carry the spoken words? (issue #14)

  python benchmarks/audio_code_probe.py --workdir=runs/omni15_tiny [--step=350,1000]

Baichuan-Omni-1.5 hears audio only as the frozen tokenizer's codes, so the LLM's ASR can be no
better than what the codes keep of the words. For each checkpoint step this encodes the embedded
dataset's speech clips (train and test splits, 1-5 s each, one chunk per clip: the training
pipeline's AudioItem features) with the run's tokenizer and fits a linear
(softmax) probe per word class (colour, shape, number word; utterances naming exactly one word of
the class) on three utterance features:

  continuous: the audio bridge's pre-quantisation features, mean over frames (what RVQ quantises);
  codebook 0: the histogram of the first codebook's codes (the coarse code);
  all codes:  the histograms of every codebook, concatenated.

It prints held-out accuracy (train accuracy in brackets) against the majority-class rate of the
test clips, and how many codes each codebook uses. A run whose tokenizer stage trained the optional
CTC head (`loss.ctc` > 0) also gets code-level ASR: that head's greedy transcript of each clip read
off its quantised codes, with CER / WER per split. Bag-of-codes features ignore order, so they
bound from below what a sequence model could read; a probe at chance says the codes lost the word.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CLASSES = ("colour", "shape", "number")


def clips(split: str, count: int) -> tuple[list[str], list[np.ndarray]]:
    """Transcripts and one (128, frames) log-mel per clip (one <= 30 s chunk) of the embedded speech subset."""
    from omni_jax.data import default_dataset, media
    from omni_jax.data.media_io import AudioItem

    texts, mels = [], []
    for _, ex in default_dataset.generate("speech", split):
        (feats,) = AudioItem(ex["audio"]).features(media.CHUNK_SECONDS * media.SAMPLE_RATE)
        texts.append(ex["transcript"])
        mels.append(feats)
        if len(texts) == count:
            break
    return texts, mels


def encode(runner, mels: list[np.ndarray], batch: int = 16) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per clip: bridge features (T, code_dim), codes (T, depth) and the summed codewords (T, code_dim)
    over its valid frames."""
    import jax
    import jax.numpy as jnp

    model = runner.task.model
    variables = model.tokenizer_variables(runner.params, runner.state)

    def features_and_codes(tok, mel, lengths):  # AudioTokenizer.encode, keeping its features
        z, zl = tok.features(mel, lengths)
        codes, total = tok.audio_bridge.quantize(z, zl)
        return z, codes, total, zl

    @jax.jit
    def run(mel, lengths):
        return model.tokenizer.apply(variables, mel, lengths, method=features_and_codes)

    frames = -(-max(m.shape[1] for m in mels) // 8) * 8  # one padded width: one compile
    feats, codes, totals = [], [], []
    for s in range(0, len(mels), batch):
        part = mels[s:s + batch]
        mel = np.zeros((batch, part[0].shape[0], frames), np.float32)
        lengths = np.zeros((batch,), np.int32)
        for i, m in enumerate(part):
            mel[i, :, :m.shape[1]], lengths[i] = m, m.shape[1]
        z, c, q, zl = jax.device_get(run(jnp.asarray(mel), jnp.asarray(lengths)))
        for i in range(len(part)):
            feats.append(z[i, :zl[i]])
            codes.append(c[i, :zl[i]])
            totals.append(q[i, :zl[i]])
    return feats, codes, totals


def ctc_transcripts(runner, head, totals: list[np.ndarray]) -> list[str] | None:
    """Greedy transcripts of the tokenizer stage's CTC head (`loss.ctc` > 0; the omni model does not
    load it, so it comes from the checkpoint) read off the quantised codes, i.e. code-level ASR with
    no LLM; None when the run has no such head."""
    if head is None:
        return None
    from omni_jax.tasks.audio_tokenizer import ctc_greedy

    kernel, bias = np.asarray(head["proj"]["kernel"], np.float32), np.asarray(head["proj"]["bias"], np.float32)
    vocab = runner.task.model_cfg.llm.vocab_size
    out = []
    for q in totals:
        ids = (q.astype(np.float32) @ kernel + bias).reshape(-1, vocab + 1).argmax(-1)  # blank = vocab
        out.append(runner.tokenizer.decode(ctc_greedy(ids, vocab)))
    return out


def word_labels(texts: list[str], vocab: tuple[str, ...]) -> np.ndarray:
    """Index of the one word of `vocab` an utterance names (plurals folded), -1 if none or several."""
    from omni_jax.data.default_dataset import singular

    out = []
    for t in texts:
        words = {singular(w) for w in t.rstrip(".?!").split()} & set(vocab)
        out.append(vocab.index(words.pop()) if len(words) == 1 else -1)
    return np.asarray(out)


def linear_probe(x_tr, y_tr, x_te, y_te, classes: int, steps: int = 1000, l2: float = 1e-2) -> tuple[float, float]:
    """Softmax regression on standardised features (full-batch gradient descent): (test, train) accuracy."""
    import jax
    import jax.numpy as jnp

    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = jnp.asarray((x_tr - mu) / sd), jnp.asarray((x_te - mu) / sd)

    def loss(p):
        logp = jax.nn.log_softmax(x_tr @ p[0] + p[1])
        return -jnp.mean(logp[jnp.arange(len(y_tr)), y_tr]) + l2 * jnp.sum(p[0] ** 2)

    grad = jax.jit(jax.grad(loss))
    p = (jnp.zeros((x_tr.shape[1], classes)), jnp.zeros((classes,)))
    for _ in range(steps):
        p = jax.tree.map(lambda a, g: a - 0.1 * g, p, grad(p))
    acc = lambda x, y: float(np.mean(np.asarray(jnp.argmax(x @ p[0] + p[1], -1)) == y))  # noqa: E731
    return acc(x_te, y_te), acc(x_tr, y_tr)


def utterance_features(feats, codes, sizes: list[int]) -> dict[str, np.ndarray]:
    hist = lambda c, j: np.bincount(c[:, j], minlength=sizes[j]) / len(c)  # noqa: E731
    return {"continuous": np.stack([f.mean(0) for f in feats]),
            "codebook 0": np.stack([hist(c, 0) for c in codes]),
            "all codes": np.stack([np.concatenate([hist(c, j) for j in range(len(sizes))]) for c in codes])}


def probe_step(workdir: str, step: int | None, n_train: int, n_test: int) -> None:
    from omni_jax.data.text_corpus import COLOURS, NUMBER_WORDS, SHAPES
    from omni_jax.generate.omni_infer import OmniRunner

    from omni_jax.convert.omni import restore_workdir

    runner = OmniRunner.load(workdir, step=step)
    ctc_head = restore_workdir(workdir, step, items=("params",))[0]["params"].get("audio_ctc_head")
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        texts, mels = clips(split, n)
        data[split] = (texts, *encode(runner, mels))
    for split, d in data.items():
        hyps = ctc_transcripts(runner, ctc_head, d[3])
        if hyps is not None:
            import jiwer

            print(f"code-level ASR through the tokenizer's CTC head ({split}, {len(hyps)} clips): "
                  f"CER {jiwer.cer(d[0], hyps):.3f}, WER {jiwer.wer(d[0], hyps):.3f}; "
                  f"e.g. {d[0][0]!r} -> {hyps[0]!r}")
    depth = data["train"][2][0].shape[1]
    sizes = [int(max(c[:, j].max() for s in data.values() for c in s[2])) + 1 for j in range(depth)]
    used = [len(set(np.concatenate([c[:, j] for c in data["train"][2]]).tolist())) for j in range(depth)]
    print(f"\nstep {step if step is not None else 'latest'}: {len(data['train'][0])} train / {len(data['test'][0])} "
          f"test clips; codes used per codebook (train): {used}")
    x = {s: utterance_features(d[1], d[2], sizes) for s, d in data.items()}
    print("| word | clips train / test | majority (test) | continuous | codebook 0 | all codes |")
    print("|---|---|---|---|---|---|")
    for name, vocab in zip(CLASSES, (COLOURS, SHAPES, NUMBER_WORDS)):
        y = {s: word_labels(d[0], tuple(vocab)) for s, d in data.items()}
        keep = {s: y[s] >= 0 for s in y}
        majority = np.bincount(y["test"][keep["test"]]).max() / keep["test"].sum()
        cells = []
        for kind in ("continuous", "codebook 0", "all codes"):
            te, tr = linear_probe(x["train"][kind][keep["train"]], y["train"][keep["train"]],
                                  x["test"][kind][keep["test"]], y["test"][keep["test"]], len(vocab))
            cells.append(f"{te:.2f} ({tr:.2f})")
        print(f"| {name} | {keep['train'].sum()} / {keep['test'].sum()} | {majority:.2f} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="an omni_jax 1.5 workdir (task omni)")
    p.add_argument("--step", default="", help="comma-separated checkpoint steps (default: the latest)")
    p.add_argument("--train", type=int, default=240, help="train clips (the embedded split has 240)")
    p.add_argument("--test", type=int, default=40, help="test clips (the embedded split has 40)")
    a = p.parse_args(argv)
    for step in [int(s) for s in a.step.split(",") if s] or [None]:
        probe_step(a.workdir, step, a.train, a.test)


if __name__ == "__main__":
    main()
