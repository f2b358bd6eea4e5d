"""The embedded default dataset: coloured shapes seen, watched, heard and read.

Generated locally and deterministically (numpy, PIL, the built-in TTS) in seconds, small
enough for a 2-core CI machine, and learnable by a tiny model: the same world as the text
corpus (omni_jax/data/text_corpus.py), so text, images, videos and speech share a
vocabulary of 8 colours, 6 shapes, sizes, positions, motions and small numbers.

Subsets (each a TFDS builder in omni_jax/data/builders/, splits train and test):
  images               one or two shapes on a grey canvas (56-112 px): a 2-3 sentence
                       caption, a question and its answer (colour, shape, count, size,
                       left/right, above/below)
  interleaved_images   documents of 2-3 images with their captions (`<|image|>` markers)
  videos               4 frames at 1 fps of a shape moving left/right/up/down (JPEG
                       frames), caption, question, answer; a third have a spoken narration
                       track (`audio`) with its transcript
  speech               spoken sentences (44 voices): transcript and a word-by-word
                       French translation (ASR, TTS, speech translation)
  spoken_qa            spoken questions (small sums, counting) with text answers and
                       spoken answers (audio QA, speech replies)
  interleaved_audio    short documents where some sentences are spoken (`<|audio|>`)
  text                 the text corpus as a dataset

The test splits hold out different draws for evaluation: image QA with answers, ASR with
transcripts, spoken questions with speech replies. `SIZES` sets the record counts
("default" for training runs, "tiny" for tests).
"""

from __future__ import annotations

import io
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw

from omni_jax.data.audio_features import encode_wav
from omni_jax.data.speech_synth import BuiltinTTS
from omni_jax.data.text_corpus import COLOURS, NUMBER_WORDS, SHAPES, generate_documents

IMAGE_MARKER = "<|image|>"
AUDIO_MARKER = "<|audio|>"

RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 215, 40),
       "purple": (140, 50, 170), "orange": (245, 140, 30), "white": (250, 250, 250), "black": (15, 15, 15)}
BACKGROUND = (128, 128, 128)

SIZES = {  # records per split
    "default": {"images": (1200, 100), "interleaved_images": (150, 20), "videos": (200, 30), "speech": (2400, 40),
                "spoken_qa": (120, 30), "interleaved_audio": (80, 10), "text": (2000, 100)},
    "tiny": {"images": (96, 16), "interleaved_images": (12, 4), "videos": (16, 6), "speech": (24, 8),
             "spoken_qa": (12, 6), "interleaved_audio": (8, 4), "text": (96, 16)},
}
_SPLIT_SEED = {"train": 0, "test": 1}
_SUBSET_SEED = {name: i for i, name in enumerate(SIZES["default"])}

FRENCH = {
    "red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet", "orange": "orange",
    "white": "blanc", "black": "noir", "circle": "cercle", "square": "carre", "triangle": "triangle",
    "star": "etoile", "ring": "anneau", "cross": "croix", "small": "petit", "big": "grand", "tiny": "minuscule",
    "large": "gros", "the": "le", "a": "un", "is": "est", "there": "il", "are": "y a", "moves": "va",
    "to": "vers", "left": "gauche", "right": "droite", "top": "haut", "bottom": "bas", "of": "de",
    "above": "au-dessus de", "below": "au-dessous de", "next": "a cote", "plus": "plus",
}
FRENCH.update(dict(zip(NUMBER_WORDS, ("zero", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit",
                                      "neuf", "dix"))))
_ADJECTIVES = set(COLOURS) | {"small", "big", "tiny", "large"}


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


_SINGULAR = {plural(s): s for s in SHAPES}


def singular(word: str) -> str:
    """A shape's plural -> the shape ('crosses' -> 'cross'); any other word unchanged."""
    return _SINGULAR.get(word, word)


def translate(sentence: str) -> str:
    """Word-by-word French with adjectives after their noun (a learnable toy translation)."""
    words = sentence.rstrip(".?!").split()
    out, pending = [], []
    for w in words:
        base = singular(w)
        if base in _ADJECTIVES:
            pending.append(FRENCH[base])
            continue
        out.append(FRENCH.get(base, base))
        if base in SHAPES:
            out.extend(pending)
            pending = []
    out.extend(pending)
    return " ".join(out) + "."


def _rng(subset: str, split: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SUBSET_SEED[subset], _SPLIT_SEED[split]])


# ------------------------------------------------------------------ drawing
def draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "star":
        ang = np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        d.polygon([(cx + a * np.cos(t), cy - a * np.sin(t)) for a, t in zip(rad, ang)], fill=fill)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r * 0.35)))
    elif shape == "cross":
        w = r * 0.35
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {"optimize": False}))
    return buf.getvalue()


# the image questions about one shape: kind -> (size, colour, shape) -> (question, answer)
OBJECT_QUESTIONS = {
    "colour": lambda size, colour, shape: (f"what colour is the {shape}?", f"{colour}."),
    "shape": lambda size, colour, shape: (f"what shape is {colour}?", f"a {shape}."),
    "size": lambda size, colour, shape: (f"is the {colour} {shape} big or small?", f"{size}."),
}
_OBJECT_KINDS = {0: "colour", 1: "shape", 3: "size"}  # _scene's kind draws (2: count, 4: position)


