"""Reading and writing PyTorch-style weights as safetensors (single file or sharded + index).

Loading never unpickles: `.bin` / `.pt` / `.pth` files are refused with a message naming
the file and how to convert it. Arrays come back as numpy (bf16 as ml_dtypes.bfloat16).
Writes are atomic per file (write to a temporary name, then rename), so an interrupted
export never leaves a truncated file under the final name.
"""

from __future__ import annotations

import collections.abc
import json
import os
from typing import Any, Iterator, Mapping

import numpy as np

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _safetensors():
    try:
        import safetensors.numpy as stn
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "safetensors is needed to read or write PyTorch weights: pip install 'omni_jax[torch]'"
        ) from e
    return stn, safe_open


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        index = os.path.join(path, INDEX_NAME)
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            return [os.path.join(path, n) for n in sorted(set(weight_map.values()))]
        single = os.path.join(path, SINGLE_NAME)
        if os.path.exists(single):
            return [single]
        found = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
        if found:
            return [os.path.join(path, n) for n in found]
        pickled = sorted(n for n in os.listdir(path) if n.endswith(_PICKLE_SUFFIXES))
        hint = (f" It holds pickle files {pickled[:3]}, which omni_jax never loads; convert them "
                "once with transformers (`save_pretrained(..., safe_serialization=True)`).") if pickled else ""
        raise FileNotFoundError(f"no safetensors weights in directory {path!r}.{hint}")
    if path.endswith(_PICKLE_SUFFIXES):
        raise ValueError(
            f"{path!r} is a pickle checkpoint; omni_jax never unpickles weights. Convert it to "
            "safetensors (transformers `save_pretrained(..., safe_serialization=True)`)."
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such weights file: {path!r}")
    return [path]


def iter_tensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, numpy array) one tensor at a time (low peak memory)."""
    _, safe_open = _safetensors()
    for f in _files(path):
        with safe_open(f, framework="numpy") as fh:
            for name in fh.keys():
                yield name, fh.get_tensor(name)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A safetensors file, or a directory (index-sharded or single-file), into a dict."""
    return dict(iter_tensors(path))


def tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes without reading tensor data."""
    _, safe_open = _safetensors()
    out = {}
    for f in _files(path):
        with safe_open(f, framework="numpy") as fh:
            for name in fh.keys():
                out[name] = tuple(fh.get_slice(name).get_shape())
    return out


class _LazyTensor:
    """A tensor of a safetensors file: `.shape` / `.dtype` from the header, data read by
    `np.asarray` (one tensor at a time, so importing a large checkpoint never holds it whole)."""

    __slots__ = ("file", "name", "shape", "_dtype")

    def __init__(self, file: str, name: str, shape: tuple[int, ...], dtype: str):
        self.file, self.name, self.shape, self._dtype = file, name, shape, dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self) -> np.ndarray:
        _, safe_open = _safetensors()
        with safe_open(self.file, framework="numpy") as fh:
            return fh.get_tensor(self.name)

    def __array__(self, dtype=None, copy=None):
        x = self.read()
        return x if dtype is None else x.astype(dtype)

    def __repr__(self):
        return f"<{self.name} {self._dtype}{list(self.shape)} in {os.path.basename(self.file)}>"


class LazyStateDict(collections.abc.Mapping):
    """{name: tensor} over a safetensors file or directory, reading a tensor's data only when
    it is converted with `np.asarray` (headers are read up front). With an index
    (model.safetensors.index.json), its weight_map must agree with the shards' contents."""

    def __init__(self, path: str):
        _, safe_open = _safetensors()
        self.path = path
        self._tensors: dict[str, _LazyTensor] = {}
        for f in _files(path):
            if not os.path.exists(f):
                raise FileNotFoundError(f"{path}: the index names shard {os.path.basename(f)!r}, which does not exist")
            with safe_open(f, framework="numpy") as fh:
                for name in fh.keys():
                    if name in self._tensors:
                        raise ValueError(f"{path}: tensor {name!r} is stored twice ({os.path.basename(self._tensors[name].file)} "
                                         f"and {os.path.basename(f)})")
                    sl = fh.get_slice(name)
                    self._tensors[name] = _LazyTensor(f, name, tuple(sl.get_shape()), sl.get_dtype())
        index = os.path.join(path, INDEX_NAME)
        if os.path.isdir(path) and os.path.exists(index):
            with open(index) as fh:
                weight_map = json.load(fh)["weight_map"]
            wrong = sorted(n for n, t in self._tensors.items()
                           if os.path.basename(t.file) != weight_map.get(n))
            absent = sorted(set(weight_map) - set(self._tensors))
            if wrong or absent:
                raise ValueError(f"{index} does not match the shards: "
                                 + (f"{len(absent)} indexed tensor(s) are in no shard {absent[:5]}; " if absent else "")
                                 + (f"{len(wrong)} tensor(s) are not in the shard the index names {wrong[:5]}" if wrong else "")
                                 + ". The checkpoint is incomplete or was written by two different saves.")

    def __getitem__(self, name: str) -> _LazyTensor:
        return self._tensors[name]

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def open_state_dict(path: str) -> LazyStateDict:
    """Like `load_state_dict`, but lazy: names and shapes now, data per tensor on `np.asarray`."""
    return LazyStateDict(path)


def save_state_dict(
    path: str,
    tensors: Mapping[str, Any],
    *,
    max_shard_bytes: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[str]:
    """Writes `tensors` into directory `path`: one `model.safetensors`, or, when the total
    exceeds `max_shard_bytes`, `model-0000k-of-0000n.safetensors` shards plus the
    Hugging Face index `model.safetensors.index.json`. Returns the files written."""
    stn, _ = _safetensors()
    os.makedirs(path, exist_ok=True)
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in arrays.items():
        if max_shard_bytes and shards[-1] and size + v.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    meta = {"format": "pt", **(metadata or {})}
    if len(shards) == 1:
        names = [SINGLE_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    written = []
    for name, shard in zip(names, shards):
        final = os.path.join(path, name)
        tmp = final + ".tmp"
        stn.save_file(shard, tmp, metadata=meta)
        os.replace(tmp, final)
        written.append(final)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": int(sum(v.nbytes for v in arrays.values()))},
            "weight_map": {k: n for n, s in zip(names, shards) for k in s},
        }
        tmp = os.path.join(path, INDEX_NAME + ".tmp")
        with open(tmp, "w") as f:
            json.dump(index, f, indent=2)
        os.replace(tmp, os.path.join(path, INDEX_NAME))
        written.append(os.path.join(path, INDEX_NAME))
    return written
