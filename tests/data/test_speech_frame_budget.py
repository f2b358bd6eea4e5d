"""config.data.shapes.max_speech_frames: the audio head's per-row budget is a packing capacity
(omni_jax/data/mixture.py footprint `speech_frames`), so rows never hold more audio-head
positions than the task gathers (tasks/omni.py); samples that can never fit are named."""

import numpy as np
import pytest

from configs.omni15 import stages
from omni_jax.data.omni_batch import OmniShapes
from omni_jax.data.omni_pipeline import OmniPipeline


def _config(budget: int):
    c = stages.base("test")
    c.data.mixture = {"sqa": dict(dataset="omni_spoken_qa/shapes_tiny", format="speech_qa", weight=1.0,
                                  split="train")}
    c.data.shapes.max_speech_frames = budget
    return c


def _head_positions(raw) -> np.ndarray:
    return ((raw["speech_loss_mask"] > 0)
            & ((raw["speech_target_index"] >= 0) | (raw["speech_target_end"] > 0))).sum(1)


def test_rows_stay_within_the_speech_frame_budget():
    default = OmniPipeline(_config(0))
    assert default.shapes.speech_frame_budget == 2 * (75 + 1)  # 2 chunks of 600 mel frames -> 75 tokens
    per_sample = default.plans[0].fp[default.plans[0].valid, 6]
    assert per_sample.max() <= 16  # the embedded spoken replies: 7..15 audio-head positions each
    loose = _head_positions(default.build_rows(range(8)))
    assert loose.max() > 16  # without a tighter budget, rows pack several replies
    tight = OmniPipeline(_config(16))
    got = _head_positions(tight.build_rows(range(8)))
    print("audio-head positions per row, budget 152:", loose.tolist(), "budget 16:", got.tolist())
    assert got.max() <= 16 and got.min() > 0


def test_samples_over_the_budget_are_named():
    with pytest.raises(ValueError, match=r"speech_frames \d+ > config.data.shapes.max_speech_frames=6"):
        OmniPipeline(_config(6))


def test_budget_without_speech_chunks_is_an_error():
    with pytest.raises(ValueError, match="max_speech_frames=8 needs max_speech_chunks > 0"):
        OmniShapes(seq_len=64, max_speech_frames=8)
    assert OmniShapes(seq_len=64, max_speech_chunks=1, mel_frames=3000).speech_frame_budget == 64  # min(T, 376)
