"""omni_jax/data/errors.py: bad records are skipped, counted and reported; budgets stop runs."""

import io
import logging
import struct

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import common
from omni_jax.data import media_io
from omni_jax.data.audio_features import encode_wav
from omni_jax.data.errors import DataError, DataErrorBudgetExceeded, ErrorBudget
from omni_jax.data.omni_pipeline import OmniPipeline, make_omni_iterator
from omni_jax.data.sources import register_memory_source


def png(h=56, w=56, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def good(k):
    return {"id": f"good{k}", "image": png(seed=k), "caption": f"picture {k}.", "question": "q?", "answer": "a."}


def config(name, fmt="caption", errors=None, batch=2, seq_len=96):
    c = ml_collections.ConfigDict()
    c.train = ml_collections.ConfigDict(dict(batch_size=batch))
    c.data = common.omni_data(seq_len=seq_len, max_patches=32, max_vision_items=2, max_audio_chunks=2,
                              max_speech_chunks=1, mel_frames=300)
    c.data.errors.update(errors or dict(max_fraction=0.5, min_samples=1))
    c.data.mixture = ml_collections.ConfigDict({"c": dict(dataset=f"memory:{name}", format=fmt, weight=1.0)})
    return c


def test_bad_records_are_skipped_counted_and_named(caplog):
    recs = [good(k) for k in range(6)]
    recs += [
        {"id": "corrupt", "image": b"\x89PNG not really", "caption": "x."},
        {"id": "too_long", "image": png(), "caption": "word " * 100},
        {"id": "wrong_type", "image": png(), "caption": 123},
        {"id": "no_caption", "image": png()},
        {"id": "big_image", "image": png(112, 112), "caption": "too many patches."},
        {"id": "nul_byte", "image": png(), "caption": "a\x00b."},
    ]
    register_memory_source("err_mix", recs)
    with caplog.at_level(logging.WARNING, logger="omni_jax.data"):
        pipe = OmniPipeline(config("err_mix"))
    s = pipe.plan_errors.summary()
    assert s["seen"] == 12
    assert s["bad"] == {"corrupt_media": 1, "over_long": 2, "wrong_type": 1, "missing_field": 1, "invalid": 1}
    ex = " ".join(sum(s["examples"].values(), []))
    for rid in ("c:corrupt", "c:too_long", "c:wrong_type", "c:no_caption", "c:big_image"):
        assert rid in ex
    assert "tokens 5" in ex and "> config.data.seq_len=96" in ex
    assert "patches 64 > config.data.shapes.max_patches=32" in ex
    assert "field 'caption' must be text, got int" in ex
    assert "c:nul_byte (ValueError: text contains a NUL byte" in ex  # unforeseen failures are skipped too
    assert "skipped record c:corrupt [corrupt_media]" in caplog.text
    # the usable records still train
    assert sorted(pipe.plans[0].valid.tolist()) == list(range(6))
    b = next(make_omni_iterator(config("err_mix"), pipeline=pipe))
    assert b["loss_mask"].sum() > 0


def test_media_that_fails_only_when_decoded_is_skipped_at_build_time(monkeypatch):
    truncated = png(seed=9)[:200]  # the header is intact, the pixels are not
    lying = bytearray(encode_wav(np.zeros(8000, np.float32)))
    lying[40:44] = struct.pack("<I", 2 * 32000)  # header claims 2 s, data holds 0.5 s
    recs = [{"id": "trunc", "image": truncated, "caption": "broken pixels."},
            {"id": "ok", "image": png(), "caption": "fine."}]
    register_memory_source("err_build", recs)
    c = config("err_build", errors=dict(max_fraction=1.0, min_samples=1))
    it = make_omni_iterator(c)
    assert it.pipeline.plan_errors.total_bad == 0
    b = next(it)
    st = it.get_state()["errors"]
    assert st["bad"] == {"corrupt_media": 1} and st["seen"] >= 2
    assert "c:trunc" in it.pipeline.build_errors.summary()["examples"]["corrupt_media"][0]
    assert b["segment_ids"].max() >= 1  # the good record was still packed
    # the one audio reader (soundfile) measures a WAV by its data: a header claiming 2 s for 0.5 s of
    # samples plans and decodes the same 0.5 s
    assert media_io.audio_num_samples(bytes(lying)) == len(media_io.decode_audio(bytes(lying))) == 8000
    # a header reader that believed it (planning 2 s) disagrees with the decoded clip: the record is
    # skipped at build time as a count mismatch
    real = media_io.audio_num_samples
    monkeypatch.setattr(media_io, "audio_num_samples",
                        lambda data, *a, **k: 4 * real(data, *a, **k) if bytes(data) == bytes(lying) else real(data, *a, **k))
    register_memory_source("err_count", [{"id": "lying", "audio": bytes(lying), "transcript": "hello."},
                                         {"id": "ok", "audio": encode_wav(np.zeros(8000, np.float32) + 0.1),
                                          "transcript": "fine."}])
    it = make_omni_iterator(config("err_count", fmt="asr", errors=dict(max_fraction=1.0, min_samples=1)))
    next(it)
    s = it.pipeline.build_errors.summary()
    assert s["bad"] == {"count_mismatch": 1}
    assert "gives 6 tokens in 1 chunk(s) but the sequence has 25 placeholders" in s["examples"]["count_mismatch"][0]


def test_exceeding_the_budget_stops_with_a_clear_message():
    recs = [good(k) for k in range(5)] + [{"id": f"bad{k}", "image": b"junk", "caption": "x."} for k in range(3)]
    register_memory_source("err_budget", recs)
    with pytest.raises(DataErrorBudgetExceeded) as e:
        OmniPipeline(config("err_budget", errors=dict(max_fraction=0.1, min_samples=4)))
    msg = str(e.value)
    assert "3 bad record(s) of 8 seen (37.50%" in msg
    assert "corrupt_media: 3, e.g. c:bad" in msg
    assert "raise config.data.errors.max_fraction / config.data.errors.max_count" in msg
    # build-time errors count against the same kind of budget while training
    recs = [{"id": f"t{k}", "image": png(seed=k)[:150], "caption": "x."} for k in range(4)] + [good(0)]
    register_memory_source("err_budget_build", recs)
    it = make_omni_iterator(config("err_budget_build", errors=dict(max_fraction=0.2, min_samples=2)))
    with pytest.raises(DataErrorBudgetExceeded, match="corrupt_media"):
        for _ in range(3):
            next(it)


def test_flac_audio_and_budget_unit():
    sf = pytest.importorskip("soundfile")
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(np.arange(24000) / 10)).astype(np.float32), 48000, format="FLAC")
    register_memory_source("flac", [{"id": "f", "audio": buf.getvalue(), "transcript": "flac."}])
    it = make_omni_iterator(config("flac", fmt="asr", batch=1))
    b = next(it)
    assert b["audio_mel_lengths"][0, 0] == 8000 // 160 + 1  # 0.5 s at 48 kHz -> 8000 samples at 16 kHz; release: n // 160 + 1
    budget = ErrorBudget(max_fraction=0.5, max_count=2, min_samples=100)
    for k in range(3):
        budget.record(DataError("invalid", "x", f"r{k}"))
    assert budget.exceeded()  # max_count applies before min_samples
    with pytest.raises(ValueError, match="unknown data error kind"):
        DataError("bogus", "x")
    with pytest.raises(ValueError, match=r"config.data.errors: unknown key\(s\) \['max_frac'\]"):
        ErrorBudget.from_config({"max_frac": 0.1})
