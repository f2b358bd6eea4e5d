"""Colour probes: the narrow, held-out tasks of the CI quality bar and the ablation tests.

Two generated datasets over the embedded world (omni_jax/data/default_dataset.py: its 8
colours, 6 shapes, drawing and built-in synthesiser), small enough that a tiny omni model
learns them above chance in a few CPU minutes (configs/omni_v1/ci.py):

  colour_images   one shape on a grey 56x56 canvas (4 LLM tokens); question
                  "what colour is the shape?", answer "<colour>."
  colour_words    one colour word spoken ("<colour>.") by a voice of the built-in
                  synthesiser, padded with silence to exactly `CLIP_SECONDS`, so every
                  clip gives the same number of audio tokens (the duration of a word
                  cannot tell the model which word it is); transcript "<colour>."

The held-out `test` split shares nothing with `train` by construction:
  images  (colour, shape) pairs: `HELD_OUT_PAIRS` (one shape per colour) appear only in
          test, every other pair only in train; recognising a colour must generalise
          across shapes.
  words   (word, voice) pairs: each of the VOICES voices says 7 of the 8 colour words in
          train and the eighth (`held_out_word(voice)`) only in test; recognising a word
          must generalise across voices. (Voices never heard at all were tried first and
          gave the same held-out ASR, 0.42-0.52; see tests/tasks/test_quality_bar.py.)
The test split is balanced: every colour is the answer of the same number of samples, so
chance (and the majority-answer rate) is exactly 1/8. `disjointness(train, test)` returns
what the two splits share (empty = disjoint); the tests assert it.

Mixture specs (omni_jax/data/sources.py): dataset "probe:colour_images" or
"probe:colour_words", split "train" or "test"; records are generated in the process
(seconds), like the text corpus.
"""

from __future__ import annotations

import functools
import hashlib
import io
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from omni_jax.data.audio_features import encode_wav
from omni_jax.data.default_dataset import BACKGROUND, RGB, draw_shape
from omni_jax.data.speech_synth import BuiltinTTS
from omni_jax.data.text_corpus import COLOURS, SHAPES

QUESTION = "what colour is the shape?"
SIDE = 56
CLIP_SECONDS = 1.0
VOICES = 64
# one (colour, shape) pair per colour, held out of training: the colour i with shape i mod 6
HELD_OUT_PAIRS = frozenset((c, SHAPES[i % len(SHAPES)]) for i, c in enumerate(COLOURS))
SIZES = {"colour_images": {"train": 960, "test": 64}, "colour_words": {"train": 7 * VOICES, "test": VOICES}}
CHANCE = 1.0 / len(COLOURS)
_SEED = {"colour_images": 101, "colour_words": 102}
_SPLIT = {"train": 0, "test": 1}


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _image(colour: str, shape: str, big: bool, dx: float, dy: float) -> bytes:
    img = Image.new("RGB", (SIDE, SIDE), BACKGROUND)
    r = (0.40 if big else 0.26) * SIDE
    draw_shape(ImageDraw.Draw(img), shape, SIDE / 2 + dx, SIDE / 2 + dy, r, RGB[colour])
    return _png(img)


def colour_images(split: str, count: int | None = None) -> list[dict[str, Any]]:
    """Records {id, image (PNG), question, answer, colour, shape}; test is balanced over colours."""
    count = SIZES["colour_images"][split] if count is None else count
    rng = np.random.default_rng([_SEED["colour_images"], _SPLIT[split]])
    out = []
    for k in range(count):
        colour = COLOURS[k % len(COLOURS)]
        if split == "test":
            shape = next(s for c, s in HELD_OUT_PAIRS if c == colour)
        else:
            shape = str(rng.choice([s for s in SHAPES if (colour, s) not in HELD_OUT_PAIRS]))
        big = bool(rng.integers(0, 2))
        dx, dy = (float(x) for x in rng.uniform(-5, 5, 2))
        out.append({"id": f"colour_images-{split}-{k}", "image": _image(colour, shape, big, dx, dy),
                    "question": QUESTION, "answer": f"{colour}.", "colour": colour, "shape": shape})
    return out


