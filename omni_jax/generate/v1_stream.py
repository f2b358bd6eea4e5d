"""Baichuan-Omni v1 streaming input (ARCHITECTURE.md 2, "Streaming"; issue 15 item 1).

    runner = OmniV1Runner.load("runs/omni_v1_tiny")
    result = runner.stream(events, text="what happened?")    # events: an iterator of
        ("frame", t_seconds, png_or_jpeg_bytes)  ("audio", t_seconds, float32 16 kHz samples)
        ("audio_end", t_seconds)
    result.reply.text, result.end_reason, result.frames_used

While the user's audio streams in, video frames are kept at 1 fps (the first frame at or after
each whole second; at most 48, later ones are dropped and counted), each ENCODED ON ARRIVAL on
its own (SigLIP global tile + the video projector) and prefilled into a KV cache that grows with
the stream (omni_jax/generate/dialogue.py `Dialogue.append`): earlier frames are never
re-encoded. The layout is the training one, `<B_SYS>system<C_Q><video_start>` +
`<img_start> frame <img_end>` per frame, then at the end of the user's audio `<video_end>` +
the audio span (Whisper features through the v1 audio projector) + text + `<C_A>`, and the
reply is generated greedily from the cache. The reply therefore equals `respond` on the same
content given all at once (tests/generate/test_v1_stream.py).

End of the user's audio: an explicit `("audio_end", t)` event, or the time-out rule: once audio
has started, no audio for `audio_timeout` seconds of stream time (event timestamps) ends it;
a stream that stops ends it too; `max_seconds` of stream time ends it in any case. The rule
is stated in `StreamResult.end_reason`. With the model's audio-boundary head
(`v1_boundary_head`, trained in the v1 stage `audio_boundary`; omni_jax/generate/audio_boundary.py
runs it on the stream as audio arrives) the user's audio is the predicted span and the predicted
end ends it ("predicted_end"). `boundary=None` (default) uses the head when the loaded workdir
trained it, True requires it, False never uses it; explicit events and the time-out still apply.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from omni_jax.generate.omni_infer import OmniRunner, Prompt, Reply
from omni_jax.generate.sampling import SamplingParams


@dataclasses.dataclass
class StreamResult:
    reply: Reply
    end_reason: str  # "audio_end" | "predicted_end" | "timeout" | "stream_end" | "max_seconds"
    frames_used: int
    frames_dropped: int  # beyond 1 fps or the 48-frame cap
    audio_seconds: float
    audio_wav: bytes  # the user's audio as it was fed (16 kHz WAV), for the all-at-once comparison
    frames: list  # the frames fed, in order
    cache_positions: int


class OmniV1Runner(OmniRunner):
    """OmniRunner with `stream` for v1 models (task 'omni_v1')."""

    boundary_trained = False  # the params' v1_boundary_head was trained (stage audio_boundary done)

    @classmethod
    def _from_workdir(cls, workdir: str, step, tokenizer):
        runner = super()._from_workdir(workdir, step, tokenizer)
        runner.boundary_trained = boundary_stage_done(runner.config, workdir, step)
        return runner

    def boundary_tracker(self, **rule):
        """A fresh audio_boundary.BoundaryTracker over this model's head (window = the model's audio chunk)."""
        from omni_jax.generate.audio_boundary import BoundaryTracker

        return BoundaryTracker(self.task.model, self.params, int(self.config.data.shapes.mel_frames) * 160, **rule)

    def _span(self, prompt: Prompt):
        p = self.prompt_embeddings(prompt, speech=False)
        return np.asarray(p["prompt_ids"]), np.asarray(p["prompt_embeds"], np.float32)

    def _token_embed(self, name: str) -> np.ndarray:
        import jax.numpy as jnp

        from omni_jax.models.qwen2 import Qwen2LM

        tid = self.tokenizer.special(name)
        e = self.task.model.llm.apply({"params": self.params["llm"]}, jnp.asarray([[tid]]), method=Qwen2LM.embed)
        return np.asarray(e[0], np.float32), np.asarray([tid], np.int32)

    def stream(self, events: Iterable[tuple], *, text: str = "", max_new_tokens: int = 64, max_context: int = 8192,
               audio_timeout: float = 2.0, max_seconds: float = 600.0, fps: float = 1.0, max_frames: int = 48,
               system: str = "", boundary: bool | None = None) -> StreamResult:
        """`boundary`: use the model's trained audio-boundary head (None: when the workdir trained
        it); then the user's audio is the span it predicts (start to end) and its predicted end
        ends the stream ("predicted_end")."""
        from omni_jax.data.audio_features import encode_wav
        from omni_jax.generate.dialogue import Dialogue

        if self.config.task != "omni_v1":
            raise ValueError(f"OmniV1Runner.stream is for Baichuan-Omni v1 models (task 'omni_v1'), this is {self.config.task!r}")
        if not audio_timeout > 0 or not max_seconds > 0:
            raise ValueError(f"audio_timeout={audio_timeout} and max_seconds={max_seconds} must be positive "
                             "(they are what ends a stream that never ends the user's audio)")
        if boundary and not self.boundary_trained:
            raise ValueError("boundary=True: this model's v1_boundary_head was not trained; train the v1 stage "
                             "audio_boundary (configs/omni_v1/audio_boundary.py, the pipeline's last stage), or "
                             "pass boundary=False to end the user's audio by audio_end events and the time-out")
        tracker = self.boundary_tracker() if (self.boundary_trained if boundary is None else boundary) else None
        dlg = Dialogue(self, speech=False, max_new_tokens=max_new_tokens, max_context=max_context,
                       text=SamplingParams(do_sample=False))
        frames, audio, dropped = [], [], 0
        next_t, audio_end_t, reason, started = 0.0, None, "stream_end", False
        for ev in events:
            if not isinstance(ev, tuple) or not ev or ev[0] not in ("frame", "audio", "audio_end"):
                raise ValueError(f"stream event {ev!r}: use ('frame', t, image_bytes), ('audio', t, samples) "
                                 "or ('audio_end', t)")
            t = float(ev[1])
            if t > max_seconds:
                reason = "max_seconds"
                break
            if audio_end_t is not None and t - audio_end_t > audio_timeout:
                reason = "timeout"
                break
            if ev[0] == "audio_end":
                reason = "audio_end"
                break
            if ev[0] == "audio":
                x = np.asarray(ev[2], np.float32).reshape(-1)
                audio.append(x)
                if tracker is None:
                    audio_end_t = max(audio_end_t or 0.0, t + len(x) / 16000.0)
                    continue
                start_s, end_s = tracker.update(np.concatenate(audio))
                if start_s is not None:
                    audio_end_t = t + len(x) / 16000.0  # the time-out still applies to a silent stream
                if end_s is not None:
                    reason = "predicted_end"
                    break
                continue
            if t + 1e-6 < next_t or len(frames) >= max_frames:
                dropped += 1
                continue
            next_t = (int(t * fps + 1e-6) + 1) / fps
            ids, emb = self._span(Prompt(video_frames=[ev[2]], video_fps=fps, system=system))  # this frame only
            vs = int(np.argmax(ids == self.tokenizer.special("video_start")))
            ie = int(np.argmax(ids == self.tokenizer.special("img_end")))
            if not started:
                dlg.check_room(vs + 1)
                dlg.append(ids[: vs + 1], emb[: vs + 1])  # <B_SYS>system<C_Q><video_start>
                started = True
            dlg.check_room(ie - vs)
            dlg.append(ids[vs + 1: ie + 1], emb[vs + 1: ie + 1])  # <img_start> frame <img_end>
            frames.append(ev[2])
        wav = np.concatenate(audio) if audio else np.zeros((0,), np.float32)
        if tracker is not None and len(wav):
            start_s, end_s = tracker.update(wav)
            wav = wav[:0] if start_s is None else wav[int(start_s * 16000): None if end_s is None else int(end_s * 16000)]
        wav_bytes = encode_wav(wav) if len(wav) else b""
        if not frames and not len(wav) and not text:
            raise ValueError("the stream gave no frame, no audio and there is no text: nothing to answer")
        tail = Prompt(audio=[wav_bytes] if len(wav) else [], text=text, system=system)
        if started:
            ids, emb = self._span(tail) if (len(wav) or text) else (None, None)
            e_end, i_end = self._token_embed("video_end")
            if ids is None:  # frames only: <video_end><C_A>
                e_ca, i_ca = self._token_embed("c_a")
                ids, emb = np.concatenate([i_end, i_ca]), np.concatenate([e_end, e_ca])
            else:
                cq = int(np.argmax(ids == self.tokenizer.special("c_q")))
                ids, emb = np.concatenate([i_end, ids[cq + 1:]]), np.concatenate([e_end, emb[cq + 1:]])
        else:
            ids, emb = self._span(tail)
        dlg.check_room(len(ids))
        dlg.append(ids, emb)
        reply = dlg.reply(prompt_tokens=len(dlg.history))
        return StreamResult(reply=reply, end_reason=reason, frames_used=len(frames), frames_dropped=dropped,
                            audio_seconds=len(wav) / 16000.0, audio_wav=wav_bytes, frames=frames,
                            cache_positions=dlg.index)


def boundary_stage_done(config, workdir: str, step: int | None = None) -> bool:
    """True when the run has the v1 stage `audio_boundary` and the checkpoint used (`step`, else
    the latest) is at or after that stage's end."""
    from omni_jax.convert.workdir import latest_step

    order = list(config.get("stage_order", ()) or ())
    if "audio_boundary" not in order:
        return False
    end = sum(int(config.stages[n].steps) for n in order[: order.index("audio_boundary") + 1])
    if step is None:
        step = latest_step(workdir)
    return step is not None and int(step) >= end
