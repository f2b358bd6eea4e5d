"""omni_jax/train/warm_start.py: the audio embedding started from the tokenizer's codebooks and adapter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from omni_jax.models.audio_head import AudioEmbed, AudioHeadConfig
from omni_jax.tasks.audio_tokenizer import AudioTextAdapter
from omni_jax.train import warm_start
from omni_jax.train.optimizer import stage_from_config

BOOKS, CODE_DIM, HIDDEN = (16, 8, 8, 4), 12, 32


def _trees(seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    embed = AudioEmbed(AudioHeadConfig(hidden_size=HIDDEN, codebook_sizes=BOOKS, head_dim=8))
    tables = nn.unbox(embed.init(k[0], jnp.zeros((1, 2, len(BOOKS)), jnp.int32))["params"])  # the trainer's are unboxed
    adapter = AudioTextAdapter(HIDDEN)
    ad = nn.unbox(adapter.init(k[1], jnp.zeros((1, 1, CODE_DIM)))["params"])
    ad = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(k[2], x.shape), ad)  # a non-zero bias too
    keys = jax.random.split(k[3], len(BOOKS))
    books = {f"vq_{i}": {"embed": jax.random.normal(keys[i], (n, CODE_DIM))} for i, n in enumerate(BOOKS)}
    params = {"audio_embed": tables, "audio_text_adapter": ad, "llm": {"w": jnp.ones((3,))}}
    return embed, adapter, params, {"audio_bridge": books}


def test_summed_code_embedding_equals_the_adapter_of_the_quantised_feature():
    embed, adapter, params, state = _trees()
    new = warm_start.apply(("audio_embed_from_tokenizer",), params, state)
    codes = np.stack([np.random.default_rng(i).integers(0, n, (3, 20)) for i, n in enumerate(BOOKS)], -1)
    summed = embed.apply({"params": new["audio_embed"]}, jnp.asarray(codes))
    quantised = sum(state["audio_bridge"][f"vq_{i}"]["embed"][codes[..., i]] for i in range(len(BOOKS)))
    want = adapter.apply({"params": params["audio_text_adapter"]}, quantised)
    diff = float(jnp.abs(summed - want).max())
    assert diff < 1e-5, diff  # measured 3.6e-7 (fp32)
    before = embed.apply({"params": params["audio_embed"]}, jnp.asarray(codes))
    assert float(jnp.abs(before - want).max()) > 0.1  # the random tables did not already do it
    for name, t in params["audio_embed"].items():  # the end-of-audio row is kept; nothing else touched
        np.testing.assert_array_equal(new["audio_embed"][name]["embedding"][-1], t["embedding"][-1])
    assert new["llm"] is params["llm"] and new["audio_text_adapter"] is params["audio_text_adapter"]


def test_errors_name_what_is_missing_or_mismatched():
    _, _, params, state = _trees()
    with pytest.raises(ValueError, match=r"no \['audio_text_adapter'\]"):
        warm_start.audio_embed_from_tokenizer({"audio_embed": params["audio_embed"]}, state)
    with pytest.raises(ValueError, match="no audio_bridge codebooks"):
        warm_start.audio_embed_from_tokenizer(params, {})
    state["audio_bridge"]["vq_1"]["embed"] = jnp.zeros((9, CODE_DIM))
    with pytest.raises(ValueError, match=r"codebook vq_1 \(9, 12\).*audio_embed/tables_1 \(9, 32\)"):
        warm_start.audio_embed_from_tokenizer(params, state)
    stage = {"steps": 1, "rules": [(".*", "a")], "groups": {"a": {"lr": 1e-3}}}
    with pytest.raises(ValueError, match=r"config.stages.s.warm_start: unknown \['audio_embed'\]"):
        stage_from_config("s", dict(stage, warm_start=("audio_embed",)))
    assert stage_from_config("s", dict(stage, warm_start=["audio_embed_from_tokenizer"])).warm_start == (
        "audio_embed_from_tokenizer",)


def test_off_by_default_and_named_as_a_comma_separated_string():
    """The test pipeline does not warm start (only the tiny main job does, with the tokenizer's CTC
    loss and the ASR block: tests/configs/test_omni15_configs.py; alone it gave no better held-out
    numbers, README); a user turns it on with
    --config.stages.image_audio_text_1.warm_start=audio_embed_from_tokenizer."""
    from configs.omni15 import pipeline

    c = pipeline.get_config("test")
    assert all(stage_from_config(n, c.stages[n]).warm_start == () for n in c.stage_order)  # tokenizer stages: no key
    c.stages.image_audio_text_1.warm_start = "audio_embed_from_tokenizer"
    assert stage_from_config("image_audio_text_1", c.stages.image_audio_text_1).warm_start == (
        "audio_embed_from_tokenizer",)


def test_sharded_parameters_keep_their_shardings():
    """On the 8-device mesh the new tables come back with the shardings of the ones they replace."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    _, _, params, state = _trees()
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    params = jax.tree.map(lambda x: put(x, P(None, "fsdp") if x.ndim == 2 else P()), params)
    state = jax.tree.map(lambda x: put(x, P("data", None)), state)
    new = warm_start.apply(("audio_embed_from_tokenizer",), params, state)
    want = warm_start.audio_embed_from_tokenizer(jax.device_get(params), jax.device_get(state))
    for name, t in new["audio_embed"].items():
        assert t["embedding"].sharding == params["audio_embed"][name]["embedding"].sharding
        np.testing.assert_allclose(np.asarray(t["embedding"]), np.asarray(want["audio_embed"][name]["embedding"]),
                                   rtol=0, atol=1e-6)


