"""omni_jax/data/formats.py `text_qa`: a typed question and its answer as one chat turn, reading other
records through the mixture component's `fields` (the spoken-QA records typed: question = transcript)."""

import dataclasses

import numpy as np
import pytest

from configs.omni15 import stages
from omni_jax.data import default_dataset, formats
from omni_jax.data.errors import DataError
from omni_jax.data.omni_pipeline import sample_context


@pytest.fixture(scope="module")
def ctx_and_record():
    _, ctx = sample_context(stages.base("test"), tts=False)
    return ctx, next(iter(default_dataset.generate("spoken_qa", "test", "tiny")))[1]


def test_the_spoken_question_typed_is_a_chat_turn_whose_answer_alone_is_trained(ctx_and_record):
    ctx, rec = ctx_and_record
    typed = dataclasses.replace(ctx, fields={"question": "transcript"})
    s = formats.FORMATS["text_qa"].fn(rec, typed, np.random.default_rng(0), "r0")
    decode = lambda ids: ctx.tokenizer.decode([int(i) for i in ids])
    assert decode(s.ids) == f"<B_SYS><C_Q>{rec['transcript']}<C_A>{rec['answer']}<|endoftext|>"
    assert decode(s.ids[s.train]) == f"{rec['answer']}<|endoftext|>"
    assert not (s.vision or s.audio or s.speech) and formats.FORMATS["text_qa"].needs == frozenset()


def test_a_missing_field_names_the_fields_option(ctx_and_record):
    ctx, rec = ctx_and_record
    with pytest.raises(DataError, match=r"record has no field 'question' \(fields: \['answer', 'answer_audio', "
                                        r"'audio', 'id', 'transcript'\]\); if another field holds it, map it with "
                                        r"the mixture component's fields=\{'question': '<field>'\}"):
        formats.FORMATS["text_qa"].fn(rec, ctx, np.random.default_rng(0), "r0")
    wrong = dataclasses.replace(ctx, fields={"question": "prompt"})
    with pytest.raises(DataError, match=r"no field 'prompt' .*; the component maps 'question' to it "
                                        r"\(fields=\{'question': 'prompt'\}\)"):
        formats.FORMATS["text_qa"].fn(rec, wrong, np.random.default_rng(0), "r0")
