"""omni_pipeline.sample_context / single_sample_rows: one formatted record per row, written by the
trainer's row code (what tests/tasks/test_loss_masks.py and benchmarks/vision_reading.py build on)."""

import itertools

import numpy as np
import pytest

from configs.omni15 import stages
from omni_jax.data import default_dataset, formats
from omni_jax.data.omni_pipeline import sample_context, single_sample_rows


def _samples(ctx, n):
    records = [r for _, r in itertools.islice(default_dataset.generate("images", "test", "tiny"), n)]
    return [formats.FORMATS["image_qa"].fn(r, ctx, np.random.default_rng(0), "image_qa") for r in records]


def test_each_row_holds_its_own_sample_only():
    shapes, ctx = sample_context(stages.base("test"), tts=False)
    assert ctx.tts is None
    samples = _samples(ctx, 2)
    rows = single_sample_rows(samples, ctx, shapes)
    assert rows["segment_ids"].shape[0] == 2
    for i, s in enumerate(samples):
        n = len(s.ids) - 1
        assert set(np.unique(rows["segment_ids"][i, :n])) == {1}, "one segment, the sample's"
        assert not rows["segment_ids"][i, n:].any(), "the rest of the row is padding"
        assert rows["loss_mask"][i].sum() == np.asarray(s.example()[2]).sum(), "the sample's trained targets"


def test_a_sample_longer_than_a_row_names_the_config_key():
    config = stages.base("test")
    config.data.seq_len = 16
    shapes, ctx = sample_context(config, tts=False)
    with pytest.raises(ValueError, match=r"config\.data\.seq_len=16"):
        single_sample_rows(_samples(ctx, 1), ctx, shapes)
