"""Audio-boundary prediction for v1 streaming input (ARCHITECTURE.md 2, "Streaming"): where the
user's speech starts and ends in a live stream, from the model's own trained head.

`BoundaryTracker` runs OmniV1's `v1_boundary_head` (omni_jax/models/v1_boundary_head.py, trained
in the v1 stage `audio_boundary`) on the stream's audio as it arrives: at each update the last
`window` samples (the model's audio chunk, config.data.shapes.mel_frames * 160) go through the
Whisper encoder and the head, and their per-frame (20 ms) probabilities of (start, inside, end)
overwrite the stream's probability track from that window's first frame on.

Rule on the track: speech = frames with p(inside) > 0.5; the start is the first run of at least
`min_speech` (3 = 60 ms) speech frames, moved to the frame of highest p(start) within `refine`
(5 frames = 100 ms) when that exceeds 0.5; the end is the first frame after it that begins a run
of `hang` (25 = 0.5 s) non-speech frames, refined likewise with p(end). `boundary_accuracy` runs
the tracker over whole held-out streams in 100 ms steps, as the streaming runner feeds it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from omni_jax.models.v1_boundary_head import FRAME_S

RATE = 16_000
FRAME = int(FRAME_S * RATE)  # 320 samples per encoder frame


def decide(probs: np.ndarray, *, hang: int = 25, min_speech: int = 3, refine: int = 5) -> tuple[float | None, float | None]:
    """(start_s, end_s) from a (frames, 3) probability track (None when not (yet) seen)."""
    speech = probs[:, 1] > 0.5
    n = len(speech)
    run, s = 0, None
    for i in range(n):
        run = run + 1 if speech[i] else 0
        if run == min_speech:
            s = i - min_speech + 1
            break
    if s is None:
        return None, None

    def refined(i, col):
        lo, hi = max(0, i - refine), min(n, i + refine + 1)
        j = lo + int(np.argmax(probs[lo:hi, col]))
        return j if probs[j, col] > 0.5 else i

    start = refined(s, 0)
    quiet = 0
    for i in range(s + min_speech, n):
        quiet = quiet + 1 if not speech[i] else 0
        if quiet == hang:
            return start * FRAME_S, refined(i - hang + 1, 2) * FRAME_S
    return start * FRAME_S, None


_PROBS: dict[int, tuple[Any, Any]] = {}


def _probs_fn(model: Any):
    """One jitted head per model object, shared by its trackers (a tracker per stream must not
    compile again: 16 streams were 16 compilations)."""
    import jax

    hit = _PROBS.get(id(model))
    if hit is None or hit[0] is not model:
        fn = jax.jit(lambda p, mel, n: jax.nn.sigmoid(model.boundary_logits(p, mel, n)[0][0]))
        hit = _PROBS[id(model)] = (model, fn)
    return hit[1]


class BoundaryTracker:
    """The model's boundary head over a growing stream of 16 kHz audio."""

    def __init__(self, model: Any, params: Any, window: int, **rule):
        if "v1_boundary_head" not in params:
            raise ValueError("these v1 parameters have no v1_boundary_head: train the v1 stage audio_boundary "
                             "(configs/omni_v1/audio_boundary.py, or the pipeline's last stage)")
        self.window, self.rule = int(window), rule
        self.params = {k: params[k] for k in ("audio_encoder", "v1_boundary_head")}
        self._probs = _probs_fn(model)
        self.track = np.zeros((0, 3), np.float32)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Updates the track with the window ending at the end of `x` (the whole stream so far)."""
        import jax.numpy as jnp

        from omni_jax.data.boundary_streams import window_features

        if len(x) < FRAME:
            return self.track
        mel, valid = window_features(x, self.window)
        p = np.asarray(self._probs(self.params, jnp.asarray(mel[None]), jnp.asarray([valid], jnp.int32)))
        first = max(0, len(x) - self.window) // FRAME  # the window's first frame in the stream
        n = min((valid - 1) // 2 + 1, len(x) // FRAME - first)
        total = first + n
        if len(self.track) < total:
            self.track = np.concatenate([self.track, np.zeros((total - len(self.track), 3), np.float32)])
        self.track[first: total] = p[:n]
        return self.track

    def update(self, x: np.ndarray) -> tuple[float | None, float | None]:
        """(start_s, end_s) of the user's speech in the stream so far."""
        return decide(self.probabilities(x), **self.rule)


def boundary_accuracy(make_tracker, streams, tol: float = 0.2, step_s: float = 0.1) -> dict:
    """Runs a fresh tracker over each (waveform, start_s, end_s) stream in `step_s` steps, stopping
    at the first predicted end; counts a stream correct when start and end are within `tol`."""
    ok_s = ok_e = ok = 0
    errs = []
    step = int(step_s * RATE)
    for x, s, e in streams:
        tr = make_tracker()
        ps = pe = None
        for stop in range(step, len(x) + step, step):
            ps, pe = tr.update(x[:stop])
            if pe is not None:
                break
        gs = ps is not None and abs(ps - s) <= tol
        ge = pe is not None and abs(pe - e) <= tol
        ok_s, ok_e, ok = ok_s + gs, ok_e + ge, ok + (gs and ge)
        errs.append((None if ps is None else ps - s, None if pe is None else pe - e))
    n = len(streams)
    return {"streams": n, "start": ok_s / n, "end": ok_e / n, "both": ok / n, "errors": errs}
