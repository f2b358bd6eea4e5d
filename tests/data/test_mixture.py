"""omni_jax/data/mixture.py + omni_pipeline.py: determinism, resume, sharding, weights, stages."""

import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import common
from omni_jax.data import stage_mixtures
from omni_jax.data.mixture import parse_mixture, stage_data
from omni_jax.data.omni_pipeline import OmniPipeline, make_omni_iterator

MIX = {
    "caption": dict(dataset="omni_images/shapes_tiny", format="caption", weight=0.3),
    "asr": dict(dataset="omni_speech/shapes_tiny", format="asr", weight=0.2),
    "crossmodal": dict(dataset="omni_images/shapes_tiny", format="crossmodal_image", weight=0.1),
    "text": dict(dataset="omni_text/shapes_tiny", format="text", weight=0.4, split_long=True),
}


def make_config(mixture=MIX, batch=4, seed=0):
    c = ml_collections.ConfigDict()
    c.train = ml_collections.ConfigDict(dict(batch_size=batch))
    c.data = common.omni_data(seq_len=192, max_patches=64, max_vision_items=6, max_audio_chunks=2,
                              max_speech_chunks=2, mel_frames=600)
    c.data.seed = seed
    c.data.mixture = ml_collections.ConfigDict(mixture)
    c.stages = ml_collections.ConfigDict()
    return c


@pytest.fixture(scope="module")
def pipe(data_dir):
    return OmniPipeline(make_config())