def test_the_trainer_applies_it_on_entering_the_stage_and_not_on_resuming_inside_it(tmp_path, monkeypatch):
    """The trainer's mechanics on the tiny backbone (seconds; the omni pipeline took 154 s in CI): stage b
    warm-starts with a transform that adds 1 to the final norm's scale. After b's first step the scale is
    within one Adam step of (end of a) + 1; a run resumed inside b ends bit-identical to the uninterrupted
    one, so the warm start was not applied again (checked to fail when it is re-applied on resume)."""
    import shutil

    from configs import backbone_tiny
    from omni_jax.train.checkpoint import Checkpointer
    from omni_jax.train.trainer import train

    def plus_one(params, state):
        llm = params["llm"]
        return {"llm": dict(llm, norm={"scale": llm["norm"]["scale"] + 1.0})}

    monkeypatch.setitem(warm_start.WARM_STARTS, "plus_one", plus_one)
    c = backbone_tiny.get_config("runlocal")
    lr = 1e-2
    c.stages.pretrain.steps = 2
    c.stages.b = dict(steps=2, rules=[(r"llm/.*", "llm")], warm_start="plus_one",
                      groups=dict(llm=dict(lr=lr, schedule="constant", warmup_steps=0)))
    c.stage_order = ("pretrain", "b")
    c.checkpoint.every = 1
    run = tmp_path / "run"
    assert train(c, str(run))["step"] == 4
    ck = Checkpointer(str(run / "checkpoints"))
    t2, t3, t4 = (ck.restore_tree(s)["params"]["llm"]["norm"]["scale"] for s in (2, 3, 4))
    gap = float(np.abs(np.asarray(t3) - (np.asarray(t2) + 1.0)).max())
    assert 0 < gap <= lr * 1.01, gap  # entered b: +1, then one Adam step of at most lr
    shutil.rmtree(run / "checkpoints" / "4")
    assert train(c, str(run))["step"] == 4  # resumes at step 3, inside b
    again = Checkpointer(str(run / "checkpoints")).restore_tree(4)["params"]["llm"]["norm"]["scale"]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(t4))
