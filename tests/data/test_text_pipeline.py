"""omni_jax/data/{packing,text,iterator,tokenizer}.py: packing, determinism, host sharding."""

import numpy as np
import pytest

from configs import backbone_tiny
from omni_jax.data.iterator import process_rows
from omni_jax.data.packing import lm_example, pack
from omni_jax.data.text import make_text_iterator
from omni_jax.data.tokenizer import ByteTokenizer


def test_packing_segments_positions_and_shift():
    ex = [lm_example([5, 6, 7], 9), lm_example([1, 2], 9), lm_example(list(range(10, 20)), 9)]
    rows = pack(ex, 8)
    # row 0: [5 6 7 | 1 2], rows 1-2: the 10-token doc split into 8 + 2
    assert rows["tokens"][0].tolist() == [5, 6, 7, 1, 2, 0, 0, 0]
    assert rows["targets"][0].tolist() == [6, 7, 9, 2, 9, 0, 0, 0]
    assert rows["segment_ids"][0].tolist() == [1, 1, 1, 2, 2, 0, 0, 0]
    assert rows["positions"][0].tolist() == [0, 1, 2, 0, 1, 0, 0, 0]
    assert rows["loss_mask"][0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert rows["tokens"][1].tolist() == list(range(10, 18))
    assert rows["tokens"][2][:3].tolist() == [18, 19, 0] and rows["targets"][2][:2].tolist() == [19, 9]


def test_batches_are_a_pure_function_of_the_step():
    c = backbone_tiny.get_config("runlocal")
    a = make_text_iterator(c, start_step=0, process_index=0, process_count=1)
    first = [next(a) for _ in range(5)]
    b = make_text_iterator(c, start_step=3, process_index=0, process_count=1)
    resumed = next(b)
    for f in first[3]:
        assert np.array_equal(resumed[f], first[3][f])
    a.set_state({"step": 1, "fingerprint": a.get_state()["fingerprint"]})
    assert np.array_equal(next(a)["tokens"], first[1]["tokens"])


def test_process_count_does_not_change_the_global_batch():
    c = backbone_tiny.get_config("runlocal")
    whole = make_text_iterator(c, start_step=7, process_index=0, process_count=1).peek(7)
    parts = [make_text_iterator(c, start_step=7, process_index=p, process_count=4).peek(7) for p in range(4)]
    for f in whole:
        assert np.array_equal(np.concatenate([p[f] for p in parts]), whole[f])
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        process_rows(8, 0, 3)


def test_epochs_are_reshuffled_and_cover_the_corpus():
    """Read the batch stream back into documents (a document ends where its target is eos):
    each epoch holds every document of the corpus exactly once, whole and in order inside,
    every target is the next token, and the second epoch comes in another order."""
    from omni_jax.data.text_corpus import generate_documents

    c = backbone_tiny.get_config("runlocal")
    tok = ByteTokenizer(c.model.llm.vocab_size)
    eos = tok.special("eos")
    corpus = generate_documents(c.data.num_documents, c.data.corpus_seed)
    assert len(set(corpus)) == len(corpus) == 200
    it = make_text_iterator(c, start_step=0, process_index=0, process_count=1)
    docs, cur, step, expect = [], [], 0, None
    while len(docs) < 2 * len(corpus):
        b = it.peek(step)
        step += 1
        for r in range(b["tokens"].shape[0]):
            real = b["segment_ids"][r] > 0
            assert not b["loss_mask"][r][~real].any()
            toks, tgts = b["tokens"][r][real].tolist(), b["targets"][r][real].tolist()
            for t, g in zip(toks, tgts):
                assert expect is None or t == expect  # the previous target is this token, across rows too
                cur.append(t)
                expect = None if g == eos else g
                if g == eos:
                    docs.append(tok.decode(cur))
                    cur = []
    first, second = docs[:len(corpus)], docs[len(corpus):2 * len(corpus)]
    print(f"epochs read back from {step} steps: {len(set(first))} and {len(set(second))} distinct documents")
    assert sorted(first) == sorted(corpus) and sorted(second) == sorted(corpus)
    assert first != second and first != corpus  # shuffled, and reshuffled per epoch


def test_resuming_on_other_data_is_refused():
    c = backbone_tiny.get_config("runlocal")
    it = make_text_iterator(c, start_step=0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="different data configuration"):
        it.set_state({"step": 3, "fingerprint": "something-else"})


def test_byte_tokenizer_round_trip_and_specials():
    t = ByteTokenizer()
    s = "the red circle is above the blue star. é"
    assert t.decode(t.encode(s)) == s
    assert t.decode([t.special("img_start"), 104, 105]) == "<img_start_baichuan>hi"
    assert 0 not in t.encode(s)
    with pytest.raises(KeyError, match="unknown special token"):
        t.special("image_start")
