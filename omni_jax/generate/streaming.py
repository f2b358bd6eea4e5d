"""Streamed generation: the interleaved text/speech loop run a few steps at a time, and the
speech synthesised piece by piece while the LLM is still generating (issue 15 item 2).

`StepStream` runs exactly the loop of omni_jax/generate/interleaved.py (same `_prefill`,
`_initial_state` and `_step`, same per-step keys), but as a jitted prefill plus a jitted
`advance(state, stop)` that runs the `lax.while_loop` up to step `stop`; the host reads the
steps produced since the last call. Its outputs therefore equal `generate`'s, step by step.

`SpeechStream` turns the stream of audio frames into 24 kHz waveform chunks as the release's
demo does: each `<audiogen_start> ... <audiogen_end>` audio chunk is synthesised in pieces of
at most `chunk_frames` codes (Synthesizer.mel -> flow matching -> HiFT), a piece as soon as its
frames exist, and consecutive pieces are joined with the Synthesizer's 10 ms linear
cross-fade. The last `overlap` samples of what was synthesised are held back until the next
piece (or the end) arrives, since the cross-fade changes them; everything before them is
final and is yielded at once. Pieces and per-piece keys are those of
`Synthesizer.waveform(chunks)` with `max_chunk_frames = chunk_frames`, so the concatenated
stream equals that whole-reply waveform (tests/generate/test_streaming.py measures it).
Each piece is decoded on its own (the flow matching and HiFT are not causal; no state but
the cross-fade crosses a piece boundary), which is what the released demo does.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.generate import interleaved as il


class StepStream:
    """The interleaved generation loop, `steps_per_call` steps per host round trip."""

    def __init__(self, models: il.SpeechModels, ids: il.SpecialIds, cfg: il.GenerationConfig):
        il.check_setup(models, ids, cfg)
        self.models, self.ids, self.cfg = models, ids, cfg
        self._advance: dict = {}

        def start(params, prompt_ids, prompt_mask, rng, prompt_embeds):
            d = il._dims(models, prompt_ids, cfg)
            h, cache = il._prefill(models, params, prompt_ids, prompt_mask, d, prompt_embeds)
            return il._initial_state(models, prompt_ids, prompt_mask, d, h, cache, rng)

        self._start = jax.jit(start)

    def _advance_fn(self, d: il._Dims):
        if d not in self._advance:
            step = functools.partial(il._step, self.models, ids=self.ids, cfg=self.cfg, d=d)

            def advance(params, st, stop):
                return jax.lax.while_loop(lambda s: (s["step"] < stop) & jnp.any(s["mode"] != il.DONE),
                                          lambda s: step(params=params, st=s), st)

            self._advance[d] = jax.jit(advance)
        return self._advance[d]

    def run(self, params: Any, prompt_ids, prompt_mask, rng, prompt_embeds=None, *,
            steps_per_call: int = 8) -> Iterator[dict]:
        """Yields, per call, row 0's new steps: {"tokens": [...], "codes": (n, depth),
        "chunk": (n,) chunk id per frame, "valid": (n,) bool, "done": bool}."""
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call={steps_per_call}: must be >= 1")
        prompt_ids, prompt_mask = jnp.asarray(prompt_ids), jnp.asarray(prompt_mask)
        d = il._dims(self.models, prompt_ids, self.cfg)
        st = self._start(params, prompt_ids, prompt_mask, rng, prompt_embeds)
        advance, done_steps = self._advance_fn(d), 0
        while True:
            st = advance(params, st, jnp.int32(min(done_steps + steps_per_call, d.s_max)))
            n = int(st["step"])
            sl = slice(done_steps, n)
            tokens = np.asarray(st["out_tokens"][0, sl])
            valid = np.asarray(st["out_valid"][0, sl])
            done = n >= d.s_max or bool(np.asarray(st["mode"][0]) == il.DONE)
            yield {"tokens": [int(t) for t in tokens if t >= 0], "codes": np.asarray(st["out_codes"][0, sl])[valid],
                   "chunk": np.asarray(st["out_chunk"][0, sl])[valid], "done": done,
                   "finished": bool(np.asarray(st["mode"][0]) == il.DONE)}
            done_steps = n
            if done:
                return


class CrossfadeStream:
    """Incremental `synthesis.crossfade_concat`: push pieces, get the samples that are final."""

    def __init__(self, overlap: int):
        self.overlap = int(overlap)
        self.held = np.zeros((0,), np.float32)  # the last min(overlap, total) samples so far
        self.total = 0

    def push(self, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, np.float32)
        if not len(w):
            return np.zeros((0,), np.float32)
        ov = self.overlap
        if ov > 0 and self.total >= ov and len(w) >= ov:  # the rule of crossfade_concat
            fade = np.linspace(0.0, 1.0, ov, dtype=np.float32)
            new = np.concatenate([self.held * (1.0 - fade) + w[:ov] * fade, w[ov:]])
            self.total += len(w) - ov
        else:
            new = np.concatenate([self.held, w])
            self.total += len(w)
        keep = min(ov, len(new))
        self.held = new[len(new) - keep:]
        return new[: len(new) - keep]

    def flush(self) -> np.ndarray:
        out, self.held = self.held, np.zeros((0,), np.float32)
        return out


class SpeechStream:
    """Audio frames in (as generation yields them), final 24 kHz samples out."""

    def __init__(self, synth, rng: jax.Array, chunk_frames: int):
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames={chunk_frames}: a streamed speech piece needs at least 1 code frame "
                             "(12.5 Hz codes: 1 frame = 80 ms of speech)")
        self.synth, self.rng, self.chunk_frames = synth, rng, int(chunk_frames)
        self.fade = CrossfadeStream(synth.overlap)
        self.buf: list[np.ndarray] = []
        self.chunk = -1
        self.pieces = 0

    def _piece(self) -> np.ndarray:
        codes, self.buf = np.stack(self.buf), []
        k_mel, k_voc = jax.random.split(jax.random.fold_in(self.rng, self.pieces))
        self.pieces += 1
        return self.fade.push(self.synth.waveform_of_mel(self.synth.mel(codes, k_mel), k_voc))

    def push(self, codes: np.ndarray, chunk_ids: np.ndarray, closed_chunks: int, done: bool = False) -> list[np.ndarray]:
        """New frames (n, depth) with their chunk ids (in generation order); `closed_chunks`:
        how many audio chunks have ended so far (`<audiogen_end>` fed); `done`: generation
        stopped. Returns the samples that became final."""
        out = []
        for c, cid in zip(codes, chunk_ids):
            if cid != self.chunk and self.buf:  # a new chunk began: the previous one's remainder
                out.append(self._piece())
            self.chunk = int(cid)
            self.buf.append(np.asarray(c))
            if len(self.buf) == self.chunk_frames:
                out.append(self._piece())
        if self.buf and (done or self.chunk < closed_chunks):
            out.append(self._piece())
        return [o for o in out if len(o)]

    def flush(self) -> np.ndarray:
        return self.fade.flush()
