"""Reading and writing PyTorch-style weights as safetensors (single file or sharded + index).

Loading never unpickles: `.bin` / `.pt` / `.pth` files are refused with a message naming
the file and how to convert it. Arrays come back as numpy (bf16 as ml_dtypes.bfloat16).
Writes are atomic per file (write to a temporary name, then rename), so an interrupted
export never leaves a truncated file under the final name.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping

import numpy as np

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _safetensors():
    try:
        import safetensors.numpy  # noqa: F401
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "safetensors is needed to read or write PyTorch weights: pip install 'omni_jax[torch]'"
        ) from e
    import safetensors.numpy as stn
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