def _scene(rng: np.random.Generator) -> dict[str, Any]:
    """One or two shapes; returns the picture, its caption and a question/answer pair."""
    n = int(rng.integers(1, 3))
    colours = [str(c) for c in rng.choice(COLOURS, n, replace=False)]
    shapes = [str(s) for s in rng.choice(SHAPES, n, replace=False)]
    sizes = [str(rng.choice(["small", "big"])) for _ in range(n)]
    if n == 1:
        side = int(rng.choice([56, 84]))
        h = w = side
        centres = [(w / 2 + rng.uniform(-4, 4), h / 2 + rng.uniform(-4, 4))]
        layout = None
    else:
        layout = str(rng.choice(["horizontal", "vertical"]))
        h, w = (56, 112) if layout == "horizontal" else (112, 56)
        a, b = (w / 4, h / 2), (3 * w / 4, h / 2)
        if layout == "vertical":
            a, b = (w / 2, h / 4), (w / 2, 3 * h / 4)
        centres = [a, b]
    img = Image.new("RGB", (w, h), BACKGROUND)
    d = ImageDraw.Draw(img)
    for c, s, z, (cx, cy) in zip(colours, shapes, sizes, centres):
        draw_shape(d, s, cx, cy, (0.42 if z == "big" else 0.24) * min(h, w), RGB[c])
    things = [f"{z} {c} {s}" for c, s, z in zip(colours, shapes, sizes)]
    if n == 1:
        caption = f"there is one shape. it is a {things[0]}. the background is grey."
    else:
        rel = "left of" if layout == "horizontal" else "above"
        caption = f"there are two shapes. the {things[0]} is {rel} the {things[1]}. the background is grey."
    kind = int(rng.integers(0, 5 if n == 2 else 4))
    i = int(rng.integers(0, n))
    if kind in _OBJECT_KINDS:
        q, a = OBJECT_QUESTIONS[_OBJECT_KINDS[kind]](sizes[i], colours[i], shapes[i])
    elif kind == 2:
        q, a = "how many shapes are there?", f"{NUMBER_WORDS[n]}."
    else:
        j = 1 - i
        first, second = ("left", "right") if layout == "horizontal" else ("above", "below")
        rel = "left or right of" if layout == "horizontal" else "above or below"
        q = f"is the {colours[i]} {shapes[i]} {rel} the {colours[j]} {shapes[j]}?"
        a = f"{first if i == 0 else second}."
    return {"image": img, "caption": caption, "question": q, "answer": a}


# ------------------------------------------------------------------ subsets
def images(split: str, count: int, seed: int = 0) -> Iterator[tuple[str, dict]]:
    rng = _rng("images", split, seed)
    for k in range(count):
        s = _scene(rng)
        yield f"{k:06d}", {"id": f"images-{split}-{k}", "image": _encode(s["image"], "PNG"),
                           "caption": s["caption"], "question": s["question"], "answer": s["answer"]}


def interleaved_images(split: str, count: int, seed: int = 0) -> Iterator[tuple[str, dict]]:
    rng = _rng("interleaved_images", split, seed)
    for k in range(count):
        scenes = [_scene(rng) for _ in range(int(rng.integers(2, 4)))]
        parts = ["a page of pictures."]
        for j, s in enumerate(scenes):
            parts.append(f"picture {NUMBER_WORDS[j + 1]}: {IMAGE_MARKER} {s['caption']}")
        yield f"{k:06d}", {"id": f"interleaved_images-{split}-{k}", "text": " ".join(parts),
                           "images": [_encode(s["image"], "PNG") for s in scenes]}


_MOVES = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}


def videos(split: str, count: int, seed: int = 0, tts: Any = None) -> Iterator[tuple[str, dict]]:
    rng = _rng("videos", split, seed)
    tts = tts or BuiltinTTS()
    for k in range(count):
        side = int(rng.choice([56, 84]))
        colour, shape = str(rng.choice(COLOURS)), str(rng.choice(SHAPES))
        size = str(rng.choice(["small", "big"]))
        move = str(rng.choice(list(_MOVES)))
        dx, dy = _MOVES[move]
        r = (0.22 if size == "big" else 0.14) * side
        step = (side - 2.6 * r) / 3
        x0 = side / 2 - dx * 1.5 * step
        y0 = side / 2 - dy * 1.5 * step
        frames = []
        for f in range(4):
            img = Image.new("RGB", (side, side), BACKGROUND)
            draw_shape(ImageDraw.Draw(img), shape, x0 + dx * f * step, y0 + dy * f * step, r, RGB[colour])
            frames.append(_encode(img, "JPEG"))
        first = f"a {size} {colour} {shape} moves to the {move}."
        caption = f"{first} it moves for four seconds. the background is grey."
        kind = int(rng.integers(0, 3))
        if kind == 0:
            q, a = f"where does the {colour} {shape} move?", f"to the {move}."
        elif kind == 1:
            q, a = "what colour is the moving shape?", f"{colour}."
        else:
            q, a = f"which shape moves to the {move}?", f"a {shape}."
        narrated = k % 3 == 0
        audio = encode_wav(tts(first, int(rng.integers(0, 44)))) if narrated else b""
        yield f"{k:06d}", {"id": f"videos-{split}-{k}", "frames": frames, "fps": np.float32(1.0), "audio": audio,
                           "audio_transcript": first if narrated else "", "caption": caption, "question": q,
                           "answer": a}


