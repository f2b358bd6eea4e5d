"""omni_jax/data/crossmodal.py + formats: speak a quarter of the caption, continue in text."""

import ml_collections
import numpy as np
import pytest

from configs import common
from omni_jax.data import crossmodal, media
from omni_jax.data.errors import DataError
from omni_jax.data.formats import FORMATS, FormatContext
from omni_jax.data.media_io import MediaConfig, TTSAudio
from omni_jax.data.omni_pipeline import OmniPipeline
from omni_jax.data.sources import open_source
from omni_jax.data.speech_synth import BuiltinTTS, num_samples, synthesize, voices
from omni_jax.data.tokenizer import ByteTokenizer


def test_sentence_split_and_quarter():
    s = crossmodal.split_sentences("one two. three four five six! seven? eight nine ten eleven")
    assert s == ["one two.", "three four five six!", "seven?", "eight nine ten eleven"]
    spoken, rest = crossmodal.split_for_speech("aaaa. bbbb. " + "c" * 30 + ".")
    assert spoken == "aaaa. bbbb." and rest == "c" * 30 + "."  # 10 of 41 characters: closest to a quarter
    spoken, rest = crossmodal.split_for_speech("aaaa. bbbbbbbb. cccccccc. dddd.")
    assert spoken == "aaaa." and rest == "bbbbbbbb. cccccccc. dddd."  # 5 of 28 beats 14 of 28
    spoken, rest = crossmodal.split_for_speech("aaaaaaa. bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.")
    assert spoken == "aaaaaaa." and rest.startswith("bbb")  # at least one sentence stays text
    with pytest.raises(DataError, match="at least two sentences"):
        crossmodal.split_for_speech("only one sentence.")


def test_tts_length_hook_matches_synthesis():
    tts = BuiltinTTS()
    for text, v in (("there is one shape. it is 7!", 3), ("a, b; c", 40)):
        assert tts.num_samples(text, v) == len(tts(text, v))
    assert num_samples("xy", voices()[0]) == len(synthesize("xy", voices()[0]))


def test_crossmodal_image_sample(data_dir):
    tok = ByteTokenizer()
    src = open_source("omni_images/shapes_tiny", "train", data_dir)
    rec = src[0]
    tts = BuiltinTTS()
    ctx = FormatContext(tok, MediaConfig(), chunk_samples=480000, tts=tts)
    rng = np.random.default_rng(0)
    s = FORMATS["crossmodal_image"].fn(rec, ctx, rng, "r0")
    caption = rec["caption"].decode()
    spoken, rest = crossmodal.split_for_speech(caption)
    inp, tgt, msk = s.example()
    assert tok.decode(tgt[msk > 0]) == rest + "<|endoftext|>"
    item = s.audio[0].item
    assert isinstance(item, TTSAudio) and item.text == spoken
    assert len(s.audio[0].positions) == media.audio_token_count(len(tts(spoken, item.voice)))
    text = tok.decode(s.ids)
    assert text.index("<img_end_baichuan>") < text.index("<audio_start_baichuan>") < text.index("<C_A>")
    assert "listen" in text or "continue" in text  # the task prompt
    assert spoken not in text  # the spoken quarter is only audio


def test_crossmodal_video_uses_its_audio_track(data_dir):
    c = ml_collections.ConfigDict()
    c.train = ml_collections.ConfigDict(dict(batch_size=1))
    c.data = common.omni_data(seq_len=512, max_patches=256, max_vision_items=8)
    c.data.mixture = ml_collections.ConfigDict({"xv": dict(dataset="omni_videos/shapes_tiny",
                                                           format="crossmodal_video", weight=1.0)})
    pipe = OmniPipeline(c)
    plan = pipe.plans[0]
    tok = ByteTokenizer()
    narrated = [i for i in range(len(plan.source)) if plan.source[i]["audio"]]
    silent = [i for i in range(len(plan.source)) if not plan.source[i]["audio"]]
    assert narrated and silent
    s, _ = plan.format(narrated[0])
    rec = plan.source[narrated[0]]
    assert not isinstance(s.audio[0].item, TTSAudio)  # the track itself
    _, tgt, msk = s.example()
    reply = tok.decode(tgt[msk > 0])
    assert rec["audio_transcript"].decode() not in reply and reply.endswith("background is grey.<|endoftext|>")
    assert len(s.vision) == 4 and all(v.video for v in s.vision)  # 4 frames at 1 fps
    s2, _ = plan.format(silent[0])
    assert isinstance(s2.audio[0].item, TTSAudio)
    b = pipe.build_rows([0])
    assert not b["_errors"] and (b["audio_token_index"] >= 0).sum() > 0
