"""How learnable is the embedded speech? A small CTC recogniser on its log-mels (issue #14).

  python benchmarks/speech_ctc_baseline.py [--train_clips=240,1200] [--stride=2,4] [--steps=1500]

The main job's ASR (1.5: frozen tokenizer codes -> LLM; v1: Whisper encoder -> Conv-GMLP -> LLM)
stays far from its CER target. This script asks the question under it, with no LLM and no
tokenizer in the way: given the embedded speech subset (omni_jax/data/default_dataset.py `speech`,
the built-in synthesiser, 44 voices) and the release's log-mel features, how well does a plain
speech recogniser of about the main job's size learn to transcribe it, and from how many clips?

The recogniser: two 1-D convolutions over the 100 Hz log-mel frames (the second with `--stride`,
so 2 -> 50 ms frames, 8 -> the tokenizer's 80 ms = 12.5 Hz), a bidirectional transformer encoder
(d 128, 2 layers, 4 heads, the tiny LLM's width) and a per-frame softmax over the transcript's
characters plus the CTC blank; optax.ctc_loss, Adam, greedy decoding. It prints held-out and
training CER / WER / exact match and content-word accuracy (the colour, shape and number words,
scored as benchmarks/asr_errors.py scores them).
`--train_clips=N` reads the first N clips of the speech generator's train stream (the embedded
split held 240 before the dataset's version 1.1.0 and 2400 since; its first 240 are the same);
the test clips are the test split's 40, whatever the train size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(split: str, count: int) -> tuple[list[str], list[np.ndarray]]:
    """Transcripts and (frames, 128) log-mels of the first `count` clips of the speech generator's split."""
    from omni_jax.data import default_dataset, media
    from omni_jax.data.media_io import AudioItem

    texts, mels = [], []
    for _, ex in default_dataset.speech(split, count):
        (feats,) = AudioItem(ex["audio"]).features(media.CHUNK_SECONDS * media.SAMPLE_RATE)
        texts.append(ex["transcript"])
        mels.append(feats.T.astype(np.float32))
    return texts, mels


def char_labels(texts: list[str], chars: str) -> tuple[np.ndarray, np.ndarray]:
    """CTC labels (N, L): each transcript's characters as 1 + their index in `chars` (0 = blank),
    and their padding (N, L) (1 = pad)."""
    n_lab = max(len(s) for s in texts)
    lab = np.zeros((len(texts), n_lab), np.int32)
    lab_pad = np.ones((len(texts), n_lab), np.float32)
    for i, s in enumerate(texts):
        lab[i, :len(s)], lab_pad[i, :len(s)] = [chars.index(c) + 1 for c in s], 0.0
    return lab, lab_pad


