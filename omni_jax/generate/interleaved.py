"""KV-cached decoding of the LLM: text generation and the interleaved text/speech loop of
ARCHITECTURE.md 1.7 (the released demo's `generate_response` + `GenerationAudioTokens`).

One jitted `lax.while_loop`, static shapes: every step feeds ONE position per row into the
Qwen2 KV cache (`Qwen2LM.hidden(x, positions, segment_ids, cache, index)`), then samples from
the resulting hidden state. Per row, a small state machine:

  text   sample a token (text settings, repetition penalty over every token fed so far,
         prompt included). `<audiogen_start>` -> feed it, enter audio. After
         `max_text_tokens_per_chunk` sampled tokens the last one is REPLACED by
         `<audiogen_start>` (the demo overwrites it). eos: if the chunk produced text before
         it, feed `<audiogen_start>` for a last audio chunk, then stop; else stop.
  audio  the audio head samples codebooks 0..7 in order from the last hidden state (audio
         settings; the penalty sees this chunk's earlier codes of the same codebook; only
         codebook 0 may pick its end row). A frame is recorded and fed back as `<audio_pad>`
         whose input is the SUM of its 8 code embeddings. The end code, or
         `max_audio_frames_per_chunk` frames (the last one recorded, not fed), feed
         `<audiogen_end>` and return to text (or stop after the final chunk).

Rows run in lockstep (one cache index for the batch); finished rows feed padding (segment
id 0, attended by nobody). Prompts are LEFT padded: `prompt_mask` 0 marks padding, rotary
positions count real tokens only. Special ids come from the tokenizer by name
(`SpecialIds.from_tokenizer`). `speech=False` gives plain text generation (stop at eos).

Outputs (host): `GenerationOutput` arrays over the S generated steps and `split_rows` ->
per row the emitted token ids, the text, and the audio chunks (frames, 8) to synthesise.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.generate.sampling import AUDIO_RELEASE, TEXT_RELEASE, SamplingParams, mark_seen, sample
from omni_jax.models.audio_head import AudioEmbed, AudioHead, init_depth_cache
from omni_jax.models.qwen2 import Qwen2LM, init_kv_cache

Array = jax.Array
TEXT, AUDIO, DONE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    eos: int
    audiogen_start: int
    audiogen_end: int
    audio_pad: int

    @classmethod
    def from_tokenizer(cls, tok) -> "SpecialIds":
        return cls(eos=tok.special("eos"), audiogen_start=tok.special("audiogen_start"),
                   audiogen_end=tok.special("audiogen_end"), audio_pad=tok.special("audio_pad"))


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_new_steps: int = 1024  # static: LLM positions generated after the prompt
    max_text_tokens_per_chunk: int = 50
    max_audio_frames_per_chunk: int = 500
    text: SamplingParams = TEXT_RELEASE
    audio: SamplingParams = AUDIO_RELEASE
    speech: bool = True


@dataclasses.dataclass(frozen=True)
class SpeechModels:
    """The three modules the loop runs; params are {"llm", "audio_embed", "audio_head"}.
    Text-only generation (speech=False) may leave `embed` and `head` None (params {"llm"})."""

    llm: Qwen2LM
    embed: AudioEmbed | None = None
    head: AudioHead | None = None


class GenerationOutput(NamedTuple):
    tokens: Array  # (B, S) token emitted at each step (fed, or the final eos), -1 = nothing
    fed: Array  # (B, S) bool: the token (or frame, as <audio_pad>) entered the KV cache
    codes: Array  # (B, S, depth) the audio frame sampled at a step
    frame_valid: Array  # (B, S) bool: a frame was recorded at this step
    frame_chunk: Array  # (B, S) int: which audio chunk (0, 1, ...) the frame belongs to
    steps: Array  # () number of loop steps run
    finished: Array  # (B,) bool: the row reached its end (not cut by max_new_steps)
    num_chunks: Array  # (B,) int: audio chunks started (<audiogen_start> segments)


def _apply(module, params, *args, method=None):
    return module.apply({"params": params}, *args, method=method)


class _Dims(NamedTuple):
    """Static sizes of one generate call."""

    b: int  # rows
    p: int  # prompt length
    s_max: int  # generated steps
    depth: int  # codebooks (1 for a text-only model's dummy audio state)
    vmax: int  # rows of the largest code table, end code included
    end0: int  # codebook 0's end code


def _dims(models: SpeechModels, prompt_ids: Array, cfg: GenerationConfig) -> _Dims:
    hcfg = models.head.cfg if models.head is not None else None
    b, p = prompt_ids.shape
    # text-only models (no audio head, e.g. Baichuan-Omni v1) keep a one-codebook dummy audio state
    return _Dims(b, p, cfg.max_new_steps, hcfg.depth if hcfg else 1, max(hcfg.codebook_sizes) + 1 if hcfg else 1,
                 hcfg.codebook_sizes[0] if hcfg else 0)


def generate(models: SpeechModels, params: Any, prompt_ids: Array, prompt_mask: Array, rng: Array,
             ids: SpecialIds, cfg: GenerationConfig, prompt_embeds: Array | None = None) -> GenerationOutput:
    """Runs the loop (jit it with `make_generate`). prompt_ids / prompt_mask (B, P), left padded;
    prompt_embeds (B, P, D) optionally replaces the token embeddings (multimodal prompts).

    Steps: `_prefill` the prompt into the KV cache, `_initial_state`, then `_step` (sample, move
    every row's state machine, feed one position) until every row is done or `max_new_steps`."""
    d = _dims(models, prompt_ids, cfg)
    h_last, cache = _prefill(models, params, prompt_ids, prompt_mask, d, prompt_embeds)
    state = _initial_state(models, prompt_ids, prompt_mask, d, h_last, cache, rng)
    st = jax.lax.while_loop(lambda st: (st["step"] < d.s_max) & jnp.any(st["mode"] != DONE),
                            functools.partial(_step, models, params, ids, cfg, d), state)
    return GenerationOutput(st["out_tokens"], st["out_fed"], st["out_codes"], st["out_valid"], st["out_chunk"],
                            st["step"], st["mode"] == DONE, st["chunk_id"] + 1)


def _prefill(models: SpeechModels, params, prompt_ids, prompt_mask, d: _Dims, prompt_embeds):
    """The prompt through the LLM into a cache of p + s_max positions; rotary positions count
    real tokens only. Returns (last hidden state (B, D), cache)."""
    llm = models.llm
    mask = prompt_mask.astype(jnp.int32)
    x = prompt_embeds if prompt_embeds is not None else _apply(llm, params["llm"], prompt_ids, method=Qwen2LM.embed)
    pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    cache = init_kv_cache(llm.cfg, d.b, d.p + d.s_max)
    h, cache = _apply(llm, params["llm"], x, pos, mask, cache, 0, method=Qwen2LM.hidden)
    return h[:, -1], cache


def _initial_state(models: SpeechModels, prompt_ids, prompt_mask, d: _Dims, h_last, cache, rng) -> dict:
    """Every row in text mode; the repetition penalty has seen the prompt's tokens."""
    b, s_max = d.b, d.s_max
    mask = prompt_mask.astype(jnp.int32)
    text_seen = jnp.zeros((b, models.llm.cfg.vocab_size), bool).at[jnp.arange(b)[:, None], prompt_ids].max(mask > 0)
    return dict(
        step=jnp.zeros((), jnp.int32), cache=cache, h=h_last,
        mode=jnp.full((b,), TEXT, jnp.int32), final=jnp.zeros((b,), bool),
        chunk_count=jnp.zeros((b,), jnp.int32), frames=jnp.zeros((b,), jnp.int32),
        chunk_id=jnp.full((b,), -1, jnp.int32), pos=mask.sum(axis=1).astype(jnp.int32),
        text_seen=text_seen, audio_seen=jnp.zeros((b, d.depth, d.vmax), bool),
        out_tokens=jnp.full((b, s_max), -1, jnp.int32), out_fed=jnp.zeros((b, s_max), bool),
        out_codes=jnp.zeros((b, s_max, d.depth), jnp.int32), out_valid=jnp.zeros((b, s_max), bool),
        out_chunk=jnp.full((b, s_max), -1, jnp.int32), key=rng,
    )


def _sample_text(models: SpeechModels, params, cfg: GenerationConfig, h_last, key, seen) -> Array:
    """The next text token of every row (B,) from the last hidden state."""
    logits = _apply(models.llm, params["llm"], h_last[:, None], method=Qwen2LM.logits)[:, 0]
    return sample(key, logits, seen, cfg.text)


def _sample_frame(models: SpeechModels, params, cfg: GenerationConfig, d: _Dims, h_last, key, seen) -> Array:
    """One audio frame (B, depth): the depth transformer samples codebooks 0..depth-1 in order,
    each conditioned on the sum of the earlier codes' embeddings; only codebook 0 may end."""
    head, embed = models.head, models.embed
    dcache = init_depth_cache(head.cfg, d.b)
    x, cum, codes = h_last, None, []
    keys = jax.random.split(key, d.depth)
    for i in range(d.depth):
        lg, dcache = _apply(head, params["audio_head"], x, i, dcache, method=AudioHead.step)
        if i > 0:
            lg = lg[:, :-1]  # only codebook 0 may emit the end code
        c = sample(keys[i], lg, seen[:, i, : lg.shape[1]], cfg.audio)
        codes.append(c)
        e = _apply(embed, params["audio_embed"], c, i, method=AudioEmbed.lookup)
        cum = e if cum is None else cum + e
        x = cum
    return jnp.stack(codes, axis=-1)


class _TextMove(NamedTuple):
    """What the text rows do with their sampled token (all (B,))."""

    count: Array  # text tokens of the chunk including this one
    to_audio: Array  # enter audio: <audiogen_start> sampled, the chunk is full, or eos after text
    eos_audio: Array  # eos after text: one last audio chunk, then stop
    eos_stop: Array  # eos that ends the row
    feed: Array  # the token (or its <audiogen_start> replacement) enters the cache


def _text_move(tok, st, ids: SpecialIds, cfg: GenerationConfig) -> _TextMove:
    in_text = st["mode"] == TEXT
    count = st["chunk_count"] + 1
    is_eos = tok == ids.eos
    if cfg.speech:
        start_audio = in_text & ~is_eos & ((tok == ids.audiogen_start) | (count >= cfg.max_text_tokens_per_chunk))
        eos_audio = in_text & is_eos & (count > 1)
    else:
        start_audio = eos_audio = jnp.zeros(tok.shape, bool)
    eos_stop = in_text & is_eos & ~eos_audio
    return _TextMove(count, start_audio | eos_audio, eos_audio, eos_stop, in_text & ~eos_stop)


class _AudioMove(NamedTuple):
    """What the audio rows do with their sampled frame (all (B,))."""

    frames: Array  # frames of the chunk including this one
    record: Array  # the frame is kept (not the end code)
    stop: Array  # the chunk ends and it was the final one
    feed_end: Array  # the chunk ends: feed <audiogen_end>, back to text
    feed_frame: Array  # feed the frame (as <audio_pad> = the sum of its code embeddings)


def _audio_move(codes, st, d: _Dims, cfg: GenerationConfig) -> _AudioMove:
    in_audio = st["mode"] == AUDIO
    frames = st["frames"] + 1
    ended = in_audio & (codes[:, 0] == d.end0)
    capped = in_audio & ~ended & (frames >= cfg.max_audio_frames_per_chunk)
    leave = ended | capped
    return _AudioMove(frames, in_audio & ~ended, leave & st["final"], leave & ~st["final"], in_audio & ~leave)


def _step(models: SpeechModels, params, ids: SpecialIds, cfg: GenerationConfig, d: _Dims, st: dict) -> dict:
    """One loop step: sample (text rows a token, audio rows a frame), move each row's state
    machine, feed ONE position per row into the KV cache, record the outputs."""
    s, b = st["step"], d.b
    key, k_text, k_audio = jax.random.split(jax.random.fold_in(st["key"], s), 3)
    mode = st["mode"]
    in_text, in_audio = mode == TEXT, mode == AUDIO
    tok = jax.lax.cond(jnp.any(in_text), lambda: _sample_text(models, params, cfg, st["h"], k_text, st["text_seen"]),
                       lambda: jnp.zeros((b,), jnp.int32))
    if cfg.speech:
        codes = jax.lax.cond(jnp.any(in_audio),
                             lambda: _sample_frame(models, params, cfg, d, st["h"], k_audio, st["audio_seen"]),
                             lambda: jnp.zeros((b, d.depth), jnp.int32))
    else:
        codes = jnp.zeros((b, d.depth), jnp.int32)
    t, a = _text_move(tok, st, ids, cfg), _audio_move(codes, st, d, cfg)

    # ---- what enters the cache ----
    feed_tok = jnp.where(t.to_audio, ids.audiogen_start, tok)
    feed_tok = jnp.where(in_audio, jnp.where(a.feed_end, ids.audiogen_end, ids.audio_pad), feed_tok)
    fed = t.feed | a.feed_end | a.feed_frame
    emitted = jnp.where(fed, feed_tok, jnp.where(t.eos_stop, ids.eos, -1))
    h, cache = _feed(models, params, cfg, d, st, jnp.where(fed, feed_tok, 0), fed, a.feed_frame, codes)

    # ---- the next state ----
    new_mode = jnp.where(t.eos_stop | a.stop, DONE, mode)
    new_mode = jnp.where(t.to_audio, AUDIO, new_mode)
    new_mode = jnp.where(a.feed_end, TEXT, new_mode)
    audio_seen = jnp.where(t.to_audio[:, None, None], False, st["audio_seen"])
    rows = jnp.arange(b)
    for i in range(d.depth):
        audio_seen = audio_seen.at[rows, i, codes[:, i]].max(a.record)
    return dict(
        step=s + 1, cache=cache, h=h, mode=new_mode,
        final=jnp.where(t.eos_audio, True, st["final"]),
        chunk_count=jnp.where(in_text & ~t.to_audio, t.count, 0).astype(jnp.int32),
        frames=jnp.where(a.feed_frame, a.frames, 0).astype(jnp.int32),
        chunk_id=st["chunk_id"] + t.to_audio.astype(jnp.int32), pos=st["pos"] + fed.astype(jnp.int32),
        text_seen=mark_seen(st["text_seen"], feed_tok, fed),
        audio_seen=audio_seen,
        out_tokens=st["out_tokens"].at[:, s].set(emitted),
        out_fed=st["out_fed"].at[:, s].set(fed),
        out_codes=st["out_codes"].at[:, s].set(jnp.where(a.record[:, None], codes, 0)),
        out_valid=st["out_valid"].at[:, s].set(a.record),
        out_chunk=st["out_chunk"].at[:, s].set(jnp.where(a.record, st["chunk_id"], -1)),
        key=st["key"],
    )


def _feed(models: SpeechModels, params, cfg: GenerationConfig, d: _Dims, st: dict, tokens, fed, feed_frame, codes):
    """One position per row into the cache at index p + step: the token's embedding, or for an
    audio frame the sum of its code embeddings; rows that feed nothing get segment id 0.
    Returns (hidden (B, D), cache)."""
    llm = models.llm
    x_tok = _apply(llm, params["llm"], tokens[:, None], method=Qwen2LM.embed)[:, 0]
    if cfg.speech:
        x_aud = _apply(models.embed, params["audio_embed"], codes)
        x = jnp.where(feed_frame[:, None], x_aud.astype(x_tok.dtype), x_tok)
    else:
        x = x_tok
    seg = fed.astype(jnp.int32)
    h, cache = _apply(llm, params["llm"], x[:, None], st["pos"][:, None], seg[:, None], st["cache"], d.p + st["step"],
                      method=Qwen2LM.hidden)
    return h[:, 0], cache


def check_setup(models: SpeechModels, ids: SpecialIds, cfg: GenerationConfig) -> None:
    """Clear errors for configurations the loop cannot run."""
    if cfg.max_new_steps < 1 or cfg.max_text_tokens_per_chunk < 1 or cfg.max_audio_frames_per_chunk < 1:
        raise ValueError("GenerationConfig: max_new_steps, max_text_tokens_per_chunk and max_audio_frames_per_chunk "
                         f"must be >= 1 (got {cfg.max_new_steps}, {cfg.max_text_tokens_per_chunk}, "
                         f"{cfg.max_audio_frames_per_chunk})")
    cfg.text.validate()
    cfg.audio.validate()
    vocab = models.llm.cfg.vocab_size
    bad = {k: v for k, v in dataclasses.asdict(ids).items() if not 0 <= v < vocab}
    if bad:
        raise ValueError(f"special token ids {bad} are outside the LLM vocabulary ({vocab}); take them from the "
                         "tokenizer the model was trained with (SpecialIds.from_tokenizer)")
    if cfg.speech and (models.head is None or models.embed is None):
        raise ValueError("GenerationConfig(speech=True) needs the audio embedding and the audio head; this model has "
                         "none (a text-only model, e.g. Baichuan-Omni v1): generate with speech=False")
    if cfg.speech and (models.head.cfg.hidden_size != models.llm.cfg.hidden_size
                       or models.embed.cfg.hidden_size != models.llm.cfg.hidden_size):
        raise ValueError(f"audio head / embedding width ({models.head.cfg.hidden_size} / {models.embed.cfg.hidden_size}) "
                         f"must equal the LLM hidden_size ({models.llm.cfg.hidden_size})")


def make_generate(models: SpeechModels, ids: SpecialIds, cfg: GenerationConfig):
    """jax.jit-ed (params, prompt_ids, prompt_mask, rng[, prompt_embeds]) -> GenerationOutput."""
    check_setup(models, ids, cfg)
    fn = functools.partial(generate, models, ids=ids, cfg=cfg)
    return jax.jit(lambda params, prompt_ids, prompt_mask, rng, prompt_embeds=None:
                   fn(params, prompt_ids, prompt_mask, rng, prompt_embeds=prompt_embeds))


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids, mask) (B, P) left padded."""
    p = max(len(x) for x in prompts)
    ids = np.full((len(prompts), p), pad_id, np.int32)
    mask = np.zeros((len(prompts), p), np.int32)
    for r, x in enumerate(prompts):
        if len(x):
            ids[r, p - len(x):] = x
            mask[r, p - len(x):] = 1
    return ids, mask


@dataclasses.dataclass
class RowResult:
    tokens: list[int]  # emitted tokens in order (text, <audiogen_start>, <audio_pad>..., <audiogen_end>, eos)
    audio_chunks: list[np.ndarray]  # per audio chunk: (frames, depth) codes, end frames excluded
    finished: bool  # the row reached its end (not cut by max_new_steps)


def split_rows(out: GenerationOutput) -> list[RowResult]:
    """Host-side view of a GenerationOutput, one RowResult per batch row; one audio chunk per
    `<audiogen_start>` segment (empty when its first frame was the end code)."""
    tokens, codes = np.asarray(out.tokens), np.asarray(out.codes)
    valid, chunk = np.asarray(out.frame_valid), np.asarray(out.frame_chunk)
    n = int(out.steps)
    res = []
    for r in range(tokens.shape[0]):
        toks = [int(t) for t in tokens[r, :n] if t >= 0]
        ids, frames = chunk[r, :n][valid[r, :n]], codes[r, :n][valid[r, :n]]
        chunks = [frames[ids == c] for c in range(int(np.asarray(out.num_chunks)[r]))]
        res.append(RowResult(toks, chunks, bool(np.asarray(out.finished)[r])))
    return res


def text_of(tokens: list[int], tokenizer, ids: SpecialIds) -> str:
    """The text of a row: its text tokens, without <audiogen_*>, <audio_pad> and eos."""
    skip = {ids.audiogen_start, ids.audiogen_end, ids.audio_pad, ids.eos}
    return tokenizer.decode([t for t in tokens if t not in skip])
