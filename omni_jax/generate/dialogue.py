"""A multi-turn conversation whose history stays in the LLM's KV cache (issue 15 item 3).

    chat = Dialogue(runner, speech=True)
    reply = chat.turn(Prompt(text="hello"))           # turn 1: <B_SYS>system<C_Q>hello<C_A> ...
    reply = chat.turn(Prompt(audio=[wav_bytes]))      # turn 2: <C_Q><audio ...><C_A> ... appended

One cache of `max_context` positions lives for the whole conversation. A turn's prompt is built
exactly as `OmniRunner.respond` builds it (media decoded and merged by the model), without the
`<B_SYS>system` prefix after the first turn; it is prefilled at the cache's next free slot with
rotary positions continuing the conversation's, then the interleaved text/speech loop of
omni_jax/generate/interleaved.py generates from there (its `_initial_state` / `_step`, the cache
write offset passed as a traced value so turns do not recompile the loop). Everything the loop
fed (text, `<audiogen_*>`, audio frames as the sum of their code embeddings) stays in the cache
and is attended by later turns; a final eos is not fed, its slot keeps segment id 0 and is
attended by nobody. The conversation so far is never re-encoded.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.generate import interleaved as il
from omni_jax.generate.sampling import SamplingParams
from omni_jax.models.qwen2 import Qwen2LM, init_kv_cache


class Dialogue:
    def __init__(self, runner, *, speech: bool = True, max_new_tokens: int = 256, max_context: int = 2048,
                 text: SamplingParams = SamplingParams(do_sample=False), seed: int = 0):
        from omni_jax.generate.sampling import AUDIO_RELEASE

        m = runner.task.model
        if speech and getattr(m, "audio_head", None) is None:
            raise ValueError("this model has no speech output (Baichuan-Omni v1): use speech=False (--nospeech)")
        self.runner, self.speech, self.max_new, self.max_context = runner, speech, int(max_new_tokens), int(max_context)
        self.models = il.SpeechModels(m.llm, getattr(m, "audio_embed", None), getattr(m, "audio_head", None))
        self.ids = il.SpecialIds.from_tokenizer(runner.tokenizer)
        self.cfg = il.GenerationConfig(max_new_steps=self.max_new, text=text, audio=AUDIO_RELEASE, speech=speech)
        il.check_setup(self.models, self.ids, self.cfg)
        self.params = {k: runner.params[k] for k in ("llm", "audio_embed", "audio_head") if k in runner.params}
        self.cache = init_kv_cache(m.llm.cfg, 1, self.max_context)
        self.index = 0  # next free cache slot
        self.history: list[int] = []  # every token id fed so far (the repetition penalty's memory)
        self.turns = 0
        self.rng = jax.random.PRNGKey(seed)
        llm = m.llm
        self._prefill = jax.jit(lambda p, cache, x, pos, index: llm.apply(
            {"params": p}, x, pos, jnp.ones(pos.shape, jnp.int32), cache, index, method=Qwen2LM.hidden))
        hcfg = self.models.head.cfg if self.models.head is not None else None
        self._dims = il._Dims(1, 0, self.max_new, hcfg.depth if hcfg else 1,
                              max(hcfg.codebook_sizes) + 1 if hcfg else 1, hcfg.codebook_sizes[0] if hcfg else 0)
        step = functools.partial(il._step, self.models, ids=self.ids, cfg=self.cfg)
        dims = self._dims

        def loop(params, st, p):
            d = dims._replace(p=p)  # the cache offset where generation starts (traced: no recompile)
            return jax.lax.while_loop(lambda s: (s["step"] < d.s_max) & jnp.any(s["mode"] != il.DONE),
                                      lambda s: step(params=params, d=d, st=s), st)

        self._loop = jax.jit(loop)

    def _turn_prompt(self, prompt) -> tuple[np.ndarray, np.ndarray]:
        p = self.runner.prompt_embeddings(prompt, speech=self.speech)
        ids, emb = np.asarray(p["prompt_ids"]), np.asarray(p["prompt_embeds"], np.float32)
        if self.turns:  # later turns start at <C_Q>: the system prompt is already in the cache
            c_q = self.runner.tokenizer.special("c_q")
            start = int(np.argmax(ids == c_q)) if (ids == c_q).any() else 0
            ids, emb = ids[start:], emb[start:]
        return ids, emb

    def turn(self, prompt):
        """The reply to one user turn (an omni_infer.Reply); the turn and reply join the history."""
        ids, emb = self._turn_prompt(prompt)
        self.check_room(len(ids))
        self.append(ids, emb)
        return self.reply(len(ids))

    def check_room(self, n_new: int) -> None:
        need = self.index + n_new + self.max_new
        if need > self.max_context:
            raise ValueError(f"the conversation needs {need} cache positions (history {self.index} + this turn "
                             f"{n_new} + max_new_tokens {self.max_new}) but max_context={self.max_context}: "
                             "start a new conversation or raise max_context (--max_context)")

    def append(self, ids: np.ndarray, emb: np.ndarray) -> None:
        """Prefills merged prompt embeddings (n, D) (token ids (n,)) at the next cache slot."""
        ids, emb = np.asarray(ids), np.asarray(emb, np.float32)
        if self.index + len(ids) > self.max_context:
            raise ValueError(f"appending {len(ids)} positions to {self.index} exceeds max_context={self.max_context}")
        pos = len(self.history)
        h, self.cache = self._prefill(self.params["llm"], self.cache, jnp.asarray(emb[None]),
                                      jnp.arange(pos, pos + len(ids), dtype=jnp.int32)[None], self.index)
        self._h_last = h[:, -1]
        self.history += [int(t) for t in ids]
        self.index += len(ids)

    def reply(self, prompt_tokens: int = 0):
        """Generates from the cache as it stands (after `append`); the reply joins the history."""
        from omni_jax.generate.omni_infer import Reply

        if self.max_new > self.max_context - self.index:
            raise ValueError(f"no room to reply: {self.index} of max_context={self.max_context} cache positions used "
                             f"and max_new_tokens={self.max_new}")
        hist = np.asarray(self.history, np.int32)[None]
        rng = jax.random.fold_in(self.rng, self.turns)
        st = il._initial_state(self.models, jnp.asarray(hist), jnp.ones(hist.shape, jnp.int32), self._dims,
                               self._h_last, self.cache, rng)
        start = self.index
        st = self._loop(self.params, st, jnp.int32(start))
        out = il.GenerationOutput(st["out_tokens"], st["out_fed"], st["out_codes"], st["out_valid"], st["out_chunk"],
                                  st["step"], st["mode"] == il.DONE, st["chunk_id"] + 1)
        (row,) = il.split_rows(out)
        steps = int(st["step"])
        fed = np.asarray(st["out_fed"][0, :steps])
        toks = np.asarray(st["out_tokens"][0, :steps])
        self.history += [int(t) for t in toks[fed]]
        self.cache, self.index, self.turns = st["cache"], start + steps, self.turns + 1
        return Reply(text=il.text_of(row.tokens, self.runner.tokenizer, self.ids).strip(), tokens=row.tokens,
                     audio_chunks=[np.asarray(c) for c in row.audio_chunks], prompt_tokens=prompt_tokens)
