"""The embedded default text corpus: generated, deterministic, learnable in minutes.

Short documents about coloured shapes (the same world the embedded images, videos and
speech of omni_jax/data describe), plus small arithmetic facts. A tiny byte-level model
can learn the grammar and vocabulary quickly, so the loss visibly falls within a few
hundred steps; arithmetic lines keep some headroom.
"""

from __future__ import annotations

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
RELATIONS = ("left of", "right of", "above", "below", "next to")
SIZES = ("small", "big", "tiny", "large")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _sentence(rng: np.random.Generator) -> str:
    kind = rng.integers(0, 4)
    c1, c2 = rng.choice(COLOURS, 2, replace=False)
    s1, s2 = rng.choice(SHAPES, 2)
    if kind == 0:
        return f"the {c1} {s1} is {rng.choice(RELATIONS)} the {c2} {s2}."
    if kind == 1:
        n = int(rng.integers(1, 10))
        return f"there {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {c1} {s1}{'' if n == 1 else 's'}."
    if kind == 2:
        return f"a {rng.choice(SIZES)} {c1} {s1} moves to the {rng.choice(['left', 'right', 'top', 'bottom'])}."
    a, b = (int(x) for x in rng.integers(0, 50, 2))
    return f"{a} plus {b} is {a + b}."


def generate_documents(num_documents: int = 4000, seed: int = 0) -> list[str]:
    """`num_documents` documents of 1-5 sentences each, identical for a given seed."""
    rng = np.random.default_rng(seed)
    return [" ".join(_sentence(rng) for _ in range(int(rng.integers(1, 6)))) for _ in range(num_documents)]
