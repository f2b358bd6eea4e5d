"""The sequence layout of Baichuan-Omni-1.5 (ARCHITECTURE.md 1.6): spans, chat template, loss.

A `SequenceBuilder` appends text and media spans and records, for every token, whether
the text head is trained to produce it. Media spans (token ids always come from
`tokenizer.special(name)`):

  image        <img_start> <img_pad> x n <img_end>
  video        <video_start> + per frame [<img_start> <video_palce> x n_f <img_end>] + <video_end>
  input audio  <audio_start> <audio_pad> x n <audio_end>
  speech       <audiogen_start> <audio_pad> x N <audiogen_end>   (audio output, or audio in history)
  chat         <B_SYS>system<C_Q>user[<audiotext_start>]<C_A>assistant   (no newlines)

Loss convention (`Sample.example()`): inputs = ids[:-1], targets = ids[1:], and the text
loss mask at input position i is `train[i + 1]`, i.e. whether the token at i + 1 is one
the model must learn to emit. Placeholders and span delimiters of *input* media, the
system prompt and the user turn are never trained; assistant text and the closing eos
are. In a speech span the text head is trained on `<audiogen_start>` (the model decides
to start speaking) and never on the `<audio_pad>`s or `<audiogen_end>` (they are fed by
the generation loop, ARCHITECTURE.md 1.7). The audio head instead is trained (when the
span's `train_audio` is set) at the `<audiogen_start>` position and at every pad: the
hidden state at `<audiogen_start>` predicts frame 0, at pad k (whose input embedding is
frame k) it predicts frame k + 1, and at the last pad it predicts end-of-audio
(1.5 teacher forcing). Interleaved text-audio data keeps `train_audio=False` (no loss on
audio segments); TTS-style data sets it.

Media objects are opaque here (`omni_jax/data/media_io.py` items); the builder only
records which placeholder positions belong to which item, in order of appearance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np


@dataclasses.dataclass
class VisionSpan:
    """One image or one video frame: its placeholder positions (in `Sample.ids`)."""

    item: Any
    positions: np.ndarray  # int32 (n,)
    video: bool


@dataclasses.dataclass
class AudioSpan:
    """One input audio clip (all its 30 s chunks): placeholder positions in order."""

    item: Any
    positions: np.ndarray


@dataclasses.dataclass
class SpeechSpan:
    """One audio output / audio-in-history span: `<audiogen_start>` at `start`, pads at
    `positions` (pad k carries frame k), `train_audio` = audio-head loss on this span."""

    item: Any
    start: int
    positions: np.ndarray
    train_audio: bool


@dataclasses.dataclass
class Sample:
    """A formatted record: token ids, per-token text-loss flags, and its media spans."""

    ids: np.ndarray  # int32 (L,)
    train: np.ndarray  # bool (L,): the text head is trained to emit this token
    vision: list[VisionSpan]
    audio: list[AudioSpan]
    speech: list[SpeechSpan]
    record_id: str = ""

    @property
    def num_inputs(self) -> int:
        """Row positions this sample occupies: inputs are ids[:-1]."""
        return max(len(self.ids) - 1, 0)

    def example(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs, targets, loss_mask) for next-token prediction."""
        return self.ids[:-1], self.ids[1:], self.train[1:].astype(np.float32)


