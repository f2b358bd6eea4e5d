"""Streamed generation: the interleaved text/speech loop run a few steps at a time, and the
speech synthesised piece by piece while the LLM is still generating (issue 15 item 2).

`StepStream` runs exactly the loop of omni_jax/generate/interleaved.py (same `_prefill`,
`_initial_state` and `_step`, same per-step keys), but as a jitted prefill plus a jitted
`advance(state, stop)` that runs the `lax.while_loop` up to step `stop`; the host reads the
steps produced since the last call. Its outputs therefore equal `generate`'s, step by step.

`SpeechStream` turns the stream of audio frames into 24 kHz waveform chunks. The speech is cut
into the pieces `Synthesizer.waveform` uses (each `<audiogen_start> ... <audiogen_end>` audio
chunk, split every `max_chunk_frames` = 250 codes) and pieces are joined with its 10 ms linear
cross-fade, so the concatenated stream equals the whole-reply waveform of `respond` + `write_wav`.
Within a piece the decoder state is carried across stream chunks: every `chunk_frames` new codes
the piece's codes so far are decoded again from its start (codes -> decoder hidden -> flow
matching -> HiFT; the carried state is that prefix, recomputed, not a cache) and only the samples
that can no longer change are yielded: mel frames up to the last whole flow-matching attention
chunk (chunk-causal U-Net, causal prenet), minus the vocoder's right context
(`synthesis.hift_right_context`); noise is drawn per frame position (`synthesis.frame_noise`), so
the prefix draws what the whole piece draws. With a causal codes -> hidden stage the stream equals
the whole piece up to float rounding (tests/generate/test_streaming.py); the release's audio
decoder normalises dconv1 with a GroupNorm over the whole piece, which no streaming decoder can
know in advance, so there the early samples of a piece differ (measured in the same test).
A `chunk_frames` below `Synthesizer.stream_receptive_field()["min_codes"]` (26 codes for the
release's decoders, 5 for the tiny ones) is rejected: no audio of a piece is final before that.
The released demo instead decodes each piece alone (no state across its pieces).
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

    def append(self, w: np.ndarray) -> np.ndarray:
        """More samples of the piece pushed last (no cross-fade)."""
        w = np.asarray(w, np.float32)
        new = np.concatenate([self.held, w])
        self.total += len(w)
        keep = min(self.overlap, len(new))
        self.held = new[len(new) - keep:]
        return new[: len(new) - keep]

    def flush(self) -> np.ndarray:
        out, self.held = self.held, np.zeros((0,), np.float32)
        return out


class SpeechStream:
    """Audio frames in (as generation yields them), final 24 kHz samples out."""

    def __init__(self, synth, rng: jax.Array, chunk_frames: int):
        rf = synth.stream_receptive_field()
        if chunk_frames < rf["min_codes"]:
            raise ValueError(
                f"chunk_frames={chunk_frames} is below the speech decoder's receptive field: no audio of a piece is "
                f"final before {rf['min_codes']} code frames ({rf['min_codes'] * 80} ms at 12.5 Hz; flow-matching "
                f"attention chunk config.model.flow_matching.chunk_size={rf['chunk']} mel frames, vocoder right "
                f"context {rf['right']} mel frames, {synth.frames_per_code} decoder frames per code): use "
                f"chunk_frames >= {rf['min_codes']} (respond_stream(chunk_frames=...), launch.infer --chunk_frames)")
        self.synth, self.rng, self.chunk_frames, self.rf = synth, rng, int(chunk_frames), rf
        self.fade = CrossfadeStream(synth.overlap)
        self.seg: list[np.ndarray] = []  # codes of the current piece
        self.pieces = 0  # pieces started (= Synthesizer.waveform's piece index + 1)
        self.emitted = 0  # samples of the current piece handed on
        self.head: list[np.ndarray] = []  # a new piece's first samples, until the cross-fade can be applied
        self.since = 0  # codes since the last decode
        self.chunk = -1
        self.decodes = 0  # decoder runs (for benchmarks)

    def _decode(self, closed: bool) -> list[np.ndarray]:
        """Decodes the current piece's prefix; hands on the samples that became final."""
        s = self.synth
        self.since = 0
        k_mel, k_voc = jax.random.split(jax.random.fold_in(self.rng, self.pieces - 1))
        hidden = s.hidden(np.stack(self.seg))
        t = hidden.shape[0]
        if closed:
            m, final = t, t * s.hop
        else:
            c = self.rf["chunk"]
            m = (t // c) * c if c > 0 else 0
            final = max(0, m - self.rf["right"]) * s.hop
            if final <= self.emitted:
                return []
        if m == 0:
            wav = np.zeros((0,), np.float32)
        else:
            self.decodes += 1
            wav = s.waveform_of_mel(s.mel_of_hidden(hidden[:m], k_mel), k_voc)
        new, self.emitted = wav[self.emitted: final], max(self.emitted, final)
        if self.head is None:  # the piece's cross-fade is done: plain continuation
            out = self.fade.append(new)
        else:
            self.head.append(new)
            h = np.concatenate(self.head)
            if len(h) < s.overlap and not closed:
                return []
            self.head, out = None, self.fade.push(h)
        return [out] if len(out) else []

    def _close(self) -> list[np.ndarray]:
        out = self._decode(closed=True)
        self.seg, self.emitted, self.head = [], 0, []
        return out

    def push(self, codes: np.ndarray, chunk_ids: np.ndarray, closed_chunks: int, done: bool = False) -> list[np.ndarray]:
        """New frames (n, depth) with their chunk ids (in generation order); `closed_chunks`:
        how many audio chunks have ended so far (`<audiogen_end>` fed); `done`: generation
        stopped. Returns the samples that became final."""
        out = []
        for c, cid in zip(codes, chunk_ids):
            if cid != self.chunk and self.seg:  # a new audio chunk began: the previous one is complete
                out += self._close()
            self.chunk = int(cid)
            if not self.seg:
                self.pieces += 1
            self.seg.append(np.asarray(c))
            self.since += 1
            if len(self.seg) == self.synth.max_chunk_frames:
                out += self._close()
            elif self.since >= self.chunk_frames:
                out += self._decode(closed=False)
        if self.seg and (done or self.chunk < closed_chunks):
            out += self._close()
        return [o for o in out if len(o)]

    def flush(self) -> np.ndarray:
        return self.fade.flush()
