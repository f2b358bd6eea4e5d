"""Held-out scoring of the colour probes (omni_jax/data/colour_probe.py), record by record.

`score(task, params, state, records, fmt)` builds every record of a held-out set exactly
once through the omni pipeline of the task's data config (the training layout), cuts each
sample after `<C_A>`, generates the reply greedily (omni_jax/tasks/omni_eval.py
`generate`) and returns, per record index, the normalised reply; `accuracy` compares them
with any per-record answers. Unlike omni_eval's sets, the records are given as a list
(registered as an in-memory source), so ablations are plain record edits: silent audio
(`silence`), images permuted across samples (`shuffle_images`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from omni_jax.data.audio_features import encode_wav

ROWS = 32  # held-out rows per embedding call (padded): one compiled shape for every set


def normalise(s: str) -> str:
    return " ".join(s.lower().replace(".", " ").replace(",", " ").split())


def _compiled(task, max_new: int, tok):
    """The task's jitted input embeddings and greedy text generation, built once per task
    (every held-out set and ablation then reuses the compilations of its shapes)."""
    import jax

    from omni_jax.generate.interleaved import GenerationConfig, SpecialIds, SpeechModels, make_generate
    from omni_jax.generate.sampling import AUDIO_RELEASE, SamplingParams

    cache = task.__dict__.setdefault("_probe_eval_fns", {})
    if max_new not in cache:
        m = task.model
        cfg = GenerationConfig(max_new_steps=max_new, text=SamplingParams(do_sample=False), audio=AUDIO_RELEASE,
                               speech=False, max_text_tokens_per_chunk=max_new, max_audio_frames_per_chunk=max_new)
        ids = SpecialIds.from_tokenizer(tok)
        gen = make_generate(SpeechModels(m.llm, getattr(m, "audio_embed", None), getattr(m, "audio_head", None)),
                            ids, cfg)
        embed = jax.jit(lambda p, s, b: m.input_embeddings(p, s, b)[0])
        cache[max_new] = (embed, gen, ids)
    return cache[max_new]


def score(task, params, state, records: Sequence[Mapping[str, Any]], fmt: str, *, name: str = "probe_eval",
          max_new: int = 6) -> dict[int, str]:
    """{record index: normalised greedy reply} for every record of `records` in format `fmt`."""
    import jax

    from omni_jax.data.sources import register_memory_source
    from omni_jax.generate.interleaved import split_rows, text_of
    from omni_jax.tasks.omni_eval import _left_pad, _pipeline

    register_memory_source(name, list(records))
    pipe = _pipeline(task, {"dataset": f"memory:{name}", "split": "test", "format": fmt, "weight": 1.0})
    plan, tok, fields = pipe.plans[0], pipe.tokenizer, set(task.fields)
    if len(plan.valid) != len(records):
        raise ValueError(f"{len(records) - len(plan.valid)} of {len(records)} held-out records were skipped: "
                         f"{plan.budget.summary()}; fix the records or config.data.shapes")
    n_rows = plan.rows_per_epoch()
    rows = list(range(n_rows)) + [0] * (-n_rows % ROWS)  # a multiple of ROWS rows: one compiled shape
    embed, gen, ids = _compiled(task, max_new, tok)
    c_a = tok.special("c_a")
    samples, order = [], []
    for lo in range(0, len(rows), ROWS):
        b = pipe.build_rows(rows[lo:lo + ROWS])
        if b["_errors"]:
            raise ValueError(f"building held-out rows failed: {b['_errors'][:3]}")
        batch = {k: jax.numpy.asarray(v) for k, v in b.items() if k in fields}
        emb = np.asarray(embed(params, state, batch))
        for i, r in enumerate(rows[lo:lo + ROWS]):
            if lo + i >= n_rows:
                break
            seg, toks = b["segment_ids"][i], b["tokens"][i]
            for s, (rec, _) in enumerate(plan.row(r), start=1):
                pos = np.nonzero(seg == s)[0]
                cut = int(pos[toks[pos] == c_a][-1])  # the prompt ends at the assistant turn's <C_A>
                samples.append({"prompt_embeds": emb[i, pos[0]:cut + 1], "prompt_ids": toks[pos[0]:cut + 1]})
                order.append(int(rec))
    if sorted(order) != list(range(len(records))):
        raise AssertionError(f"one epoch of the held-out rows holds records {sorted(order)[:8]}..., not each of the "
                             f"{len(records)} once")
    ids_, mask, emb = _left_pad(samples)
    out = split_rows(gen({k: params[k] for k in ("llm", "audio_embed", "audio_head") if k in params},
                         jax.numpy.asarray(ids_), jax.numpy.asarray(mask), jax.random.PRNGKey(0),
                         jax.numpy.asarray(emb, jax.numpy.float32)))
    return {rec: normalise(text_of(r.tokens, tok, ids)) for rec, r in zip(order, out)}


def accuracy(replies: Mapping[int, str], answers: Sequence[str]) -> float:
    """Exact-match rate of replies[i] against answers[i] (normalised), over every record."""
    return float(np.mean([replies[i] == normalise(a) for i, a in enumerate(answers)]))


def majority_rate(answers: Sequence[str]) -> float:
    """The share of the most frequent answer: what always giving one answer can reach."""
    _, counts = np.unique([normalise(a) for a in answers], return_counts=True)
    return float(counts.max() / len(answers))


def silence(records: Sequence[Mapping[str, Any]], key: str = "audio", seconds: float = 1.0) -> list[dict]:
    """The records with their audio replaced by `seconds` of digital silence (one length for all)."""
    wav = encode_wav(np.zeros(int(round(seconds * 16000)), np.float32))
    return [dict(r, **{key: wav}) for r in records]


def shuffle_images(records: Sequence[Mapping[str, Any]], seed: int = 0, key: str = "image",
                   label: str = "answer") -> tuple[list[dict], np.ndarray]:
    """The records with their images permuted across samples so that no record keeps an image of
    its own answer (record i shows the image of record perm[i], whose `label` differs);
    questions and answers stay. A model that reads the images then scores 0 against the
    original answers, one that ignores them at most the majority-answer rate. Returns
    (records, perm)."""
    rng = np.random.default_rng(seed)
    labels = [normalise(r[label]) for r in records]
    classes = sorted(set(labels))
    members = {c: [i for i, x in enumerate(labels) if x == c] for c in classes}
    if len(classes) < 2 or len({len(m) for m in members.values()}) != 1:
        raise ValueError(f"shuffle_images needs >= 2 answers with equally many records each; got "
                         f"{ {c: len(m) for c, m in members.items()} }")
    while True:  # a derangement of the answer classes (about 1 in e permutations is one)
        to = rng.permutation(len(classes))
        if not np.any(to == np.arange(len(classes))):
            break
    perm = np.zeros(len(records), np.int64)
    for c, t in zip(classes, to):
        perm[members[c]] = rng.permutation(members[classes[t]])
    return [dict(r, **{key: records[int(j)][key]}) for r, j in zip(records, perm)], perm
