"""Multi-turn dialogue with the history in the KV cache (omni_jax/generate/dialogue.py): turn 1
equals `OmniRunner.respond`; turn 2 equals a from-scratch generation whose prompt is the whole
conversation (turn 1 prompt + everything the model fed + turn 2 prompt); context overflow is named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.generate.sampling import SamplingParams

GREEDY = SamplingParams(do_sample=False)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    from configs.omni15 import pipeline
    from omni_jax import sharding as shd
    from omni_jax.convert.omni import save_release
    from omni_jax.generate.omni_infer import OmniRunner
    from omni_jax.tasks.omni import OmniTask
    from tests.reference_models import random_params

    d = tmp_path_factory.mktemp("dialogue")
    c = pipeline.get_config("test")
    task = OmniTask(c)
    params = random_params(task, 5)
    state = jax.device_get(shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(6))))
    save_release(str(d / "release"), params, state, task.model_cfg, dtype=None)
    return OmniRunner.load(str(d / "release"))


def test_turns_in_the_cache_equal_generation_from_scratch(runner):
    from omni_jax.generate.dialogue import Dialogue
    from omni_jax.generate.omni_infer import Prompt
    from omni_jax.models.qwen2 import Qwen2LM
    from omni_jax.tasks.omni_eval import generate

    chat = Dialogue(runner, speech=False, max_new_tokens=12, max_context=256)
    q1, q2 = Prompt(text="what colour is the circle?"), Prompt(text="and the square?")
    r1 = chat.turn(q1)
    assert r1.tokens == runner.respond(q1, max_new_tokens=12, text=GREEDY).tokens
    index1, hist1 = chat.index, list(chat.history)
    r2 = chat.turn(q2)
    # from scratch: turn-1 prompt + the tokens turn 1 fed + turn-2 prompt from <C_Q>, one prefill
    p1 = runner.prompt_embeddings(q1, speech=False)
    p2 = runner.prompt_embeddings(q2, speech=False)
    c_q = runner.tokenizer.special("c_q")
    s2 = int(np.argmax(np.asarray(p2["prompt_ids"]) == c_q))
    fed1 = hist1[len(p1["prompt_ids"]):]
    emb_fed = runner.task.model.llm.apply({"params": runner.params["llm"]}, jnp.asarray([fed1]), method=Qwen2LM.embed)[0]
    whole = {"prompt_ids": np.concatenate([np.asarray(p1["prompt_ids"]), fed1, np.asarray(p2["prompt_ids"])[s2:]]),
             "prompt_embeds": np.concatenate([np.asarray(p1["prompt_embeds"]), np.asarray(emb_fed, np.float32),
                                              np.asarray(p2["prompt_embeds"])[s2:]])}
    rows, _ = generate(runner.task, runner.params, [whole], runner.tokenizer, max_new=12, speech=False,
                       seed=0, text=GREEDY, chunked=True)
    print(f"turn 1 {len(r1.tokens)} tokens (cache {index1}), turn 2 {len(r2.tokens)} tokens; from scratch "
          f"{len(rows[0].tokens)} tokens")
    assert r2.tokens == rows[0].tokens
    assert chat.index > index1 + len(p2["prompt_ids"]) - s2


def test_three_spoken_turns_and_overflow(runner):
    from omni_jax.data.audio_features import encode_wav
    from omni_jax.data.speech_synth import synthesize
    from omni_jax.generate.dialogue import Dialogue
    from omni_jax.generate.omni_infer import Prompt

    chat = Dialogue(runner, speech=True, max_new_tokens=64, max_context=512)
    wav = encode_wav(synthesize("where is the red circle?"))
    replies = [chat.turn(Prompt(text="hello")), chat.turn(Prompt(audio=[wav])), chat.turn(Prompt(text="thanks"))]
    assert chat.turns == 3 and all(isinstance(r.text, str) for r in replies)
    assert replies[1].prompt_tokens > replies[2].prompt_tokens  # the spoken question's audio tokens
    assert any(r.audio_frames for r in replies)  # a random model speaks after 50 text tokens
    with pytest.raises(ValueError, match=r"but max_context=512: start a new conversation or raise max_context"):
        for _ in range(20):
            chat.turn(Prompt(text="more"))
