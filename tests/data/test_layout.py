"""omni_jax/data/layout.py: the sequence layout of ARCHITECTURE.md 1.6 and its loss masks."""

import numpy as np
import pytest

from omni_jax.data.layout import SequenceBuilder, speech_targets
from omni_jax.data.special_tokens import RELEASE_IDS
from omni_jax.data.tokenizer import ByteTokenizer


class ReleaseIdsTokenizer(ByteTokenizer):
    """Bytes as in ByteTokenizer, special tokens at the release's ids (no files needed)."""

    def special(self, name):
        return RELEASE_IDS[name]


def test_spans_use_the_release_ids():
    b = SequenceBuilder(ReleaseIdsTokenizer(vocab_size=152064))
    b.system("s").user().image(3, "img").video([2, 1], ["f0", "f1"]).audio(2, "clip")
    b.assistant(speech_reply=True).text("a", train=True).speech(2, "wav", train_audio=True).eos()
    s = b.build()
    R = RELEASE_IDS
    expect = [R["b_sys"], ord("s"), R["c_q"],
              R["img_start"], R["img_pad"], R["img_pad"], R["img_pad"], R["img_end"],
              R["video_start"], R["img_start"], R["video_place"], R["video_place"], R["img_end"],
              R["img_start"], R["video_place"], R["img_end"], R["video_end"],
              R["audio_start"], R["audio_pad"], R["audio_pad"], R["audio_end"],
              R["audiotext_start"], R["c_a"], ord("a"),
              R["audiogen_start"], R["audio_pad"], R["audio_pad"], R["audiogen_end"], R["eos"]]
    assert s.ids.tolist() == expect
    assert (R["video_place"], R["audiotext_start"], R["audiogen_start"]) == (151694, 151697, 151700)
    # placeholder positions per item, in order of appearance
    assert [v.positions.tolist() for v in s.vision] == [[4, 5, 6], [10, 11], [14]]
    assert [v.video for v in s.vision] == [False, True, True]
    assert s.audio[0].positions.tolist() == [18, 19]
    assert s.speech[0].start == 24 and s.speech[0].positions.tolist() == [25, 26]
    # trained tokens: the reply text, <audiogen_start>, eos; never the prompt or placeholders
    trained = [i for i, t in enumerate(s.train) if t]
    assert trained == [23, 24, 28]


def test_loss_mask_is_on_targets():
    tok = ByteTokenizer()
    b = SequenceBuilder(tok).system("").user().text("q?").assistant().text("ok", train=True).eos()
    inp, tgt, msk = b.build().example()
    assert tok.decode(tgt[msk > 0]) == "ok<|endoftext|>"
    assert tok.decode(inp[msk > 0]) == "<C_A>ok"  # the position before each trained token
    assert len(inp) == len(tgt) == len(msk)


def test_interleaved_audio_has_no_audio_loss_and_tts_skips_the_first_text():
    tok = ByteTokenizer()
    s = SequenceBuilder(tok).text("hi", train=True).speech(3, "a", train_audio=False, train_start=False) \
        .text(" yo", train=True).eos().build()
    _, tgt, msk = s.example()
    assert tok.decode(tgt[msk > 0]) == "i yo<|endoftext|>"  # no <audiogen_start>, pads or <audiogen_end>
    assert not s.speech[0].train_audio
    t = SequenceBuilder(tok).text("read me").speech(2, "a", train_audio=True).eos().build()
    _, tgt, msk = t.example()
    assert tok.decode(tgt[msk > 0]) == "<audiogen_start_baichuan><|endoftext|>"
    assert t.speech[0].train_audio


def test_speech_teacher_forcing():
    s = SequenceBuilder(ByteTokenizer()).text("x").speech(3, "a", train_audio=True).eos().build()
    pos, tgt, end = speech_targets(s.speech[0], np.array([10, 11, 12]))
    # <audiogen_start> -> frame 0; pad k -> frame k+1; last pad -> end of audio
    assert pos.tolist() == [1, 2, 3, 4]
    assert tgt.tolist() == [10, 11, 12, -1]
    assert end.tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="3 pads but 2 frames"):
        speech_targets(s.speech[0], np.array([1, 2]))


def test_bad_spans_are_refused():
    b = SequenceBuilder(ByteTokenizer())
    with pytest.raises(ValueError, match="positive token count"):
        b.image(0, "img")
    with pytest.raises(ValueError, match="one token count per frame"):
        b.video([1, 2], ["f"])
