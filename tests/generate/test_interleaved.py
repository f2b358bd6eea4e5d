"""omni_jax/generate/interleaved.py: KV-cached greedy text decoding equals transformers'
generate; the jitted interleaved text/speech loop equals a plainly written reference (full
forward passes without a cache, the full depth-8 head re-run per codebook like the release,
the demo's state machine written out step by step, tokens drawn through transformers' logits
processors) token for token and code for code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omni_jax import sharding as shd
from omni_jax.convert import qwen2 as qconv
from omni_jax.convert.mapping import import_params
from omni_jax.data.tokenizer import ByteTokenizer
from omni_jax.generate.interleaved import (GenerationConfig, SpecialIds, SpeechModels, left_pad, make_generate,
                                           split_rows, text_of)
from omni_jax.generate.sampling import SamplingParams
from omni_jax.models.audio_head import AudioEmbed, AudioHead, AudioHeadConfig
from omni_jax.models.qwen2 import Qwen2Config, Qwen2LM
from tests.reference_models import state_dict_numpy, tiny_hf_qwen2
from tests.speech_reference import random_params

TOK = ByteTokenizer(384)
IDS = SpecialIds.from_tokenizer(TOK)
LCFG = Qwen2Config(vocab_size=384, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                   intermediate_size=64)
HCFG = AudioHeadConfig(hidden_size=32, codebook_sizes=(12, 10, 8, 8, 8, 8, 8, 8), num_layers=1, head_dim=8)
MODELS = SpeechModels(Qwen2LM(LCFG), AudioEmbed(HCFG), AudioHead(HCFG))
GCFG = GenerationConfig(max_new_steps=48, max_text_tokens_per_chunk=6, max_audio_frames_per_chunk=5)


@pytest.fixture(scope="module")
def params():
    z = jnp.zeros((1, 4), jnp.int32)
    p = {"llm": random_params(MODELS.llm, z, z, z + 1, seed=0, scale=0.1),
         "audio_embed": random_params(MODELS.embed, jnp.zeros((1, 8), jnp.int32), seed=1, scale=0.1),
         "audio_head": random_params(MODELS.head, jnp.zeros((1, 32)), jnp.zeros((1, 8, 32)), seed=2, scale=0.1)}
    # make <audiogen_start> and eos likely enough that a short run switches modes several times
    w = np.asarray(p["llm"]["lm_head"]["kernel"]).copy()
    w[:, IDS.audiogen_start], w[:, IDS.eos] = 0.25, 0.2
    p["llm"]["lm_head"]["kernel"] = jnp.asarray(w)
    return p


# ----------------------------------------------------------------------------- reference


def _reference_sample(key, logits, seen, p: SamplingParams) -> np.ndarray:
    """One token per row through transformers' logits processors (repetition penalty over the
    row's seen tokens, temperature, top-k, top-p; the order of generate(do_sample=True)), then
    the categorical draw with the loop's key (jax.random.categorical over the batch)."""
    from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    logits, rows = np.asarray(logits, np.float32), []
    for r in range(logits.shape[0]):
        history = np.nonzero(np.asarray(seen[r]))[0]
        procs = LogitsProcessorList()
        if p.repetition_penalty != 1.0 and len(history):
            procs.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
        if p.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(p.temperature))
        if p.top_k:
            procs.append(TopKLogitsWarper(p.top_k))
        if p.top_p < 1.0:
            procs.append(TopPLogitsWarper(p.top_p))
        rows.append(procs(torch.tensor(history[None]), torch.tensor(logits[r:r + 1])).numpy()[0])
    scores = np.stack(rows)
    if not p.do_sample:
        return scores.argmax(-1).astype(np.int32)
    return np.asarray(_categorical(key, jnp.asarray(scores))).astype(np.int32)


_categorical = jax.jit(lambda key, scores: jax.random.categorical(key, scores, axis=-1))