def equal(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_batches_are_a_pure_function_of_the_step(pipe):
    c = make_config()
    a = make_omni_iterator(c, pipeline=pipe)
    first = [next(a) for _ in range(4)]
    b = make_omni_iterator(c, start_step=2, pipeline=pipe)
    assert equal(next(b), first[2])
    a.set_state({"step": 1, "fingerprint": a.get_state()["fingerprint"]})
    assert equal(next(a), first[1])
    # a fresh pipeline (planning again, from the footprint cache) gives the same batches
    fresh = make_omni_iterator(c, start_step=3)
    assert equal(next(fresh), first[3])
    assert any(f.endswith(".npz") for f in os.listdir(os.path.join(os.environ["OMNI_JAX_DATA_DIR"], "omni_jax_plans")))


def test_process_count_does_not_change_the_global_batch(pipe):
    c = make_config()
    whole = make_omni_iterator(c, start_step=5, pipeline=pipe).peek(5)
    for procs in (2, 4):
        parts = [make_omni_iterator(c, start_step=5, process_index=p, process_count=procs, pipeline=pipe).peek(5)
                 for p in range(procs)]
        for f in whole:
            assert np.array_equal(np.concatenate([p[f] for p in parts]), whole[f]), f


def test_mixture_weights_are_fractions_of_rows(pipe):
    names = [p.comp.name for p in pipe.plans]
    comps = np.array([pipe.rows[r][0] for r in range(1000)])
    for k, p in enumerate(pipe.plans):
        assert abs((comps == k).mean() - p.comp.weight) < 0.01, names[k]
    # a batch's `component` field names the component of every packed position
    b = pipe.build_rows(range(8))
    for i in range(8):
        ids = set(b["component"][i][b["segment_ids"][i] > 0].tolist())
        assert ids == {pipe.rows[i][0]}
        assert (b["component"][i][b["segment_ids"][i] == 0] == -1).all()


def test_state_round_trips_through_orbax(pipe, tmp_path):
    from omni_jax.train.checkpoint import Checkpointer

    c = make_config()
    it = make_omni_iterator(c, pipeline=pipe)
    for _ in range(3):
        next(it)
    ck = Checkpointer(str(tmp_path / "ck"), async_save=False)
    state = {"x": np.zeros(2, np.float32)}
    ck.save(3, state, {"stage": "s"}, it.get_state(), force=True)
    ck.wait()
    expected = next(it)
    _, _, data_state = ck.restore(3, {"x": jax.ShapeDtypeStruct((2,), np.float32)})
    ck.close()
    assert data_state["step"] == 3 and "errors" in data_state
    resumed = make_omni_iterator(c, start_step=0, pipeline=pipe)
    resumed.set_state(data_state)
    assert equal(next(resumed), expected)
    with pytest.raises(ValueError, match="different data configuration"):
        make_omni_iterator(make_config(batch=8), pipeline=pipe).set_state(data_state)


def test_seeds_and_epochs_change_the_order(data_dir, pipe):
    other = OmniPipeline(make_config(seed=1))
    assert [pipe.rows[r][0] for r in range(50)] == [other.rows[r][0] for r in range(50)]  # same mixing pattern
    text = [p for p in pipe.plans if p.comp.name == "text"][0]
    text1 = [p for p in other.plans if p.comp.name == "text"][0]
    assert not np.array_equal(text.row(0), text1.row(0))
    n = text.rows_per_epoch()
    assert not np.array_equal(text.row(0), text.row(n))  # epoch 2 is reshuffled
    e0 = np.concatenate([text.row(j) for j in range(n)])
    assert sorted(set(e0[:, 0].tolist())) == sorted(text.valid.tolist())  # an epoch covers every record


def test_stage_override_replaces_the_mixture(data_dir):
    c = make_config()
    c.stages.asr_only = ml_collections.ConfigDict(dict(
        steps=1, rules=[], groups={}, data=dict(mixture=dict(asr=MIX["asr"]), seed=3)))
    d = stage_data(c, "asr_only")
    assert [x.name for x in parse_mixture(d.mixture)] == ["asr"] and d.seed == 3 and d.seq_len == 192
    assert stage_data(c, None).mixture.to_dict() == c.data.mixture.to_dict()
    c.stages.asr_only.data.seq_len = 64
    with pytest.raises(ValueError, match=r"changes \['seq_len'\]"):
        stage_data(c, "asr_only")


def test_bad_mixture_configs_name_the_key():
    with pytest.raises(ValueError, match=r"config.data.mixture.a: unknown key\(s\) \['wieght'\]"):
        parse_mixture({"a": dict(dataset="x", format="text", wieght=1.0)})
    with pytest.raises(ValueError, match="config.data.mixture.a.format='captions' is not a known format"):
        parse_mixture({"a": dict(dataset="x", format="captions", weight=1.0)})
    with pytest.raises(ValueError, match="weight must be > 0"):
        parse_mixture({"a": dict(dataset="x", format="text", weight=0.0)})
    with pytest.raises(ValueError, match="is empty"):
        parse_mixture({})


@pytest.mark.parametrize("stage", stage_mixtures.STAGES)
def test_every_stage_mixture_builds(data_dir, stage):
    c = make_config(stage_mixtures.mixture(stage, "shapes_tiny"), batch=2)
    c.data.seq_len = 512
    c.data.shapes.update(max_patches=256, max_vision_items=12, max_audio_chunks=4, max_speech_chunks=4)
    pipe = OmniPipeline(c)
    first = {}
    for r in range(200):
        first.setdefault(pipe.rows[r][0], r)
        if len(first) == len(pipe.plans):
            break
    b = pipe.build_rows(sorted(first.values()))
    assert not b["_errors"]
    for i in range(len(first)):
        assert b["loss_mask"][i].sum() > 0 or b["speech_loss_mask"][i].sum() > 0


def test_held_out_evaluation_sets_build(data_dir):
    c = make_config(stage_mixtures.evaluation_sets("shapes_tiny"), batch=2)
    c.data.seq_len = 512
    c.data.shapes.update(max_patches=256, max_vision_items=12, max_audio_chunks=4, max_speech_chunks=4)
    pipe = OmniPipeline(c)
    assert {p.comp.split for p in pipe.plans} == {"test"}
    b = pipe.build_rows(range(8))
    assert not b["_errors"] and b["speech_loss_mask"].sum() > 0 and (b["vision_token_index"] >= 0).any()
