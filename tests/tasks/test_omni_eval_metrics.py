"""omni_jax/tasks/omni_eval.py error rates (jiwer on normalised text) and the intelligibility's swapped
control, hand-computed cases."""

import pytest

from omni_jax.tasks.omni_eval import char_error_rate, swapped_control, word_error_rate


def test_character_error_rate():
    assert char_error_rate("kitten", "sitting") == pytest.approx(3 / 7)  # 2 substitutions + 1 insertion
    assert char_error_rate("The red circle.", "the red circle") == 0.0  # case and punctuation normalised
    assert char_error_rate("", "abcd") == 1.0  # all deleted
    assert char_error_rate("abc", "") == 3.0  # insertions over an empty reference (counted per character)


def test_word_error_rate():
    assert word_error_rate("the red circle", "the blue circle.") == pytest.approx(1 / 3)
    assert word_error_rate("a big red circle", "a red circle") == pytest.approx(1 / 3)  # one insertion
    assert word_error_rate("red", "the red circle") == pytest.approx(2 / 3)  # two deletions
    assert word_error_rate("x y", "x y") == 0.0


def test_swapped_control_scores_each_transcript_against_the_other_texts():
    replies = [dict(text="it is 9.", heard="it is 9."), dict(text="It is 9", heard="it is 12."),
               dict(text="red.", heard="it is 12."), dict(text="6 comes next.", heard="6 comes next."),
               dict(text="blue.", heard="blue.")]  # the last one was not spoken
    swapped_control(replies, [0, 1, 2, 3])
    # reply 0: not against reply 1 (the same text once normalised), against 'red.' and '6 comes next.'
    assert replies[0]["intelligibility_cer_swapped"] == pytest.approx(
        (char_error_rate("it is 9.", "red.") + char_error_rate("it is 9.", "6 comes next.")) / 2)
    # a transcript that is the ASR's one sentence ('it is 12.') scores about alike against its own and other texts
    assert replies[2]["intelligibility_cer_swapped"] == pytest.approx(
        (2 * char_error_rate("it is 12.", "it is 9.") + char_error_rate("it is 12.", "6 comes next.")) / 3)
    # a heard voice: its own text 0, the others far
    assert char_error_rate(replies[3]["heard"], replies[3]["text"]) == 0.0
    assert replies[3]["intelligibility_cer_swapped"] > 0.5
    assert "intelligibility_cer_swapped" not in replies[4]  # not spoken


def test_swapped_control_is_absent_when_every_reply_says_the_same():
    replies = [dict(text="it is 12.", heard="it is 12."), dict(text="It is 12", heard="it is 1.")]
    swapped_control(replies, [0, 1])
    assert not any("intelligibility_cer_swapped" in x for x in replies)
