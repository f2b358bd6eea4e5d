"""Greedy first-fit packing of one epoch of a mixture component into rows (compact output).

The algorithm of omni_jax/data/mixture.py (Levanter's GreedyPrepackedDataset idea): records
are taken in the epoch's order; each (or each row-sized piece of a split long text) goes
into the first of at most `open_rows` open rows where every budget (tokens, patches,
vision items, audio and speech chunks, tiles) still fits; when no open row fits, the
oldest open row is closed and a new one opened; a row whose token budget is full closes.

Written for 10^7 records: footprints are read in chunks as Python ints, only the budget
columns the component uses are compared, and the result is two flat arrays
(int32 entries (record, piece) and int64 row offsets), not one Python object per row.
"""

from __future__ import annotations

from array import array

import numpy as np

CHUNK = 1 << 16


def pack_epoch(order: np.ndarray, fp: np.ndarray, cap: np.ndarray, open_rows: int, seq_len: int,
               dims: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(entries (m, 2) int32: record, piece (-1 = whole sample); offsets (rows + 1,)): row k is
    entries[offsets[k]:offsets[k + 1]]. `dims` are the footprint columns to respect
    (column 0, tokens, first); the others are zero for every record in `order`."""
    caps = [int(cap[i]) for i in dims]
    c0, nd, T = caps[0], len(dims), int(seq_len)
    ent, offs = array("i"), array("q", [0])  # record ids and pieces fit in int32
    used: list[list[int]] = []
    rows: list[list[int]] = []

    def close(k: int) -> None:
        used.pop(k)
        ent.extend(rows.pop(k))
        offs.append(len(ent) // 2)

    for start in range(0, len(order), CHUNK):
        recs = order[start:start + CHUNK]
        vals = fp[recs][:, dims].tolist()
        for r, v in zip(recs.tolist(), vals):
            n = v[0]
            pieces = ((-1, v),) if n <= T else [(p, [min(T, n - s)] + v[1:]) for p, s in enumerate(range(0, n, T))]
            for piece, f in pieces:
                k = -1
                if nd == 1:
                    f0 = f[0]
                    for i, u in enumerate(used):
                        if u[0] + f0 <= c0:
                            k = i
                            break
                else:
                    for i, u in enumerate(used):
                        for d in range(nd):
                            if u[d] + f[d] > caps[d]:
                                break
                        else:
                            k = i
                            break
                if k >= 0:
                    u = used[k]
                    for d in range(nd):
                        u[d] += f[d]
                    rows[k] += (r, piece)
                else:
                    if len(used) >= open_rows:
                        close(0)
                    used.append(list(f))
                    rows.append([r, piece])
                    k = len(used) - 1
                if used[k][0] >= c0:
                    close(k)
    while used:
        close(0)
    return (np.frombuffer(ent, np.int32).reshape(-1, 2) if len(ent) else np.zeros((0, 2), np.int32),
            np.frombuffer(offs, np.int64))