def batchify(texts, mels, chars: str, stride: int):
    """Padded arrays: mel (N, T, 128), its padding (N, T), labels (N, L), their padding (N, L)."""
    t = -(-max(len(m) for m in mels) // stride) * stride
    mel = np.zeros((len(mels), t, mels[0].shape[1]), np.float32)
    mel_pad = np.ones((len(mels), t), np.float32)
    for i, m in enumerate(mels):
        mel[i, :len(m)], mel_pad[i, :len(m)] = m, 0.0
    return (mel, mel_pad, *char_labels(texts, chars))


def make_model(vocab: int, stride: int, d: int = 128, layers: int = 2, heads: int = 4):
    import flax.linen as nn
    import jax.numpy as jnp

    class Recogniser(nn.Module):
        @nn.compact
        def __call__(self, mel, mel_pad):
            x = nn.gelu(nn.Conv(d, (3,))(mel))
            x = nn.gelu(nn.Conv(d, (3,), strides=(stride,))(x))
            pad = mel_pad[:, ::stride][:, :x.shape[1]]
            pos = np.arange(x.shape[1])[:, None] / (10000 ** (np.arange(0, d, 2)[None] / d))
            x = x + jnp.asarray(np.concatenate([np.sin(pos), np.cos(pos)], -1), x.dtype)
            mask = nn.make_attention_mask(pad == 0, pad == 0)
            for _ in range(layers):
                x = x + nn.SelfAttention(num_heads=heads)(nn.LayerNorm()(x), mask=mask)
                x = x + nn.Dense(d)(nn.gelu(nn.Dense(4 * d)(nn.LayerNorm()(x))))
            return nn.Dense(vocab)(nn.LayerNorm()(x)), pad

    return Recogniser()


def greedy(logits: np.ndarray, pad: np.ndarray, chars: str) -> list[str]:
    from omni_jax.tasks.audio_tokenizer import ctc_greedy

    return ["".join(chars[i - 1] for i in ctc_greedy(lg[p == 0].argmax(-1), 0)) for lg, p in zip(logits, pad)]


def content_accuracy(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Share of the reference's colour / shape / number words that the hypothesis has, by jiwer's
    word alignment (benchmarks/asr_errors.py, so the numbers compare with its tables)."""
    from asr_errors import heard_words, word_class

    classes = ("colour", "shape", "number")
    hit, total = dict.fromkeys(classes, 0), dict.fromkeys(classes, 0)
    for r, h in zip(refs, hyps):
        for w, ok in heard_words(h, r):
            if word_class(w) in classes:
                total[word_class(w)] += 1
                hit[word_class(w)] += ok
    return {k: hit[k] / max(total[k], 1) for k in classes}


def fit(loss_fn, params, arrays, steps: int, lr: float, batch: int, seed: int = 0, log=None):
    """`steps` AdamW steps (warm-up + cosine to lr / 20, gradient clip 1.0, weight decay 1e-2) of
    loss_fn(params, *batch) on random rows of `arrays` (drawn with default_rng(seed)). Returns the
    params, the loss every 100 steps and the seconds spent; log(step, loss, seconds) every 100 steps."""
    import jax
    import jax.numpy as jnp
    import optax

    sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10), steps, lr / 20)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=1e-2))
    state = opt.init(params)

    @jax.jit
    def step(p, s, *b):
        loss, g = jax.value_and_grad(loss_fn)(p, *b)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    n, rng = len(arrays[0]), np.random.default_rng(seed)
    t0, losses = time.time(), []
    for i in range(steps):
        idx = rng.choice(n, size=batch, replace=n < batch)
        params, state, loss = step(params, state, *(jnp.asarray(a[idx]) for a in arrays))
        if (i + 1) % 100 == 0:
            losses.append(float(loss))
            if log is not None:
                log(i + 1, losses[-1], time.time() - t0)
    return params, losses, time.time() - t0


def train_recogniser(texts: list[str], mels: list[np.ndarray], chars: str, stride: int, steps: int, batch: int,
                     lr: float, cache: str | None = None):
    """The recogniser (module docstring) trained on (texts, mels) with `fit`. Returns transcribe(mels)
    -> greedy transcripts (in chunks of 32 clips) and {feasible, train_s, loss_curve}. `cache`: a
    file of its trained parameters, read when it exists (no training), written after training."""
    import jax
    import jax.numpy as jnp
    import optax

    model = make_model(len(chars) + 1, stride)
    tr = batchify(texts, mels, chars, stride)
    frames = (tr[1] == 0).sum(1) // stride
    feasible = float(np.mean(frames >= (tr[3] == 0).sum(1)))
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(tr[0][:2]), jnp.asarray(tr[1][:2]))

    def loss_fn(p, mel, mel_pad, lab, lab_pad):
        logits, pad = model.apply(p, mel, mel_pad)
        per = optax.ctc_loss(logits, pad, lab, lab_pad)
        return jnp.sum(per) / jnp.sum(1 - lab_pad)  # nats per character

    if cache and os.path.exists(cache):
        from flax import serialization

        with open(cache, "rb") as f:
            params, losses, train_s = serialization.from_bytes(params, f.read()), [], 0.0
    else:
        params, losses, train_s = fit(loss_fn, params, tr, steps, lr, batch)
        if cache:
            from flax import serialization

            with open(cache, "wb") as f:
                f.write(serialization.to_bytes(params))
    apply = jax.jit(model.apply)

    def transcribe(clip_mels: list[np.ndarray]) -> list[str]:
        mel, mel_pad = batchify(["x"] * len(clip_mels), clip_mels, "x", stride)[:2]
        hyps = []
        for s in range(0, len(clip_mels), 32):
            logits, pad = apply(params, jnp.asarray(mel[s:s + 32]), jnp.asarray(mel_pad[s:s + 32]))
            hyps += greedy(np.asarray(logits), np.asarray(pad), chars)
        return hyps

    return transcribe, {"feasible": feasible, "train_s": train_s, "loss_curve": losses}


def run(train_clips: int, stride: int, steps: int, batch: int, lr: float, data) -> dict:
    import jiwer

    (tr_texts, tr_mels), (te_texts, te_mels) = data["train"], data["test"]
    tr_texts, tr_mels = tr_texts[:train_clips], tr_mels[:train_clips]
    chars = "".join(sorted(set("".join(tr_texts + te_texts))))
    transcribe, info = train_recogniser(tr_texts, tr_mels, chars, stride, steps, batch, lr)
    out = {"train_clips": len(tr_texts), "stride": stride, **info}
    for name, mels, texts in (("test", te_mels, te_texts), ("train", tr_mels, tr_texts)):
        k = min(len(texts), 80)
        hyps = transcribe(mels[:k])
        out[name] = dict(cer=jiwer.cer(texts[:k], hyps), wer=jiwer.wer(texts[:k], hyps),
                         exact=float(np.mean([h == r for h, r in zip(hyps, texts[:k])])),
                         words=content_accuracy(texts[:k], hyps), example=(texts[0], hyps[0]))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train_clips", default="240,1200", help="comma-separated train sizes")
    p.add_argument("--stride", default="2", help="comma-separated strides of the second convolution")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.train_clips.split(",")]
    t0 = time.time()
    data = {"train": load("train", max(sizes)), "test": load("test", 40)}
    print(f"synthesised and featurised {max(sizes)} train + 40 test clips in {time.time() - t0:.0f} s")
    print("| train clips | frame (ms) | clips CTC-feasible | train s | test CER / WER / exact | test colour / shape / "
          "number | train CER | train colour / shape / number | example (test) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        for stride in [int(s) for s in a.stride.split(",")]:
            r = run(n, stride, a.steps, a.batch, a.lr, data)
            te, tr = r["test"], r["train"]
            w = lambda d: " / ".join(f"{d[k]:.2f}" for k in ("colour", "shape", "number"))  # noqa: E731
            print(f"| {r['train_clips']} | {10 * stride} | {r['feasible']:.2f} | {r['train_s']:.0f} | "
                  f"{te['cer']:.2f} / {te['wer']:.2f} / {te['exact']:.2f} | {w(te['words'])} | {tr['cer']:.2f} | "
                  f"{w(tr['words'])} | {te['example'][0]!r} -> {te['example'][1]!r} |", flush=True)
            print("   loss (nats/char) every 100 steps:", " ".join(f"{x:.2f}" for x in r["loss_curve"]), flush=True)


if __name__ == "__main__":
    main()
