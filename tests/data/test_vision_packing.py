"""omni_jax/data/vision_preprocessing.py packing helpers vs transformers' vision position ids."""

import numpy as np
import pytest
import torch
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

from omni_jax.data import vision_preprocessing as vp


@pytest.mark.parametrize("grid", [(1, 4, 6), (2, 2, 8), (1, 2, 2)])
def test_patch_positions_equal_transformers(grid):
    want = get_vision_position_ids(torch.tensor([grid]), 2).numpy()
    assert np.array_equal(vp.patch_positions(grid), want)


def test_pack_row_layout():
    rs = np.random.RandomState(0)
    items = [(rs.randn(24, vp.PATCH_DIM).astype(np.float32), (1, 4, 6)),
             (rs.randn(32, vp.PATCH_DIM).astype(np.float32), (2, 4, 4))]
    row = vp.pack_vision_row(items, 64)
    assert np.array_equal(row["patches"][:24], items[0][0]) and np.array_equal(row["patches"][24:56], items[1][0])
    assert not row["patches"][56:].any()
    # one segment per image and per temporal frame (transformers' cu_seqlens), 0 = padding
    cu = get_vision_cu_seqlens(torch.tensor([g for _, g in items])).numpy()
    assert cu.tolist() == [0, 24, 40, 56]
    assert row["segment_ids"].tolist() == [1] * 24 + [2] * 16 + [3] * 16 + [0] * 8
    assert row["token_item"].tolist() == [0] * 6 + [1] * 8 + [-1] * 2
    pos = get_vision_position_ids(torch.tensor([g for _, g in items]), 2).numpy()
    assert np.array_equal(row["positions"][:56], pos)
    batch = vp.pack_vision_batch([items[:1], items[1:]], 64)
    assert batch["patches"].shape == (2, 64, vp.PATCH_DIM) and batch["segment_ids"].shape == (2, 64)


def test_pack_errors_name_the_item_and_fix():
    p = np.zeros((24, vp.PATCH_DIM), np.float32)
    with pytest.raises(ValueError, match="max_patches=30 must be a multiple of 4"):
        vp.pack_vision_row([(p, (1, 4, 6))], 30)
    with pytest.raises(ValueError, match=r"vision item 1 \(24 patches, grid \(1, 4, 6\)\) does not fit the row: "
                                         r"24 of max_patches=40 are used. Raise max_patches or lower max_pixels"):
        vp.pack_vision_row([(p, (1, 4, 6)), (p, (1, 4, 6))], 40)
    with pytest.raises(ValueError, match=r"vision item 0: patches have shape \(24, 1176\), grid \(1, 4, 4\) needs"):
        vp.pack_vision_row([(p, (1, 4, 4))], 40)
    with pytest.raises(ValueError, match="odd side"):
        vp.pack_vision_row([(np.zeros((15, vp.PATCH_DIM), np.float32), (1, 3, 5))], 40)
