"""Throughput metrics (omni_jax/train/trainer.py, step.py): `tokens_per_s` counts real tokens
(segment id > 0), `padded_tokens_per_s` every slot; `real_tokens` is the logged step's count."""

import numpy as np

from configs import backbone_tiny
from omni_jax.tasks.lm import LanguageModelTask as LMTask
from omni_jax.train.metrics import read_metrics
from omni_jax.train.trainer import train


class _HalfPadded:
    """The task's data with the second half of every row made padding (segment id 0)."""

    counts: list = []  # real tokens of each batch handed out, in order

    def __init__(self, data):
        self.data = data

    def __next__(self):
        b = dict(next(self.data))
        seg = np.array(b["segment_ids"])
        seg[:, seg.shape[1] // 2:] = 0
        b["segment_ids"] = seg
        _HalfPadded.counts.append(int((seg > 0).sum()))
        b["loss_mask"] = np.where(seg > 0, b["loss_mask"], 0).astype(b["loss_mask"].dtype)
        return b

    def __getattr__(self, name):
        return getattr(self.data, name)

    def __setattr__(self, name, value):  # e.g. the trainer's defer_errors reaches the wrapped iterator
        if name == "data":
            object.__setattr__(self, name, value)
        else:
            setattr(self.data, name, value)


def test_tokens_per_s_counts_real_tokens_and_padded_rate_counts_slots(tmp_path, monkeypatch):
    _HalfPadded.counts = []
    orig = LMTask.make_data
    monkeypatch.setattr(LMTask, "make_data", lambda self, *a, **k: _HalfPadded(orig(self, *a, **k)))
    c = backbone_tiny.get_config("runlocal")
    c.train.update(steps=3, log_every=1)
    train(c, str(tmp_path))
    recs = read_metrics(str(tmp_path))
    slots = c.train.batch_size * c.data.seq_len
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert len(_HalfPadded.counts) == 3 and max(_HalfPadded.counts) <= slots // 2
    for r, n in zip(recs, _HalfPadded.counts):
        assert r["real_tokens"] == n
        ratio = r["tokens_per_s"] / r["padded_tokens_per_s"]
        print(f"step {r['step']}: real/padded throughput ratio {ratio:.6f} (want {n / slots:.6f})")
        assert abs(ratio - n / slots) < 1e-9
