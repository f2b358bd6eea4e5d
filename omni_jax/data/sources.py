"""Random-access record sources for the mixture pipeline.

A source is anything with `__len__` and `__getitem__(i) -> dict` (grain's
RandomAccessDataSource protocol). `open_source(spec, split, data_dir)` resolves the
`dataset` string of a mixture component:

  "omni_images/shapes"       an omni_jax TFDS builder and config (prepared if missing)
  "omni_images"              the same with the builder's default config
  "/abs/path/to/dataset/1.0.0"  any TFDS dataset prepared with file_format=array_record
  "text_corpus"              the generated text corpus (omni_jax/data/text_corpus.py),
                             sized by the component's `num_documents` / `corpus_seed`
  "memory:<name>"            records registered with `register_memory_source` (tests,
                             notebooks)
"""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping, Sequence

_MEMORY: dict[str, Sequence[Mapping[str, Any]]] = {}
_CACHE: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def register_memory_source(name: str, records: Sequence[Mapping[str, Any]]) -> None:
    _MEMORY[name] = list(records)
    for k in [k for k in _CACHE if k[0] == f"memory:{name}"]:
        del _CACHE[k]


class ListSource:
    def __init__(self, records: Sequence[Mapping[str, Any]], name: str):
        self._records, self.name = records, name

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> Mapping[str, Any]:
        return self._records[i]

    def __repr__(self) -> str:
        return f"ListSource({self.name!r}, {len(self)} records)"


def open_source(spec: str, split: str, data_dir: str | None, options: Mapping[str, Any] | None = None) -> Any:
    """The records of one dataset split (cached per process)."""
    options = dict(options or {})
    key = (spec, split, data_dir, tuple(sorted(options.items())))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _open(spec, split, data_dir, options)
        return _CACHE[key]


def _open(spec: str, split: str, data_dir: str | None, options: Mapping[str, Any]) -> Any:
    if spec.startswith("memory:"):
        name = spec[len("memory:"):]
        if name not in _MEMORY:
            raise ValueError(f"dataset {spec!r} is not registered (register_memory_source); known: {sorted(_MEMORY)}")
        return ListSource(_MEMORY[name], spec)
    if spec == "text_corpus":
        from omni_jax.data.text_corpus import generate_documents

        n, seed = int(options.get("num_documents", 4000)), int(options.get("corpus_seed", 0))
        docs = generate_documents(n, seed + (0 if split == "train" else 1_000_003))
        return ListSource([{"id": f"text_corpus-{i}", "text": d} for i, d in enumerate(docs)], spec)
    import tensorflow_datasets as tfds

    if os.path.isabs(spec):
        if not os.path.isdir(spec):
            raise ValueError(f"dataset directory {spec!r} does not exist")
        builder = tfds.builder_from_directory(spec)
    else:
        from omni_jax.data.builders import prepare

        builder = prepare(spec, data_dir)
    splits = list(builder.info.splits.keys())
    base = split.split("[")[0]
    if base not in splits:
        raise ValueError(f"dataset {spec!r} has no split {base!r}; it has {splits}")
    return builder.as_data_source(split=split)