class SequenceBuilder:
    """Appends spans; `build()` returns the `Sample`."""

    def __init__(self, tokenizer, record_id: str = ""):
        self.tok = tokenizer
        self.record_id = record_id
        self._ids: list[int] = []
        self._train: list[bool] = []
        self._vision: list[VisionSpan] = []
        self._audio: list[AudioSpan] = []
        self._speech: list[SpeechSpan] = []

    def __len__(self) -> int:
        return len(self._ids)

    # ---- primitives ----
    def _add(self, ids: Sequence[int], train: bool) -> np.ndarray:
        start = len(self._ids)
        self._ids.extend(int(i) for i in ids)
        self._train.extend([bool(train)] * len(ids))
        return np.arange(start, len(self._ids), dtype=np.int32)

    def special(self, name: str, train: bool = False) -> int:
        """Appends one special token by name; returns its position."""
        return int(self._add([self.tok.special(name)], train)[0])

    def text(self, s: str, train: bool = False) -> "SequenceBuilder":
        if s:
            self._add(self.tok.encode(s), train)
        return self

    def eos(self, train: bool = True) -> "SequenceBuilder":
        self.special("eos", train)
        return self

    # ---- media spans ----
    def image(self, n_tokens: int, item: Any) -> "SequenceBuilder":
        _check_count("image", n_tokens)
        self.special("img_start")
        pos = self._add([self.tok.special("img_pad")] * n_tokens, False)
        self.special("img_end")
        self._vision.append(VisionSpan(item, pos, video=False))
        return self

    def video(self, frame_tokens: Sequence[int], frame_items: Sequence[Any]) -> "SequenceBuilder":
        if len(frame_tokens) != len(frame_items) or not frame_items:
            raise ValueError(f"a video needs one token count per frame, got {len(frame_tokens)} counts "
                             f"for {len(frame_items)} frames")
        self.special("video_start")
        for n, item in zip(frame_tokens, frame_items):
            _check_count("video frame", n)
            self.special("img_start")
            pos = self._add([self.tok.special("video_place")] * n, False)
            self.special("img_end")
            self._vision.append(VisionSpan(item, pos, video=True))
        self.special("video_end")
        return self

    def audio(self, n_tokens: int, item: Any) -> "SequenceBuilder":
        _check_count("audio", n_tokens)
        self.special("audio_start")
        pos = self._add([self.tok.special("audio_pad")] * n_tokens, False)
        self.special("audio_end")
        self._audio.append(AudioSpan(item, pos))
        return self

    def speech(self, n_frames: int, item: Any, *, train_audio: bool, train_start: bool | None = None) -> "SequenceBuilder":
        """An audio output / history span. `train_start` (default: `train_audio`) trains
        the text head to emit `<audiogen_start>`."""
        _check_count("speech", n_frames)
        start = self.special("audiogen_start", train_audio if train_start is None else train_start)
        pos = self._add([self.tok.special("audio_pad")] * n_frames, False)
        self.special("audiogen_end")
        self._speech.append(SpeechSpan(item, start, pos, bool(train_audio)))
        return self

    # ---- chat template ----
    def system(self, text: str) -> "SequenceBuilder":
        self.special("b_sys")
        return self.text(text)

    def user(self) -> "SequenceBuilder":
        """Starts the user turn; append its text/media spans (untrained) next."""
        self.special("c_q")
        return self

    def assistant(self, *, speech_reply: bool = False) -> "SequenceBuilder":
        """Ends the user turn: `[<audiotext_start>]<C_A>`; the reply follows (trained)."""
        if speech_reply:
            self.special("audiotext_start")
        self.special("c_a")
        return self

    def build(self) -> Sample:
        if len(self._ids) < 2:
            raise ValueError("a sample needs at least two tokens")
        return Sample(np.asarray(self._ids, np.int32), np.asarray(self._train, bool), self._vision,
                      self._audio, self._speech, self.record_id)


def _check_count(what: str, n: int) -> None:
    if int(n) <= 0:
        raise ValueError(f"a {what} span needs a positive token count, got {n}")


def speech_targets(span: SpeechSpan, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Audio-head teacher forcing for one speech span whose N frames are the row's speech
    frames `frames` (N indices, in order).

    Returns (positions, target frame index or -1, is_end): `<audiogen_start>` predicts
    frame 0, pad k predicts frame k + 1, the last pad predicts end-of-audio."""
    n = len(span.positions)
    if len(frames) != n:
        raise ValueError(f"speech span has {n} pads but {len(frames)} frames")
    positions = np.concatenate([[span.start], span.positions]).astype(np.int32)
    target = np.concatenate([np.asarray(frames, np.int32), [-1]]).astype(np.int32)
    end = np.zeros(n + 1, bool)
    end[-1] = True
    return positions, target, end