def _reference(params, prompts, rng, cfg=GCFG):
    """The demo's loop, written out per row, full forwards (no KV cache), full-depth head."""
    llm, emb, head = MODELS.llm, MODELS.embed, MODELS.head
    b, depth, L = len(prompts), HCFG.depth, max(map(len, prompts)) + cfg.max_new_steps

    @jax.jit
    def last_state(items_x, n):  # items_x (1, L, D): hidden and logits at position n - 1
        seg = (jnp.arange(L) < n).astype(jnp.int32)[None]
        h, _ = llm.apply({"params": params["llm"]}, items_x, jnp.arange(L)[None], seg, method=Qwen2LM.hidden)
        last = jax.lax.dynamic_slice_in_dim(h, n - 1, 1, axis=1)
        return last[0, 0], llm.apply({"params": params["llm"]}, last, method=Qwen2LM.logits)[0, 0]

    tok_x = jax.jit(lambda t: llm.apply({"params": params["llm"]}, jnp.asarray([[t]]), method=Qwen2LM.embed)[0, 0])
    frame_x = jax.jit(lambda c: emb.apply({"params": params["audio_embed"]}, c))

    @jax.jit
    def head_logits(h0, codes):  # the release re-runs the whole depth sequence for every codebook
        ce = emb.apply({"params": params["audio_embed"]}, codes, method=AudioEmbed.per_codebook)
        return head.apply({"params": params["audio_head"]}, h0, ce)

    xs = [[tok_x(t) for t in p] for p in prompts]
    seen = np.zeros((b, LCFG.vocab_size), bool)
    for r, p in enumerate(prompts):
        seen[r, p] = True
    mode, final = ["text"] * b, [False] * b
    cc, frames, chunk = [0] * b, [0] * b, [-1] * b
    aseen = np.zeros((b, depth, max(HCFG.codebook_sizes) + 1), bool)
    emitted = [[] for _ in range(b)]
    chunks = [dict() for _ in range(b)]
    step = 0
    while step < cfg.max_new_steps and any(m != "done" for m in mode):
        key, k_text, k_audio = jax.random.split(jax.random.fold_in(rng, step), 3)
        hs, logits = [], []
        for r in range(b):
            n = len(xs[r])
            buf = jnp.zeros((1, L, LCFG.hidden_size)).at[0, :n].set(jnp.stack(xs[r]))
            h, lg = last_state(buf, n)
            hs.append(h), logits.append(lg)
        hs, logits = jnp.stack(hs), jnp.stack(logits)
        tok = _reference_sample(k_text, logits, seen, cfg.text)
        codes = np.zeros((b, depth), np.int32)
        if "audio" in mode:
            keys = jax.random.split(k_audio, depth)
            for i in range(depth):
                lg = head_logits(hs, jnp.asarray(codes))[i]
                if i > 0:
                    lg = lg[:, :-1]
                codes[:, i] = _reference_sample(keys[i], lg, aseen[:, i, :lg.shape[1]], cfg.audio)
        for r in range(b):
            feed = None
            if mode[r] == "text":
                cc[r] += 1
                t = int(tok[r])
                if t == IDS.eos:
                    if cc[r] > 1:  # the demo replaces eos by <audiogen_start> for a last audio chunk
                        feed, mode[r], final[r] = IDS.audiogen_start, "audio", True
                    else:
                        mode[r] = "done"
                        emitted[r].append(IDS.eos)
                elif t == IDS.audiogen_start or cc[r] >= cfg.max_text_tokens_per_chunk:
                    feed, mode[r] = IDS.audiogen_start, "audio"  # the 50th token is overwritten
                else:
                    feed = t
                if mode[r] == "audio":
                    chunk[r] += 1
                    frames[r], cc[r] = 0, 0
                    aseen[r] = False
            elif mode[r] == "audio":
                c = codes[r]
                if c[0] == HCFG.codebook_sizes[0]:
                    leave = True
                else:
                    chunks[r].setdefault(chunk[r], []).append(c.copy())
                    aseen[r, np.arange(depth), c] = True
                    frames[r] += 1
                    leave = frames[r] >= cfg.max_audio_frames_per_chunk
                if leave:
                    if final[r]:
                        mode[r] = "done"
                    else:
                        feed, mode[r], cc[r] = IDS.audiogen_end, "text", 0
                else:
                    emitted[r].append(IDS.audio_pad)
                    xs[r].append(frame_x(jnp.asarray(c)))
                    seen[r, IDS.audio_pad] = True
            if feed is not None:
                emitted[r].append(feed)
                xs[r].append(tok_x(feed))
                seen[r, feed] = True
        step += 1
    out = [[np.stack(c[k]) if k in c else np.zeros((0, depth), np.int32) for k in range(n + 1)]
           for c, n in zip(chunks, chunk)]
    return emitted, out, [m == "done" for m in mode]


def _segments(tokens):
    """<audio_pad> counts of the closed <audiogen_start> ... <audiogen_end> segments."""
    out, inside = [], False
    for t in tokens:
        if t == IDS.audiogen_start:
            inside, n = True, 0
        elif t == IDS.audio_pad and inside:
            n += 1
        elif t == IDS.audiogen_end and inside:
            inside = False
            out.append(n)
    return out


