"""Tokenizers: a byte-level tokenizer for tiny models and a wrapper for the release's.

Both expose the same small interface:
  encode(text) -> list[int]   (no special tokens added)
  decode(ids) -> str          (special tokens rendered as their release strings)
  special(name) -> int        (names from omni_jax/data/special_tokens.py)
  vocab_size, pad_id (= 0: embedding row 0 is the padding row, ARCHITECTURE.md 1.1)
"""

from __future__ import annotations

import os

from typing import Iterable, Sequence

from omni_jax.data.special_tokens import NAMES, RELEASE_IDS, RELEASE_STRINGS


class ByteTokenizer:
    """UTF-8 bytes 1..255 are ids 1..255 (byte 0 is never produced: id 0 is padding);
    special tokens follow at 256, 257, ... in the order of special_tokens.NAMES."""

    pad_id = 0

    def __init__(self, vocab_size: int = 384):
        self._special = {n: 256 + i for i, n in enumerate(NAMES)}
        self._by_id = {v: k for k, v in self._special.items()}
        if vocab_size < 256 + len(NAMES):
            raise ValueError(f"ByteTokenizer needs vocab_size >= {256 + len(NAMES)}, got {vocab_size}")
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        if b"\x00" in data:
            raise ValueError("text contains a NUL byte, which is reserved for padding")
        return list(data)

    def decode(self, ids: Iterable[int]) -> str:
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if 0 < i < 256:
                buf.append(i)
                continue
            if buf:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
            if i in self._by_id:
                out.append(RELEASE_STRINGS[self._by_id[i]])
        if buf:
            out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def special(self, name: str) -> int:
        try:
            return self._special[name]
        except KeyError:
            raise KeyError(f"unknown special token {name!r}; known: {list(NAMES)}") from None

    @property
    def eos_id(self) -> int:
        return self.special("eos")


class ReleaseTokenizer:
    """The released Qwen2.5-based tokenizer, loaded from a local directory with
    transformers (an optional extra; nothing is downloaded)."""

    pad_id = 0

    def __init__(self, path: str):
        try:
            from transformers import AutoTokenizer
        except ImportError as e:  # pragma: no cover
            raise ImportError("the release tokenizer needs transformers: pip install 'omni_jax[torch]'") from e
        self._tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        self.vocab_size = 152064
        for name, s in RELEASE_STRINGS.items():
            got = self._tok.convert_tokens_to_ids(s)
            if got != RELEASE_IDS[name]:
                raise ValueError(f"tokenizer at {path!r} maps {s} to {got}, expected {RELEASE_IDS[name]}")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))

    def special(self, name: str) -> int:
        return RELEASE_IDS[name]

    @property
    def eos_id(self) -> int:
        return RELEASE_IDS["eos"]


PATH_FLAG = "--config.data.tokenizer.path"


def check_tokenizer_config(kind: str, path: str | None, where: str = "config.data.tokenizer") -> None:
    """The tokenizer settings are usable: a known kind, and for 'release' an existing directory.
    launch/train.py calls this right after parsing the flags, before any model work."""
    if kind == "byte":
        return
    if kind != "release":
        raise ValueError(f"{where}.kind={kind!r}; use 'byte' or 'release'")
    if not path:
        raise ValueError(f"{where}.kind='release' needs the released tokenizer's files (tokenizer.json, "
                         f"tokenizer_config.json, vocab.json; nothing is downloaded): pass {PATH_FLAG}=DIR")
    if not os.path.isdir(path):
        raise ValueError(f"{where}.path={path!r} is not a directory; pass {PATH_FLAG}=DIR with the released "
                         "tokenizer's files")


def make_tokenizer(kind: str = "byte", vocab_size: int = 384, path: str | None = None):
    check_tokenizer_config(kind, path)
    if kind == "byte":
        return ByteTokenizer(vocab_size)
    return ReleaseTokenizer(path)
