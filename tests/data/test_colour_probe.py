"""omni_jax/data/colour_probe.py: the held-out splits share nothing with training, are balanced
(chance = the majority-answer rate = 1/8), every clip has one length; bad names are errors that
say what exists."""

import collections

import numpy as np
import pytest

from omni_jax.data import colour_probe as cp
from omni_jax.data.audio_features import decode_wav
from omni_jax.data.sources import open_source
from omni_jax.tasks import probe_eval


def test_held_out_splits_are_disjoint_and_balanced():
    for name, key in (("colour_images", "answer"), ("colour_words", "transcript")):
        train, test = cp.records(name, "train"), cp.records(name, "test")
        assert cp.disjointness(train, test) == {"ids": [], "media": [], "colour_shape_pairs": [], "word_voice_pairs": []}
        counts = collections.Counter(r[key] for r in test)
        assert len(counts) == 8 and set(counts.values()) == {len(test) // 8}
        assert probe_eval.majority_rate([r[key] for r in test]) == cp.CHANCE == 0.125
    # the check itself sees what is shared
    images = cp.records("colour_images", "train")
    shared = cp.disjointness(images[:3], images[2:5])
    assert shared["ids"] == [images[2]["id"]] and len(shared["media"]) == 1


def test_clips_have_one_length_and_the_source_serves_the_records():
    words = open_source("probe:colour_words", "test", None)
    assert len(words) == cp.SIZES["colour_words"]["test"]
    lengths = {len(decode_wav(words[i]["audio"])) for i in range(0, len(words), 7)}
    assert lengths == {16000}
    with pytest.raises(ValueError, match="does not fit the 1.0 s clip: raise colour_probe.CLIP_SECONDS"):
        cp.clip(np.zeros(16001, np.float32))
    with pytest.raises(ValueError, match=r"'probe:colour_shapes' is not a colour probe; known: \['probe:colour_"):
        cp.records("colour_shapes", "train")


def test_shuffled_images_never_keep_their_own_answer_and_silence_is_one_clip():
    recs = cp.records("colour_images", "test")
    shuffled, perm = probe_eval.shuffle_images(recs, seed=3)
    assert sorted(perm.tolist()) == list(range(len(recs)))
    assert all(recs[j]["answer"] != r["answer"] and s["image"] == recs[j]["image"] and s["answer"] == r["answer"]
               for r, s, j in zip(recs, shuffled, perm))
    silent = probe_eval.silence(cp.records("colour_words", "test"))
    assert len({r["audio"] for r in silent}) == 1 and not decode_wav(silent[0]["audio"]).any()
    with pytest.raises(ValueError, match="equally many records each"):
        probe_eval.shuffle_images(recs[:9])
