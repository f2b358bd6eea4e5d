"""Held-out evaluation of an omni model: image / video QA, ASR and spoken replies written to WAV.

For each evaluation set (omni_jax/data/stage_mixtures.py `evaluation_sets`, the test splits of
the embedded dataset, or your own) the omni pipeline builds rows exactly as in training; each
packed sample is cut after its last `<C_A>` (the assistant turn), its merged multimodal input
embeddings up to there are the prompt, and the LLM generates greedily with its KV cache
(omni_jax/generate/interleaved.py). The reference is the sample's own reply text.

  image_qa    exact-match accuracy of the answer
  video_qa    the same on the video test split (when the model has vision inputs)
  asr         exact match, character and word error rates of the transcript (jiwer)
  speech_qa   the spoken question answered in text + speech (interleaved generation); text
              exact match over the set's samples (as many as the other sets); the codes of the
              first SPOKEN_REPLIES (4) replies go through the audio tokenizer's decoder, the
              flow-matching decoder and the vocoder to `<workdir>/eval/speech_reply_<k>.wav`.
              Intelligibility: each reply waveform (24 kHz) is resampled to 16 kHz
              (omni_jax/data/resampling.py) and fed back through the model's own audio input
              path with the ASR prompt ("transcribe the speech."); the CER of that transcript
              against the reply's text (`intelligibility_cer`; against the reference answer too).
              Its control, `intelligibility_cer_shuffled`: the same ASR of each reply's samples in
              a random order (same length and loudness, no voice), so an ASR that answers with
              a likely sentence whatever it hears shows up as a control near the score.
              A second control, `intelligibility_cer_swapped`: each transcript against the texts of
              the other spoken replies whose text differs from its own (absent when every spoken
              reply says the same): an ASR that hears the voice scores clearly better against its
              own reply than against the others; one that writes the replies' shared template
              (or the one reply it expects) scores alike against both

`evaluate(..., final=True)` (the trainer's end-of-run call) also writes the report
(`<workdir>/eval/report.md`, PNG plots, TensorBoard image/audio summaries:
omni_jax/tasks/eval_report.py); `final=False` is the trainer's periodic evaluation
(`config.evaluate.every_steps`): fewer samples, speech replies generated and scored as text but
not synthesised, nothing written.
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


def swapped_control(replies: list[dict[str, Any]], spoken: list[int]) -> None:
    """Adds `intelligibility_cer_swapped` to each spoken reply (indices `spoken`, each with `heard`
    and `text`) that has another spoken reply with a different normalised text: the mean CER of its
    transcript against those other texts. What the transcript scores against a reply it was not
    made from; a voice is heard only where `intelligibility_cer` is clearly below it."""
    for k in spoken:
        own = _normalise(replies[k]["text"])
        others = [replies[j]["text"] for j in spoken if j != k and _normalise(replies[j]["text"]) != own]
        if others:
            replies[k]["intelligibility_cer_swapped"] = float(np.mean(
                [char_error_rate(replies[k]["heard"], t) for t in others]))


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


def _cached(task, key, make):
    """One jitted function per task and key: repeated evaluations of a run (the periodic ones) reuse
    its compilations for the shapes they have seen."""
    cache = task.__dict__.setdefault("_eval_jit_cache", {})
    if key not in cache:
        cache[key] = make()
    return cache[key]


def prompts_from_rows(task, params, state, batch: dict, tok, *, stop_at: str = "c_a") -> list[dict]:
    """Every packed sample of `batch` -> {prompt_embeds (P, D), prompt_ids, reference}.

    stop_at="c_a" (chat formats): the prompt runs to its last `<C_A>` (included), the reference is
    the reply after it (up to eos / `<audiogen_start>`). stop_at="audiogen_start" (the `tts`
    format): the prompt is the text before the first `<audiogen_start>` (excluded: the model must
    start the speech itself), and that text is the reference."""
    if stop_at not in ("c_a", "audiogen_start"):
        raise ValueError(f"stop_at={stop_at!r}; use 'c_a' (chat replies) or 'audiogen_start' (tts)")
    embeds, _ = _cached(task, "input_embeddings", lambda: jax.jit(
        lambda p, s, b: task.model.input_embeddings(p, s, b)))(params, state, batch)
    embeds = np.asarray(embeds)
    c_a, eos, gen = tok.special("c_a"), tok.special("eos"), tok.special("audiogen_start")
    out = []
    for r in range(batch["tokens"].shape[0]):
        seg, toks = np.asarray(batch["segment_ids"][r]), np.asarray(batch["tokens"][r])
        for s in range(1, int(seg.max()) + 1):
            pos = np.nonzero(seg == s)[0]
            starts = pos[toks[pos] == (c_a if stop_at == "c_a" else gen)]
            if not len(starts):
                continue
            if stop_at == "audiogen_start":
                cut = int(starts[0])
                ids = toks[pos[0]:cut]
                out.append({"prompt_embeds": embeds[r, pos[0]:cut], "prompt_ids": ids,
                            "reference": tok.decode([int(t) for t in ids]).strip()})
                continue
            cut = int(starts[-1])
            reply = [int(t) for t in toks[cut + 1: pos[-1] + 1]]
            for stop in (eos, gen):
                if stop in reply:
                    reply = reply[:reply.index(stop)]
            out.append({"prompt_embeds": embeds[r, pos[0]:cut + 1], "prompt_ids": toks[pos[0]:cut + 1],
                        "reference": tok.decode(reply)})
    return out


def collect(task, params, state, spec: dict, n: int, tok, *, stop_at: str = "c_a") -> list[dict]:
    """The first `n` prompts (`prompts_from_rows`) of the rows `spec` (one mixture component) builds."""
    pipe = _pipeline(task, spec)
    fields = set(task.fields)
    got, row = [], 0
    rows_per_batch = max(1, int(task.config.train.batch_size))
    while len(got) < n and row < 64 * n:
        b = pipe.build_rows(range(row, row + rows_per_batch))
        row += rows_per_batch
        batch = {k: jnp.asarray(v) for k, v in b.items() if k in fields}
        got += prompts_from_rows(task, params, state, batch, tok, stop_at=stop_at)
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
    special = SpecialIds.from_tokenizer(tok)
    fn = _cached(task, ("generate", cfg, special), lambda: make_generate(SpeechModels(m.llm, embed, head), special, cfg))
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


# spoken QA: every question's reply is generated in text + speech and its text scored; the speech of
# the first SPOKEN_REPLIES goes through the decoders to WAV and back through the model's ASR
SPOKEN_REPLIES = 4
ASR_PROMPT = "transcribe the speech."  # omni_jax/data/formats.py DEFAULT_PROMPTS["asr"][0]


def transcribe(task, params, state, waveforms: list[np.ndarray], sample_rate: int, tok, *,
               max_new: int) -> list[str]:
    """Greedy transcripts of `waveforms` (float32 at `sample_rate`) by the model's own audio input
    path: resampled to 16 kHz (omni_jax/data/resampling.py), then prompted exactly as an ASR sample
    of training (`chat_prompt`: the audio, then the ASR prompt, then `<C_A>`)."""
    from omni_jax.data import media, resampling
    from omni_jax.data.audio_features import encode_wav
    from omni_jax.generate.interleaved import text_of
    from omni_jax.generate.omni_infer import OmniRunner, Prompt

    if not waveforms:
        return []
    runner = OmniRunner(task.config, params, state)
    samples = [runner.prompt_embeddings(Prompt(text=ASR_PROMPT, audio=[encode_wav(
        resampling.resample(w, sample_rate, media.SAMPLE_RATE), media.SAMPLE_RATE)]), speech=False)
        for w in waveforms]
    rows, ids = generate(task, params, samples, tok, max_new=max_new, speech=False)
    return [text_of(r.tokens, tok, ids).strip() for r in rows]


def readable_prompt(prompt_ids, tok) -> str:
    """A prompt's text with each run of one placeholder token (image / frame / audio pads) shown once
    with its count, e.g. '<audio_pad>x150'."""
    import re

    text = tok.decode([int(t) for t in prompt_ids])
    return re.sub(r"(<[^<>\s]+>)\1+", lambda m: f"{m.group(1)}x{len(m.group(0)) // len(m.group(1))}", text)


def evaluate(task, params, state, workdir: str, *, final: bool = True, num_samples: int | None = None,
             step: int | None = None) -> dict[str, Any]:
    """The held-out evaluation (module docstring). final=True: `config.evaluate.num_samples` per
    set, WAV replies, their intelligibility, results.json and the report (eval_report.py);
    final=False: `num_samples` per set, text scores only, nothing written."""
    from omni_jax.data.stage_mixtures import evaluation_sets
    from omni_jax.generate.interleaved import text_of

    ev = task.config.evaluate
    n = int(num_samples if num_samples is not None else ev.num_samples)
    max_new = int(ev.max_new_tokens)
    sets = evaluation_sets(ev.get("dataset", "shapes"))
    tok = _pipeline(task, sets["image_qa"]).tokenizer
    from omni_jax.workdir import workdir_path  # the workdir may be gs://...: epath throughout

    out_dir = workdir_path(workdir) / "eval"
    if final:
        out_dir.mkdir(parents=True, exist_ok=True)
    params, state = jax.device_get(params), jax.device_get(state)
    results: dict[str, Any] = {}
    lines = [f"held-out evaluation ({n} samples per set):"]

    for name, metric in (("image_qa", "accuracy"), ("video_qa", "accuracy"), ("asr", "exact_match")):
        if name == "asr" and not task.shapes.max_audio_chunks or name != "asr" and not task.shapes.vision:
            continue
        samples = collect(task, params, state, sets[name], n, tok)
        if not samples:
            continue
        rows, ids = generate(task, params, samples, tok, max_new=max_new, speech=False)
        hyps = [text_of(r.tokens, tok, ids).strip() for r in rows]
        exact = [float(_normalise(h) == _normalise(s["reference"])) for h, s in zip(hyps, samples)]
        res = {metric: float(np.mean(exact)), "samples": len(samples), "examples": [
            {"prompt": readable_prompt(s["prompt_ids"], tok), "hypothesis": h, "reference": s["reference"]}
            for h, s in zip(hyps[:5], samples[:5])]}
        if name == "asr":
            pairs = list(zip(hyps, (s["reference"] for s in samples)))
            res["char_error_rate"] = float(np.mean([char_error_rate(h, r) for h, r in pairs]))
            res["word_error_rate"] = float(np.mean([word_error_rate(h, r) for h, r in pairs]))
        results[name] = res
        ex = res["examples"][0]
        extra = f", CER {res['char_error_rate']:.2f}, WER {res['word_error_rate']:.2f}" if name == "asr" else ""
        lines.append(f"  {name}: {metric} {res[metric]:.2f}{extra}  e.g. {ex['hypothesis']!r} (reference {ex['reference']!r})")

    if ev.get("speech_reply", True) and task.shapes.max_speech_chunks and task.shapes.max_audio_chunks:
        samples = collect(task, params, state, sets["speech_qa"], n, tok)
        rows, ids = generate(task, params, samples, tok, max_new=max_new * 4, speech=True)
        synth = synthesizer(task, params, state) if final else None
        replies, waves = [], []
        for k, (r, s) in enumerate(zip(rows, samples)):
            path = out_dir / f"speech_reply_{k}.wav"
            frames = int(sum(len(c) for c in r.audio_chunks))
            seconds = 0.0
            spoken = bool(frames) and final and k < SPOKEN_REPLIES
            if spoken:
                wav = synth.write_wav(path, r.audio_chunks, jax.random.PRNGKey(k))
                seconds = len(wav) / synth.sample_rate
                waves.append((k, wav))
            replies.append({"prompt": readable_prompt(s["prompt_ids"], tok), "text": text_of(r.tokens, tok, ids).strip(),
                            "reference": s["reference"], "frames": frames, "seconds": seconds,
                            "wav": os.fspath(path) if spoken else None})
        exact = [float(_normalise(x["text"]) == _normalise(x["reference"])) for x in replies]
        results["speech_qa"] = {"text_exact_match": float(np.mean(exact)) if exact else 0.0, "samples": len(replies),
                                "replies": replies}
        if waves:  # intelligibility: the model's own ASR of its spoken replies
            # the control: each reply's own samples in random order (its loudness and length, no voice).
            # What the ASR's prior alone scores against the reply text: a voice is heard only where
            # intelligibility_cer is clearly below this
            shuffled = [np.random.default_rng(k).permutation(w) for k, w in waves]
            heard = transcribe(task, params, state, [w for _, w in waves] + shuffled, synth.sample_rate, tok,
                               max_new=max_new)
            for (k, _), h, hs in zip(waves, heard[:len(waves)], heard[len(waves):]):
                x = replies[k]
                x.update(heard=h, intelligibility_cer=char_error_rate(h, x["text"]),
                         heard_cer_vs_reference=char_error_rate(h, x["reference"]),
                         heard_shuffled=hs, intelligibility_cer_shuffled=char_error_rate(hs, x["text"]))
            swapped_control(replies, [k for k, _ in waves])
            for key in ("intelligibility_cer", "heard_cer_vs_reference", "intelligibility_cer_shuffled"):
                results["speech_qa"][key] = float(np.mean([replies[k][key] for k, _ in waves]))
            swapped = [replies[k]["intelligibility_cer_swapped"] for k, _ in waves
                       if "intelligibility_cer_swapped" in replies[k]]
            if swapped:  # the mean over the replies that have another reply text to be compared with
                results["speech_qa"]["intelligibility_cer_swapped"] = float(np.mean(swapped))
                results["speech_qa"]["swapped_replies"] = len(swapped)
            results["speech_qa"]["spoken_replies"] = len(waves)
        first = next((x for x in replies if x["wav"]), replies[0] if replies else None)
        if first:
            heard = (f"; heard back as {first['heard']!r} (intelligibility CER "
                     f"{results['speech_qa']['intelligibility_cer']:.2f} over {len(waves)} replies)") if waves else ""
            lines.append(f"  speech_qa: text exact match {results['speech_qa']['text_exact_match']:.2f}; reply "
                         f"{first['text']!r} + {first['seconds']:.2f} s of speech -> {first['wav']}{heard}")
    summary = "\n".join(lines)
    if not final:
        results["summary"] = summary
        return results
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(summary)
    log.info(summary)
    results["summary"] = summary
    if jax.process_index() == 0:
        from omni_jax.tasks import eval_report

        results["report"] = os.fspath(eval_report.write_report(task, workdir, results, step=step))
    return results


def scalars(results: dict[str, Any]) -> dict[str, float]:
    """The numbers of an evaluation as flat `eval/<set>/<metric>` scalars (metrics JSONL, TensorBoard)."""
    out = {}
    for name, res in results.items():
        if isinstance(res, dict):
            for k, v in res.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"eval/{name}/{k}"] = float(v)
    return out
