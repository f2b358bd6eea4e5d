"""Held-out evaluation of an omni model: image QA, ASR and a spoken reply written to WAV.

For each evaluation set (omni_jax/data/stage_mixtures.py `evaluation_sets`, the test splits of
the embedded dataset, or your own) the omni pipeline builds rows exactly as in training; each
packed sample is cut after its last `<C_A>` (the assistant turn), its merged multimodal input
embeddings up to there are the prompt, and the LLM generates greedily with its KV cache
(omni_jax/generate/interleaved.py). The reference is the sample's own reply text.

  image_qa    exact-match accuracy of the answer
  asr         exact match, character and word error rates of the transcript (jiwer)
  speech_qa   the spoken question answered in text + speech (interleaved generation); the
              codes go through the audio tokenizer's decoder, the flow-matching decoder and
              the vocoder to `<workdir>/eval/speech_reply_<k>.wav`; text exact match reported
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

log = logging.getLogger("omni_jax")


def _normalise(s: str) -> str:
    return " ".join(s.lower().replace(".", " ").replace(",", " ").split())


def char_error_rate(hyp: str, ref: str) -> float:
    """Character edit distance / reference characters, on normalised text (jiwer.cer)."""
    import jiwer

    return float(jiwer.cer(_normalise(ref), _normalise(hyp)))


def word_error_rate(hyp: str, ref: str) -> float:
    """Word edit distance / reference words, on normalised text (jiwer.wer)."""
    import jiwer

    return float(jiwer.wer(_normalise(ref), _normalise(hyp)))


def _pipeline(task, spec: dict):
    from omni_jax.data.omni_pipeline import OmniPipeline

    d = ml_collections.ConfigDict(task.config.data.to_dict())
    d.mixture = ml_collections.ConfigDict({"eval": spec})
    d.errors.max_fraction = 1.0  # evaluation reports what it could build; nothing stops it
    return OmniPipeline(task.config, data=d)


def prompts_from_rows(task, params, state, batch: dict, tok, *, stop_at: str = "c_a") -> list[dict]:
    """Every packed sample of `batch` -> {prompt_embeds (P, D), prompt_ids, reference}."""
    embeds, _ = jax.jit(lambda p, s, b: task.model.input_embeddings(p, s, b))(params, state, batch)
    embeds = np.asarray(embeds)
    c_a, eos, gen = tok.special("c_a"), tok.special("eos"), tok.special("audiogen_start")
    out = []
    for r in range(batch["tokens"].shape[0]):
        seg, toks = np.asarray(batch["segment_ids"][r]), np.asarray(batch["tokens"][r])
        for s in range(1, int(seg.max()) + 1):
            pos = np.nonzero(seg == s)[0]
            starts = pos[toks[pos] == c_a]
            if not len(starts):
                continue
            cut = int(starts[-1])
            reply = [int(t) for t in toks[cut + 1: pos[-1] + 1]]
            for stop in (eos, gen):
                if stop in reply:
                    reply = reply[:reply.index(stop)]
            out.append({"prompt_embeds": embeds[r, pos[0]:cut + 1], "prompt_ids": toks[pos[0]:cut + 1],
                        "reference": tok.decode(reply)})
    return out


def collect(task, params, state, spec: dict, n: int, tok) -> list[dict]:
    pipe = _pipeline(task, spec)
    fields = set(task.fields)
    got, row = [], 0
    rows_per_batch = max(1, int(task.config.train.batch_size))
    while len(got) < n and row < 64 * n:
        b = pipe.build_rows(range(row, row + rows_per_batch))
        row += rows_per_batch
        batch = {k: jnp.asarray(v) for k, v in b.items() if k in fields}
        got += prompts_from_rows(task, params, state, batch, tok)
    return got[:n]


def _left_pad(samples: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = max(len(s["prompt_ids"]) for s in samples)
    d = samples[0]["prompt_embeds"].shape[-1]
    ids = np.zeros((len(samples), p), np.int32)
    mask = np.zeros((len(samples), p), np.int32)
    emb = np.zeros((len(samples), p, d), np.float32)
    for i, s in enumerate(samples):
        k = len(s["prompt_ids"])
        ids[i, p - k:], mask[i, p - k:], emb[i, p - k:] = s["prompt_ids"], 1, s["prompt_embeds"]
    return ids, mask, emb


def generate(task, params, samples: list[dict], tok, *, max_new: int, speech: bool, seed: int = 0, text=None,
             chunked: bool = False):
    """Generation from merged prompts: greedy text unless `text` (SamplingParams) says otherwise;
    chunked=True keeps the released demo's chunk limits (50 text tokens / 500 audio frames),
    otherwise one chunk may use all `max_new` steps."""
    from omni_jax.generate.interleaved import GenerationConfig, SpecialIds, SpeechModels, make_generate, split_rows
    from omni_jax.generate.sampling import AUDIO_RELEASE, SamplingParams

    m = task.model
    text = text or SamplingParams(do_sample=False)
    limits = {} if chunked else dict(max_text_tokens_per_chunk=max_new, max_audio_frames_per_chunk=max_new)
    cfg = GenerationConfig(max_new_steps=max_new, text=text, audio=AUDIO_RELEASE, speech=speech, **limits)
    embed, head = getattr(m, "audio_embed", None), getattr(m, "audio_head", None)  # v1: text only
    fn = make_generate(SpeechModels(m.llm, embed, head), SpecialIds.from_tokenizer(tok), cfg)
    ids, mask, emb = _left_pad(samples)
    sub = {k: params[k] for k in ("llm", "audio_embed", "audio_head") if k in params}
    out = fn(sub, jnp.asarray(ids), jnp.asarray(mask), jax.random.PRNGKey(seed), jnp.asarray(emb, jnp.float32))
    return split_rows(out), SpecialIds.from_tokenizer(tok)


def synthesizer(task, params, state):
    """codes -> 24 kHz waveform through the tokenizer's decoder, flow matching and the vocoder."""
    from omni_jax.generate.synthesis import Synthesizer
    from omni_jax.models.audio_tokenizer import AudioTokenizer

    m = task.model
    tok_vars = m.tokenizer_variables(params, state)
    hidden = jax.jit(lambda v, c, n: m.tokenizer.apply(v, c, n, method=AudioTokenizer.hidden_states_before_dconv2))

    def codes_to_hidden(codes: np.ndarray):
        h, n = hidden(tok_vars, jnp.asarray(codes[None], jnp.int32), jnp.asarray([len(codes)], jnp.int32))
        return np.asarray(h[0, : int(n[0])])

    return Synthesizer(codes_to_hidden, m.flow_matching, params["flow_matching"], m.vocoder, params["vocoder"],
                       frames_per_code=task.model_cfg.audio.decoder.upsample1)


