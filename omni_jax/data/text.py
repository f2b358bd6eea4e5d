"""The text pipeline: documents -> tokens -> packed rows -> step-indexed batches.

Rows come from an endless stream of epochs; epoch e packs the documents in the order of
a permutation seeded by (seed, e). Row r of the stream therefore depends only on the
seed, and the global batch at step s is rows [s*B, (s+1)*B).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Sequence

import numpy as np

from omni_jax.data.iterator import StepIndexedIterator, process_rows
from omni_jax.data.packing import FIELDS, lm_example, pack
from omni_jax.data.text_corpus import generate_documents
from omni_jax.data.tokenizer import make_tokenizer


class PackedRowStream:
    """Endless, deterministic stream of packed rows over shuffled epochs."""

    def __init__(self, token_docs: Sequence[Sequence[int]], seq_len: int, eos_id: int, seed: int):
        if not token_docs:
            raise ValueError("the text corpus is empty")
        self._examples = [lm_example(d, eos_id) for d in token_docs]
        self._seq_len, self._seed = seq_len, seed
        self._epochs: list[dict[str, np.ndarray]] = []
        self._starts = [0]
        self._lock = threading.Lock()

    def _epoch(self, e: int) -> dict[str, np.ndarray]:
        with self._lock:
            while len(self._epochs) <= e:
                k = len(self._epochs)
                order = np.random.default_rng([self._seed, k]).permutation(len(self._examples))
                rows = pack((self._examples[i] for i in order), self._seq_len)
                self._epochs.append(rows)
                self._starts.append(self._starts[-1] + len(rows["tokens"]))
            return self._epochs[e]

    def rows(self, start: int, count: int) -> dict[str, np.ndarray]:
        out = {f: [] for f in FIELDS}
        r = start
        while r < start + count:
            e = 0
            while True:
                self._epoch(e)
                if r < self._starts[e + 1]:
                    break
                e += 1
            ep = self._epoch(e)
            lo = r - self._starts[e]
            hi = min(lo + (start + count - r), len(ep["tokens"]))
            for f in FIELDS:
                out[f].append(ep[f][lo:hi])
            r += hi - lo
        return {f: np.concatenate(v) for f, v in out.items()}


def make_text_iterator(config: Any, *, start_step: int, process_index: int, process_count: int) -> StepIndexedIterator:
    d = config.data
    tok = make_tokenizer(d.tokenizer.kind, config.model.llm.vocab_size, d.tokenizer.get("path"))
    docs = generate_documents(d.num_documents, d.corpus_seed)
    stream = PackedRowStream([tok.encode(x) for x in docs], d.seq_len, tok.eos_id, d.seed)
    B = config.train.batch_size
    mine = process_rows(B, process_index, process_count)
    fp = hashlib.sha1(repr((d.num_documents, d.corpus_seed, d.seq_len, d.seed, B, d.tokenizer.kind)).encode()).hexdigest()[:12]

    def local_batch(step: int):
        return stream.rows(step * B + mine.start, mine.stop - mine.start)

    return StepIndexedIterator(local_batch, start_step=start_step, fingerprint=fp)
