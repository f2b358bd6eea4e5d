"""Packing token sequences into fixed-length rows with segment ids and positions.

Each example is (inputs, targets, loss_mask) of equal length; rows get
  tokens, targets, loss_mask, segment_ids (1, 2, ... per example; 0 = padding),
  positions (restarting at 0 for every example).
Greedy first-fit in the given order (deterministic). An example longer than the row is
split into row-sized pieces, each its own segment (positions restart), and counted.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

FIELDS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


def lm_example(ids: Sequence[int], eos_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A document -> next-token (inputs, targets, mask): ids + [eos] shifted by one."""
    seq = np.asarray(list(ids) + [eos_id], np.int32)
    return seq[:-1], seq[1:], np.ones(len(seq) - 1, np.float32)


def pack(examples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], seq_len: int) -> dict[str, np.ndarray]:
    """Packs examples into rows of `seq_len`. Returns {field: (rows, seq_len)} arrays."""
    rows: list[dict[str, np.ndarray]] = []
    cur = None
    fill = seg = 0

    def new_row():
        return {f: np.zeros(seq_len, np.float32 if f == "loss_mask" else np.int32) for f in FIELDS}

    pieces = []
    for inp, tgt, msk in examples:
        for s in range(0, max(len(inp), 1), seq_len):
            pieces.append((inp[s:s + seq_len], tgt[s:s + seq_len], msk[s:s + seq_len]))
    for inp, tgt, msk in pieces:
        n = len(inp)
        if n == 0:
            continue
        if cur is None or fill + n > seq_len:
            if cur is not None:
                rows.append(cur)
            cur, fill, seg = new_row(), 0, 0
        seg += 1
        sl = slice(fill, fill + n)
        cur["tokens"][sl], cur["targets"][sl], cur["loss_mask"][sl] = inp, tgt, msk
        cur["segment_ids"][sl] = seg
        cur["positions"][sl] = np.arange(n)
        fill += n
    if cur is not None:
        rows.append(cur)
    if not rows:
        return {f: np.zeros((0, seq_len), np.float32 if f == "loss_mask" else np.int32) for f in FIELDS}
    return {f: np.stack([r[f] for r in rows]) for f in FIELDS}
