"""The inputs are wired (issue 14 item 4): on the trained colour-probe fixture (configs/omni_v1/ci.py,
tests/tasks/conftest.py; held-out image QA 1.000, ASR 0.531, chance 1/8), taking away the input
that carries the answer drops the skill to chance.

  ASR, audio replaced by silence: every held-out clip becomes the same 1 s of digital silence (the
  clips are all 1 s long, so the placeholder count says nothing either) and every ASR prompt is
  the same sequence; the model must answer all 64 alike, which scores at most the majority-answer
  rate 1/8 on the balanced set (replies can still differ by float noise between rows, never by
  information). Measured: ASR 0.531 -> 0.125 (one reply for all, 'white'); earlier variants
  0.52 -> 0.000, 0.47 -> 0.078.
  Image QA, images permuted across samples so that no sample keeps an image of its own colour:
  a model that reads the image now scores 0, one that ignores it at most the majority rate 1/8.
  Measured: 1.000 -> 0.000, and the replies follow the images: the shuffled sample i is answered
  as the held-out record whose image it shows (64 of 64), in every variant.
"""

import numpy as np
import pytest

from omni_jax.data import colour_probe
from omni_jax.tasks import probe_eval
from tests.tasks.test_quality_bar import MARGIN

pytestmark = pytest.mark.xdist_group("probe_run")  # tests/conftest.py: one worker builds the run


def test_silencing_the_audio_drops_asr_to_chance(probe_run, probe_replies):
    recs, normal = probe_replies["colour_words"]
    answers = [r["transcript"] for r in recs]
    silent = probe_eval.score(probe_run.task, probe_run.params, probe_run.state, probe_eval.silence(recs), "asr",
                              name="silenced_colour_words")
    acc, acc_silent = probe_eval.accuracy(normal, answers), probe_eval.accuracy(silent, answers)
    majority = probe_eval.majority_rate(answers)
    print(f"ASR held-out accuracy {acc:.3f}; audio silenced {acc_silent:.3f} (replies {sorted(set(silent.values()))}); "
          f"majority-answer rate {majority:.3f}")
    bar = colour_probe.CHANCE + MARGIN["colour_words"]
    assert acc >= bar, f"the fixture must know the skill before the ablation means anything ({acc:.3f} < {bar})"
    assert acc_silent <= majority == colour_probe.CHANCE


def test_shuffling_the_images_drops_image_qa_to_the_majority_rate(probe_run, probe_replies):
    recs, normal = probe_replies["colour_images"]
    answers = [r["answer"] for r in recs]
    shuffled_recs, perm = probe_eval.shuffle_images(recs, seed=0)
    assert all(answers[int(j)] != a for j, a in zip(perm, answers))
    shuffled = probe_eval.score(probe_run.task, probe_run.params, probe_run.state, shuffled_recs, "image_qa",
                                name="shuffled_colour_images")
    acc, acc_shuffled = probe_eval.accuracy(normal, answers), probe_eval.accuracy(shuffled, answers)
    majority = probe_eval.majority_rate(answers)
    follows = float(np.mean([shuffled[i] == normal[int(j)] for i, j in enumerate(perm)]))
    print(f"image QA held-out accuracy {acc:.3f}; images shuffled {acc_shuffled:.3f} (majority-answer rate "
          f"{majority:.3f}); shuffled replies equal to the reply for the image's own record: {follows:.3f}")
    bar = colour_probe.CHANCE + MARGIN["colour_images"]
    assert acc >= bar, f"the fixture must know the skill before the ablation means anything ({acc:.3f} < {bar})"
    assert acc_shuffled <= majority == colour_probe.CHANCE
    assert follows >= acc - 1 / len(recs), "the shuffled replies do not follow the images"
