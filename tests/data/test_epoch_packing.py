"""omni_jax/data/epoch_packing.py equals the straightforward greedy first-fit packer; a component's
plan keeps only the last epochs' row lists and caches the epochs' row counts."""

import numpy as np
import pytest

from omni_jax.data.epoch_packing import pack_epoch


def reference_pack(order, fp, cap, open_rows, T):
    """The per-row numpy packer the compact one replaced (omni_jax/data/mixture.py before)."""
    closed, open_ = [], []
    for r in order:
        f = fp[r]
        pieces = [(r, -1, f)] if f[0] <= T else [
            (r, p, np.concatenate([[min(T, f[0] - s)], f[1:]])) for p, s in enumerate(range(0, int(f[0]), T))]
        for rec, piece, x in pieces:
            for used, entries in open_:
                if np.all(used + x <= cap):
                    used += x
                    entries.append((rec, piece))
                    break
            else:
                if len(open_) >= open_rows:
                    closed.append(open_.pop(0)[1])
                open_.append((x.copy(), [(rec, piece)]))
            full = [k for k, (used, _) in enumerate(open_) if used[0] >= cap[0]]
            for k in reversed(full):
                closed.append(open_.pop(k)[1])
    closed.extend(entries for _, entries in open_)
    return closed


@pytest.mark.parametrize("open_rows", [1, 3, 8])
@pytest.mark.parametrize("media", [False, True])
def test_equals_the_reference_packer(open_rows, media):
    rng = np.random.default_rng(open_rows + 10 * media)
    n, T = 3000, 64
    fp = np.zeros((n, 6), np.int32)
    fp[:, 0] = rng.integers(1, 3 * T if not media else T, n)  # long texts get split when no media
    if media:
        fp[:, 1] = rng.integers(0, 40, n)
        fp[:, 2] = (fp[:, 1] > 0) * rng.integers(1, 3, n)
        fp[:, 3] = rng.integers(0, 2, n)
    cap = np.array([T, 100, 4, 2, 0, 0])
    order = rng.permutation(n)
    dims = [0] + [i for i in range(1, 6) if fp[:, i].any()]
    entries, offsets = pack_epoch(order, fp, cap, open_rows, T, dims)
    want = reference_pack(order, fp.astype(np.int64), cap, open_rows, T)
    got = [[tuple(e) for e in entries[offsets[k]:offsets[k + 1]].tolist()] for k in range(len(offsets) - 1)]
    assert got == [[(int(a), int(b)) for a, b in row] for row in want]
    assert len(got) > n // 8


def test_plans_keep_only_the_last_epochs(data_dir):
    from tests.data.test_mixture import make_config
    from omni_jax.data.omni_pipeline import OmniPipeline

    plan = OmniPipeline(make_config()).plans[-1]
    n = plan.rows_per_epoch()
    first = [plan.row(j).copy() for j in range(3)]
    for e in range(1, 6):
        plan.row(e * n)
    assert len(plan._plans) == plan.KEEP_EPOCHS
    assert len(plan._starts) >= 6  # one row count per planned epoch
    for j in range(3):  # epoch 0 is planned again, identically
        np.testing.assert_array_equal(plan.row(j), first[j])
    # the row counts of the planned epochs are cached: a resumed run packs only the epoch it reads
    fresh = OmniPipeline(make_config()).plans[-1]
    late = plan._starts[5] + 1
    np.testing.assert_array_equal(fresh.row(late), plan.row(late))
    assert list(fresh._plans) == [5]
