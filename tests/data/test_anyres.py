"""omni_jax/data/anyres.py vs transformers' LLaVA-OneVision (AnyRes) and SigLIP processors."""

import numpy as np
import pytest
from transformers.image_processing_utils import select_best_resolution as hf_select
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from omni_jax.data import anyres


def _img(h, w, seed=0):
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


@pytest.mark.parametrize("hw", [(500, 300), (200, 900), (384, 384), (1000, 1100), (37, 1500)])
def test_tiles_match_llava_onevision_processor(hw):
    res = anyres.candidate_resolutions(4)
    proc = LlavaOnevisionImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                           image_grid_pinpoints=[list(r) for r in res])
    img = _img(*hw)
    want = proc(images=[img], return_tensors="np")["pixel_values"][0].transpose(0, 2, 3, 1)
    tiles, grid = anyres.anyres_tiles(img)
    assert tiles.shape == want.shape == (1 + grid[0] * grid[1], 384, 384, 3)
    d = float(np.abs(tiles - want).max())
    print(f"AnyRes {hw} -> grid {grid}: max abs diff vs LlavaOnevisionImageProcessorPil: {d:.3e}")
    assert d <= 1e-6


def test_resolution_choice_equals_transformers_rule():
    rs = np.random.RandomState(0)
    res = anyres.candidate_resolutions(6)
    for h, w in rs.randint(10, 3000, (300, 2)):
        assert anyres.select_best_resolution(h, w, res) == tuple(hf_select((h, w), res))


def test_candidates_and_token_counts():
    assert anyres.candidate_grids(4) == [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (2, 2), (4, 1)]
    assert anyres.candidate_resolutions(2) == [(384, 384), (384, 768), (768, 384)]
    assert anyres.anyres_token_count((2, 2)) == 5 * 182
    assert anyres.anyres_tiles(_img(300, 1000))[1] == (1, 3)  # a wide image gets a wide grid


def test_video_frames_are_siglip_global_views():
    frames = np.stack([_img(90, 160, s) for s in range(5)])
    got = anyres.preprocess_video(frames, fps=2, max_frames=48)  # 1 fps: frames 0, 2, 4
    proc = SiglipImageProcessorPil(size={"height": 384, "width": 384})
    want = proc(images=[frames[i] for i in (0, 2, 4)], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    assert got.shape == (3, 384, 384, 3)
    assert float(np.abs(got - want).max()) <= 1e-6
    assert len(anyres.preprocess_video(np.stack([_img(8, 8)] * 100), fps=1, max_frames=48)) == 48


def test_pack_tiles_and_errors():
    a, _ = anyres.anyres_tiles(_img(500, 300))  # 3 tiles
    b = anyres.preprocess_video(np.stack([_img(20, 20)] * 2), fps=1)  # 2 frames
    row = anyres.pack_tiles([a, b], max_tiles=8)
    assert row["pixels"].shape == (8, 384, 384, 3)
    assert row["tile_item"].tolist() == [0, 0, 0, 1, 1, -1, -1, -1]
    assert np.array_equal(row["pixels"][3:5], b) and not row["pixels"][5:].any()
    with pytest.raises(ValueError, match=r"item 1 \(2 tiles\) does not fit the row: 3 of max_tiles=4"):
        anyres.pack_tiles([a, b], max_tiles=4)
    with pytest.raises(ValueError, match="uint8"):
        anyres.anyres_tiles(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="not a multiple of the 384 px tile"):
        anyres.anyres_tiles(_img(10, 10), resolutions=[(384, 500)])