def _utterance(rng: np.random.Generator) -> str:
    kind = int(rng.integers(0, 3))
    c, s = str(rng.choice(COLOURS)), str(rng.choice(SHAPES))
    if kind == 0:
        return f"a {rng.choice(['small', 'big'])} {c} {s}."
    if kind == 1:
        n = int(rng.integers(2, 10))
        return f"there are {NUMBER_WORDS[n]} {c} {plural(s)}."
    c2, s2 = str(rng.choice([x for x in COLOURS if x != c])), str(rng.choice(SHAPES))
    return f"the {c} {s} is {rng.choice(['above', 'below', 'next to'])} the {c2} {s2}."


def speech(split: str, count: int, seed: int = 0, tts: Any = None) -> Iterator[tuple[str, dict]]:
    rng = _rng("speech", split, seed)
    tts = tts or BuiltinTTS()
    for k in range(count):
        text = _utterance(rng)
        voice = int(rng.integers(0, 44))
        yield f"{k:06d}", {"id": f"speech-{split}-{k}", "audio": encode_wav(tts(text, voice)), "transcript": text,
                           "translation": translate(text), "voice": np.int32(voice)}


def _question(rng: np.random.Generator) -> tuple[str, str]:
    kind = int(rng.integers(0, 3))
    if kind == 0:
        a, b = (int(x) for x in rng.integers(0, 10, 2))
        return f"what is {a} plus {b}?", f"it is {a + b}."
    if kind == 1:
        n = int(rng.integers(0, 9))
        return f"what comes after {n}?", f"{n + 1} comes next."
    c = str(rng.choice(COLOURS))
    return f"say the colour {c}.", f"{c}."


def spoken_qa(split: str, count: int, seed: int = 0, tts: Any = None) -> Iterator[tuple[str, dict]]:
    rng = _rng("spoken_qa", split, seed)
    tts = tts or BuiltinTTS()
    for k in range(count):
        q, a = _question(rng)
        v_q, v_a = int(rng.integers(0, 44)), int(rng.integers(0, 44))
        yield f"{k:06d}", {"id": f"spoken_qa-{split}-{k}", "audio": encode_wav(tts(q, v_q)), "transcript": q,
                           "answer": a, "answer_audio": encode_wav(tts(a, v_a))}


def interleaved_audio(split: str, count: int, seed: int = 0, tts: Any = None) -> Iterator[tuple[str, dict]]:
    rng = _rng("interleaved_audio", split, seed)
    tts = tts or BuiltinTTS()
    for k in range(count):
        sents = [_utterance(rng) for _ in range(int(rng.integers(3, 5)))]
        spoken = sorted(rng.choice(len(sents), int(rng.integers(1, 3)), replace=False).tolist())
        voice = int(rng.integers(0, 44))
        parts, audios = [], []
        for j, s in enumerate(sents):
            if j in spoken:
                parts.append(AUDIO_MARKER)
                audios.append(encode_wav(tts(s, voice)))
            else:
                parts.append(s)
        yield f"{k:06d}", {"id": f"interleaved_audio-{split}-{k}", "text": " ".join(parts), "audios": audios,
                           "transcripts": [sents[j] for j in spoken]}


def text(split: str, count: int, seed: int = 0) -> Iterator[tuple[str, dict]]:
    docs = generate_documents(count, seed * 1000 + 7 + _SPLIT_SEED[split])
    for k, d in enumerate(docs):
        yield f"{k:06d}", {"id": f"text-{split}-{k}", "text": d}


GENERATORS = {"images": images, "interleaved_images": interleaved_images, "videos": videos, "speech": speech,
              "spoken_qa": spoken_qa, "interleaved_audio": interleaved_audio, "text": text}


def generate(subset: str, split: str, size: str = "default", seed: int = 0, tts: Any = None) -> Iterator[tuple[str, dict]]:
    """(key, example) pairs of one subset and split; `tts` replaces the built-in
    synthesiser for the subsets with speech (e.g. omni_jax/data/espeak.EspeakTTS)."""
    if subset not in GENERATORS:
        raise ValueError(f"unknown default-dataset subset {subset!r}; known: {sorted(GENERATORS)}")
    if size not in SIZES:
        raise ValueError(f"unknown default-dataset size {size!r}; known: {sorted(SIZES)}")
    count = SIZES[size][subset][0 if split == "train" else 1]
    if tts is not None and subset in ("videos", "speech", "spoken_qa", "interleaved_audio"):
        return GENERATORS[subset](split, count, seed, tts=tts)
    return GENERATORS[subset](split, count, seed)

