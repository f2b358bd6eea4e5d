"""omni_jax/tasks/omni_eval.py error rates (jiwer on normalised text), hand-computed cases."""

import pytest

from omni_jax.tasks.omni_eval import char_error_rate, word_error_rate


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