@functools.lru_cache(maxsize=1)
def _tts() -> BuiltinTTS:
    return BuiltinTTS(num_voices=VOICES, seed=0)


def clip(wave: np.ndarray, seconds: float = CLIP_SECONDS, rate: int = 16000) -> np.ndarray:
    """`wave` followed by silence up to exactly `seconds` (an error if it is longer)."""
    n = int(round(seconds * rate))
    if len(wave) > n:
        raise ValueError(f"a colour word of {len(wave) / rate:.2f} s does not fit the {seconds} s clip: raise "
                         "colour_probe.CLIP_SECONDS")
    return np.concatenate([wave, np.zeros(n - len(wave), np.float32)]).astype(np.float32)


def held_out_word(voice: int) -> str:
    """The one colour word voice `voice` never says in training (it says it in test)."""
    return COLOURS[voice % len(COLOURS)]


def colour_words(split: str, count: int | None = None) -> list[dict[str, Any]]:
    """Records {id, audio (WAV, CLIP_SECONDS), transcript, voice}: train = every voice saying
    every colour word but its held-out one, test = every voice saying its held-out word (so
    8 voices per colour: balanced)."""
    tts = _tts()
    pairs = [(v, c) for v in range(VOICES) for c in COLOURS if (c == held_out_word(v)) == (split == "test")]
    if count is not None:
        pairs = pairs[:count]
    out = []
    for k, (voice, colour) in enumerate(pairs):
        text = f"{colour}."
        out.append({"id": f"colour_words-{split}-{k}", "audio": encode_wav(clip(tts(text, voice))),
                    "transcript": text, "voice": np.int32(voice)})
    return out


GENERATORS = {"colour_images": colour_images, "colour_words": colour_words}
ASR_PROMPT = "transcribe the speech."


def mixture(split: str = "train") -> dict[str, dict[str, Any]]:
    """The probes as a `config.data.mixture`: image QA (the quicker skill) on 40% of the rows, ASR
    on 60%. One ASR prompt, so that with the audio silenced every held-out ASR prompt is the
    same sequence."""
    return {"image_qa": dict(dataset="probe:colour_images", format="image_qa", weight=0.4, split=split),
            "asr": dict(dataset="probe:colour_words", format="asr", weight=0.6, split=split, prompts=(ASR_PROMPT,))}


@functools.lru_cache(maxsize=8)
def records(name: str, split: str) -> tuple[dict[str, Any], ...]:
    """The records of "probe:<name>" (generated once per process)."""
    if name not in GENERATORS:
        raise ValueError(f"dataset 'probe:{name}' is not a colour probe; known: "
                         f"{['probe:' + n for n in GENERATORS]}")
    if split not in _SPLIT:
        raise ValueError(f"probe:{name} has the splits {sorted(_SPLIT)}, not {split!r}")
    return tuple(GENERATORS[name](split))


def _digest(b: bytes) -> str:
    return hashlib.sha1(b).hexdigest()


def disjointness(train: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """What a held-out split shares with a training split: {what: shared items}; all empty =
    disjoint. Compared: record ids, media bytes (sha1), image (colour, shape) pairs, spoken
    (word, voice) pairs."""
    shared: dict[str, list] = {}

    def common(key, fn):
        a = {fn(r) for r in train if fn(r) is not None}
        shared[key] = sorted(x for x in {fn(r) for r in test} if x is not None and x in a)

    common("ids", lambda r: r["id"])
    common("media", lambda r: _digest(r["image"] if "image" in r else r["audio"]) if ("image" in r or "audio" in r)
           else None)
    common("colour_shape_pairs", lambda r: (r["colour"], r["shape"]) if "shape" in r else None)
    common("word_voice_pairs", lambda r: (r["transcript"], int(r["voice"])) if "voice" in r else None)
    return shared