def evaluate(task, params, state, workdir: str) -> dict[str, Any]:
    from omni_jax.data.stage_mixtures import evaluation_sets
    from omni_jax.generate.interleaved import text_of

    ev = task.config.evaluate
    n, max_new = int(ev.num_samples), int(ev.max_new_tokens)
    sets = evaluation_sets(ev.get("dataset", "shapes"))
    tok = _pipeline(task, sets["image_qa"]).tokenizer
    from omni_jax.workdir import workdir_path  # the workdir may be gs://...: epath throughout

    out_dir = workdir_path(workdir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    params, state = jax.device_get(params), jax.device_get(state)
    results: dict[str, Any] = {}
    lines = [f"held-out evaluation ({n} samples per set):"]

    for name, metric in (("image_qa", "accuracy"), ("asr", "exact_match")):
        if name == "asr" and not task.shapes.max_audio_chunks or name == "image_qa" and not task.shapes.vision:
            continue
        samples = collect(task, params, state, sets[name], n, tok)
        rows, ids = generate(task, params, samples, tok, max_new=max_new, speech=False)
        hyps = [text_of(r.tokens, tok, ids).strip() for r in rows]
        exact = [float(_normalise(h) == _normalise(s["reference"])) for h, s in zip(hyps, samples)]
        res = {metric: float(np.mean(exact)), "examples": [
            {"hypothesis": h, "reference": s["reference"]} for h, s in zip(hyps[:5], samples[:5])]}
        if name == "asr":
            pairs = list(zip(hyps, (s["reference"] for s in samples)))
            res["char_error_rate"] = float(np.mean([char_error_rate(h, r) for h, r in pairs]))
            res["word_error_rate"] = float(np.mean([word_error_rate(h, r) for h, r in pairs]))
        results[name] = res
        ex = res["examples"][0]
        extra = f", CER {res['char_error_rate']:.2f}, WER {res['word_error_rate']:.2f}" if name == "asr" else ""
        lines.append(f"  {name}: {metric} {res[metric]:.2f}{extra}  e.g. {ex['hypothesis']!r} (reference {ex['reference']!r})")

    if ev.get("speech_reply", True) and task.shapes.max_speech_chunks and task.shapes.max_audio_chunks:
        samples = collect(task, params, state, sets["speech_qa"], min(n, 4), tok)
        rows, ids = generate(task, params, samples, tok, max_new=max_new * 4, speech=True)
        synth = synthesizer(task, params, state)
        replies = []
        for k, (r, s) in enumerate(zip(rows, samples)):
            path = out_dir / f"speech_reply_{k}.wav"
            frames = int(sum(len(c) for c in r.audio_chunks))
            seconds = 0.0
            if frames:
                wav = synth.write_wav(path, r.audio_chunks, jax.random.PRNGKey(k))
                seconds = len(wav) / synth.sample_rate
            replies.append({"text": text_of(r.tokens, tok, ids).strip(), "reference": s["reference"], "frames": frames,
                            "seconds": seconds, "wav": os.fspath(path) if frames else None})
        exact = [float(_normalise(x["text"]) == _normalise(x["reference"])) for x in replies]
        results["speech_qa"] = {"text_exact_match": float(np.mean(exact)) if exact else 0.0, "replies": replies}
        first = next((x for x in replies if x["wav"]), replies[0] if replies else None)
        if first:
            lines.append(f"  speech_qa: text exact match {results['speech_qa']['text_exact_match']:.2f}; reply "
                         f"{first['text']!r} + {first['seconds']:.2f} s of speech -> {first['wav']}")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    summary = "\n".join(lines)
    print(summary)
    log.info(summary)
    results["summary"] = summary
    return results
