"""omni_eval.prompts_from_rows cuts packed samples into prompts: chat samples at their last <C_A>
(the reply is the reference), tts samples before their first <audiogen_start> (the text is the
reference; benchmarks/speech_intelligibility.py's TTS rung)."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.data.tokenizer import make_tokenizer
from omni_jax.tasks.omni_eval import prompts_from_rows


def test_chat_and_tts_cuts():
    tok = make_tokenizer("byte", 384)
    c_a, gen, pad, eos = (tok.special(n) for n in ("c_a", "audiogen_start", "audio_pad", "eos"))
    tts = tok.encode("say it.") + [gen, pad, pad, tok.special("audiogen_end"), eos]
    chat = tok.encode("q?") + [c_a] + tok.encode("red.") + [eos]
    tokens = np.zeros((1, 32), np.int32)
    segs = np.zeros((1, 32), np.int32)
    tokens[0, :len(tts)], segs[0, :len(tts)] = tts, 1
    tokens[0, len(tts):len(tts) + len(chat)], segs[0, len(tts):len(tts) + len(chat)] = chat, 2
    embeds = np.arange(32 * 4, dtype=np.float32).reshape(1, 32, 4)  # row position k -> values 4k..4k+3
    task = types.SimpleNamespace(model=types.SimpleNamespace(input_embeddings=lambda p, s, b: (jnp.asarray(embeds), None)))
    batch = {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(segs)}

    (t,) = prompts_from_rows(task, {}, None, batch, tok, stop_at="audiogen_start")
    assert t["reference"] == "say it." and list(t["prompt_ids"]) == tok.encode("say it.")
    np.testing.assert_array_equal(t["prompt_embeds"], embeds[0, :7])

    (c,) = prompts_from_rows(task, {}, None, batch, tok)  # the tts sample has no <C_A>: skipped
    assert c["reference"] == "red." and list(c["prompt_ids"]) == tok.encode("q?") + [c_a]
    np.testing.assert_array_equal(c["prompt_embeds"], embeds[0, len(tts):len(tts) + 3])

    with pytest.raises(ValueError, match="stop_at='eos'; use 'c_a'"):
        prompts_from_rows(task, {}, None, batch, tok, stop_at="eos")