def test_interleaved_loop_equals_the_uncached_reference(params):
    prompts = [TOK.encode("hello there"), TOK.encode("hi")]
    ids, mask = left_pad(prompts)
    rng = jax.random.PRNGKey(1)
    out = make_generate(MODELS, IDS, GCFG)(params, ids, mask, rng)
    rows = split_rows(out)
    ref_tokens, ref_chunks, ref_done = _reference(params, prompts, rng)
    for r in range(2):
        assert rows[r].tokens == ref_tokens[r]
        assert len(rows[r].audio_chunks) == len(ref_chunks[r])
        for a, c in zip(rows[r].audio_chunks, ref_chunks[r]):
            assert np.array_equal(a, c)
        assert rows[r].finished == ref_done[r]
    # the run exercised every transition: the text cap, <audiogen_start>, the frame cap, the end code
    for r in rows:
        segments = _segments(r.tokens)
        assert len(segments) in (len(r.audio_chunks), len(r.audio_chunks) - 1)  # the last may be cut
        for pads, chunk in zip(segments, r.audio_chunks):
            capped = len(chunk) == GCFG.max_audio_frames_per_chunk
            assert pads == len(chunk) - capped  # fed frames; the frame at the cap is kept, not fed
        assert all((c[:, 1:] < np.array(HCFG.codebook_sizes[1:])).all() for c in r.audio_chunks if len(c))
    all_chunks = [c for r in rows for c in r.audio_chunks[: len(_segments(r.tokens))]]
    assert any(len(c) == GCFG.max_audio_frames_per_chunk for c in all_chunks)
    assert any(len(c) < GCFG.max_audio_frames_per_chunk for c in all_chunks)
    assert sum(len(r.audio_chunks) for r in rows) >= 4
    assert isinstance(text_of(rows[0].tokens, TOK, IDS), str)


def test_greedy_text_decoding_equals_transformers_generate():
    hf = tiny_hf_qwen2(seed=3)
    cfg = qconv.config_from_hf(hf.config.to_dict())
    llm = Qwen2LM(cfg)
    z = jnp.zeros((1, 4), jnp.int32)
    abstract = shd.unbox(jax.eval_shape(llm.init, jax.random.PRNGKey(0), z, z, z)["params"])
    lparams = import_params(state_dict_numpy(hf), qconv.rules(cfg, "hf"), abstract, ignore=qconv.IGNORE)
    hcfg = AudioHeadConfig(hidden_size=cfg.hidden_size, codebook_sizes=(4,) * 8, num_layers=1, head_dim=16)
    models = SpeechModels(llm, AudioEmbed(hcfg), AudioHead(hcfg))
    eos = 7
    ids = SpecialIds(eos=eos, audiogen_start=150, audiogen_end=151, audio_pad=152)
    greedy = SamplingParams(repetition_penalty=1.3, do_sample=False)
    gcfg = GenerationConfig(max_new_steps=10, text=greedy, speech=False)
    prompts = [[5, 9, 31, 2, 77, 14, 3], [44, 12, 90]]
    pid, pm = left_pad(prompts)
    out = make_generate(models, ids, gcfg)({"llm": lparams}, pid, pm, jax.random.PRNGKey(0))
    rows = split_rows(out)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(pid, dtype=torch.long), attention_mask=torch.tensor(pm), do_sample=False,
                          repetition_penalty=1.3, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    for r in range(2):
        want = ref[r, pid.shape[1]:].tolist()
        if eos in want:
            want = want[: want.index(eos) + 1]
        assert rows[r].tokens == want, (rows[r].tokens, want)
        assert rows[r].audio_chunks == []


def test_setup_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"outside the LLM vocabulary \(384\)"):
        make_generate(MODELS, SpecialIds(eos=5, audiogen_start=151700, audiogen_end=151701, audio_pad=151678), GCFG)
    wide = SpeechModels(MODELS.llm, AudioEmbed(AudioHeadConfig(hidden_size=64, head_dim=16)),
                        AudioHead(AudioHeadConfig(hidden_size=64, head_dim=16)))
    with pytest.raises(ValueError, match="must equal the LLM hidden_size"):
        make_generate(wide, IDS, GCFG)
    with pytest.raises(ValueError, match="must be >= 1"):
        make_generate(MODELS, IDS, GenerationConfig(max_new_steps=0))
