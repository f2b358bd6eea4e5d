"""Whole-model conversion (omni_jax/convert/omni.py): the 7B release listing, config.json, and
bit-exact round trips of a tiny omni model through the release layout and omni_jax workdirs."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs.common import omni15_model
from omni_jax.convert import omni as oc
from omni_jax.convert.mapping import ConversionError
from omni_jax.convert.safetensors_io import INDEX_NAME, load_state_dict, tensor_shapes
from omni_jax.models.omni import Omni15Config
from tests.conftest import FIXTURES, read_tsv


def _random_like(abstract, seed):
    rs = np.random.RandomState(seed)
    return jax.tree.map(lambda a: (rs.standard_normal(a.shape) * 0.5).astype(a.dtype), abstract)


def _bf16_values(tree):
    return jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16).astype(x.dtype), tree)


def _assert_same(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (p, x), (_, y) in zip(fa, fb):
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(p)
        assert np.array_equal(x, y), jax.tree_util.keystr(p)


@pytest.fixture(scope="module")
def tiny():
    model = omni15_model("tiny")
    cfg = Omni15Config.from_config(model)
    ap, ast = oc.abstract_variables(cfg)
    return dict(model=model, cfg=cfg, ap=ap, ast=ast, params=_random_like(ap, 0), state=_random_like(ast, 1))


@pytest.fixture(scope="module")
def tiny_sd(tiny):
    return oc.export_release(tiny["params"], tiny["state"], tiny["cfg"])


# ------------------------------------------------------------------ the 7B release layout


def test_7b_export_listing_equals_reference_tsv():
    ap, ast = oc.abstract_variables(omni15_model("7b"))  # ShapeDtypeStructs: no 7B weights exist
    got = list(oc.export_release_shapes(omni15_model("7b"), ap, ast).items())
    want = read_tsv("reference_state_dict.tsv")
    assert len(got) == len(want) == 2413
    assert got == want  # names, shapes and order


def test_7b_vocoder_listing_equals_reference_tsv():
    got = list(oc.export_vocoder_shapes(omni15_model("7b"), weight_norm=True).items())
    assert got == read_tsv("reference_vocoder_state_dict.tsv")
    folded = oc.export_vocoder_shapes(omni15_model("7b"), weight_norm=False)
    assert len(folded) == len(got) - sum(n.endswith("weight_g") for n, _ in got)
    assert not any(n.endswith(("weight_g", "weight_v")) for n in folded)
    assert folded["conv_pre.weight"] == dict(got)["conv_pre.weight_v"]


def test_7b_config_json_equals_reference_and_round_trips():
    model = omni15_model("7b")
    got = oc.release_config_json(model)
    with open(os.path.join(FIXTURES, "reference_config.json")) as f:
        want = json.load(f)
    assert got == want
    assert oc.OVERRIDES_KEY not in got
    back = oc.model_config_from_release(json.loads(json.dumps(got)))
    assert Omni15Config.from_config(back) == Omni15Config.from_config(model)


def test_release_constants_agree_with_the_tokenizer_ids():
    from omni_jax.data.special_tokens import RELEASE_IDS

    j = oc.release_config_json(omni15_model("7b"))
    a, v = j["audio_config"], j["video_config"]
    pairs = [(a["audio_start_token_id"], "audio_start"), (a["audio_end_token_id"], "audio_end"),
             (a["audio_pad_token_id"], "audio_pad"), (a["audiogen_start_token_id"], "audiogen_start"),
             (a["audiogen_end_token_id"], "audiogen_end"), (a["audiotext_start_token_id"], "audiotext_start"),
             (v["image_start_token_id"], "img_start"), (v["image_end_token_id"], "img_end"),
             (v["image_pad_token_id"], "img_pad"), (v["video_place_token_id"], "video_place"),
             (v["video_start_token_id"], "video_start"), (v["video_end_token_id"], "video_end")]
    assert [i for i, _ in pairs] == [RELEASE_IDS[n] for _, n in pairs]


# ------------------------------------------------------------------ config.json


def test_tiny_config_json_round_trip(tiny, tmp_path):
    j = oc.release_config_json(tiny["cfg"], torch_dtype="float32")
    # what the release format cannot hold travels under "omni_jax", only where it differs
    over = j[oc.OVERRIDES_KEY]
    assert over["audio_head"] == {"head_dim": 32} and "llm" not in over
    assert j["hidden_size"] == 128 and j["audio_config"]["vq_config"]["codebook_sizes"] == [128, 64, 64, 32, 32, 32, 32, 32]
    (tmp_path / "config.json").write_text(json.dumps(j))
    back = oc.model_config_from_release(str(tmp_path))
    assert isinstance(back, ml_collections.ConfigDict)
    assert Omni15Config.from_config(back) == tiny["cfg"]
    assert Omni15Config.from_config(oc.model_config_from_release(oc.release_config_json(back))) == tiny["cfg"]


def test_config_json_errors():
    j = oc.release_config_json(omni15_model("tiny"))
    with pytest.raises(ValueError, match=r"omni_jax\.audio_head: unknown key 'head_dims'"):
        oc.model_config_from_release({**j, "omni_jax": {"audio_head": {"head_dims": 4}}})
    with pytest.raises(ValueError, match="use_norm_head=true"):
        oc.model_config_from_release({**j, "use_norm_head": True})
    bad = json.loads(json.dumps(j))
    bad["flow_matching_config"]["hop_length"] = 256
    with pytest.raises(ValueError, match="hop_length=256, but the vocoder makes 480"):
        oc.model_config_from_release(bad)


# ------------------------------------------------------------------ round trips


def test_tiny_round_trip_through_sharded_release_directory(tiny, tmp_path):
    d = str(tmp_path / "rel")
    files = oc.save_release(d, tiny["params"], tiny["state"], tiny["model"], dtype=None, max_shard_bytes=1 << 20)
    assert os.path.exists(os.path.join(d, INDEX_NAME)) and sum(f.endswith(".safetensors") for f in files) > 3
    assert os.path.exists(os.path.join(d, "vocoder", "model.safetensors"))
    # the files hold the release's names in its order, nothing else
    assert list(tensor_shapes(d)) != [] and set(tensor_shapes(d)) == set(oc.export_release_shapes(tiny["cfg"]))
    with open(os.path.join(d, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "float32"
    r = oc.load_release(d)
    assert Omni15Config.from_config(r.model_config) == tiny["cfg"]
    _assert_same(r.params, tiny["params"])
    _assert_same(r.state, tiny["state"])


def test_tiny_round_trip_bf16(tiny, tmp_path):
    params, state = _bf16_values(tiny["params"]), _bf16_values(tiny["state"])
    d = str(tmp_path / "bf16")
    oc.save_release(d, params, state, tiny["cfg"], dtype="bfloat16", vocoder_weight_norm=False)
    sd = load_state_dict(d)
    assert {v.dtype.name for v in sd.values()} == {"bfloat16"}
    assert "conv_pre.weight" in load_state_dict(os.path.join(d, "vocoder"))  # folded flavour
    with open(os.path.join(d, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    r = oc.load_release(d)
    _assert_same(r.params, params)  # bf16-representable values come back bit for bit, as fp32
    _assert_same(r.state, state)


def test_vocoder_from_its_own_file(tiny, tmp_path):
    """The release's layout: the main directory without vocoder/, the HiFT state dict elsewhere."""
    from omni_jax.convert.safetensors_io import save_state_dict

    d = str(tmp_path / "rel")
    oc.save_release(d, tiny["params"], tiny["state"], tiny["cfg"], dtype=None, exclude=("vocoder",))
    assert not os.path.exists(os.path.join(d, "vocoder"))
    with pytest.raises(ValueError, match="no vocoder/ state dict.*hift.pt.*vocoder_src="):
        oc.load_release(d)
    hift = str(tmp_path / "elsewhere")
    save_state_dict(hift, oc.export_vocoder(tiny["params"], tiny["cfg"], weight_norm=True))
    os.rename(os.path.join(hift, "model.safetensors"), os.path.join(hift, "hift.safetensors"))
    r = oc.load_release(d, vocoder_src=os.path.join(hift, "hift.safetensors"))
    _assert_same(r.params, tiny["params"])  # weight_g / weight_v fold back bit for bit
    # where release downloads keep it: a pickle is refused with the conversion command, safetensors found
    os.makedirs(os.path.join(d, "cosy24k_vocoder"))
    open(os.path.join(d, "cosy24k_vocoder", "hift.pt"), "wb").close()
    with pytest.raises(ValueError, match="hift.pt is a pickle.*save_file"):
        oc.load_release(d)
    os.rename(os.path.join(hift, "hift.safetensors"), os.path.join(d, "cosy24k_vocoder", "hift.safetensors"))
    _assert_same(oc.load_release(d).params, tiny["params"])
    assert "vocoder" not in oc.load_release(d, exclude=("vocoder",)).params


def test_partial_imports_the_trainer_uses(tiny, tiny_sd):
    cfg = tiny["cfg"]
    params, state = oc.import_release(tiny_sd, cfg, tiny["ap"], None, exclude=("vocoder",))
    assert state is None and set(params) == set(oc.RELEASE_COMPONENTS)
    _assert_same(params, {k: tiny["params"][k] for k in oc.RELEASE_COMPONENTS})
    params, state = oc.import_release(tiny_sd, cfg, None, tiny["ast"])
    assert params is None
    _assert_same(state, tiny["state"])
    # a tree with only some components (one stage's task) imports those, skipping the others' tensors
    params, _ = oc.import_release(tiny_sd, tiny["model"], {"llm": tiny["ap"]["llm"]}, None)
    _assert_same(params, {"llm": tiny["params"]["llm"]})
    params, _ = oc.import_release(tiny_sd, cfg, tiny["ap"], None, only=["audio_head", "audio_embed"])
    assert set(params) == {"audio_head", "audio_embed"}


# ------------------------------------------------------------------ errors


def _error(tiny, sd, **kw):
    with pytest.raises(ConversionError) as e:
        oc.import_release(sd, tiny["cfg"], tiny["ap"], tiny["ast"], exclude=("vocoder",), **kw)
    return str(e.value)


def test_error_wrong_shape_missing_unexpected(tiny, tiny_sd):
    sd = dict(tiny_sd)
    sd["model.layers.1.mlp.up_proj.weight"] = np.zeros((384, 127), np.float32)
    del sd["audio_head.heads.3.bias"]
    del sd["audio_tokenizer.audio_bridge_model.vq_list.2.codebook.embed"]
    sd["model.visual_model.blocks.0.extra.weight"] = np.zeros((3,), np.float32)
    msg = _error(tiny, sd)
    print(msg)
    assert "model.layers.1.mlp.up_proj.weight: got (384, 127), expected (384, 128)" in msg
    assert "audio_head.heads.3.bias (expected shape (33,))" in msg
    assert "audio_tokenizer.audio_bridge_model.vq_list.2.codebook.embed (expected shape (64, 256))" in msg
    assert "model.visual_model.blocks.0.extra.weight (3,)" in msg
    # tensors of components that are not imported are skipped, unknown names are not
    msg = _error(tiny, {"model.foo.weight": np.zeros(2)}, only=("llm",))
    assert "unexpected" in msg and "model.foo.weight" in msg and "missing" in msg


def test_error_stored_position_table(tiny, tiny_sd):
    sd = dict(tiny_sd)
    sd["audio_tokenizer.audio_model.positional_embedding"] = tiny_sd["audio_tokenizer.audio_model.positional_embedding"] + 0.1
    assert "is not the Whisper sinusoid table" in _error(tiny, sd)


def test_components_the_release_lacks_must_be_named(tiny, tiny_sd):
    ap = dict(tiny["ap"], audio_text_adapter={"kernel": jax.ShapeDtypeStruct((4, 128), np.float32)})
    with pytest.raises(ValueError, match=r"'audio_text_adapter'\] \(training only.*exclude=\('audio_text_adapter',\)"):
        oc.import_release(tiny_sd, tiny["cfg"], ap, None)
    with pytest.raises(ValueError, match="vocoder_src=.*exclude=\\('vocoder',\\)"):
        oc.import_release(tiny_sd, tiny["cfg"], tiny["ap"], None)  # a dict has no vocoder/ next to it
    params, _ = oc.import_release(tiny_sd, tiny["cfg"], ap, None, exclude=("audio_text_adapter", "vocoder"))
    assert "audio_text_adapter" not in params
    with pytest.raises(ValueError, match="unknown component"):
        oc.import_release(tiny_sd, tiny["cfg"], ap, None, exclude=("audio_text_adaptor",))
    params = dict(tiny["params"], audio_text_adapter={"kernel": np.zeros((4, 128), np.float32)})
    with pytest.raises(ValueError, match="exclude=\\('audio_text_adapter',\\)"):
        oc.export_release(params, tiny["state"], tiny["cfg"])
    assert len(oc.export_release(params, tiny["state"], tiny["cfg"], exclude=("audio_text_adapter",))) == len(tiny_sd)
    with pytest.raises(ValueError, match="RVQ codebooks"):
        oc.export_release(tiny["params"], None, tiny["cfg"])


def test_directory_errors(tiny, tmp_path):
    d = str(tmp_path / "rel")
    oc.save_release(d, tiny["params"], tiny["state"], tiny["cfg"], dtype=None, max_shard_bytes=1 << 20)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        oc.save_release(d, tiny["params"], tiny["state"], tiny["cfg"])
    # replacing a sharded save with a single file leaves no stale shards behind
    oc.save_release(d, tiny["params"], tiny["state"], tiny["cfg"], dtype=None, overwrite=True)
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "vocoder"]
    _assert_same(oc.load_release(d).state, tiny["state"])
    # an index that disagrees with its shards
    d2 = str(tmp_path / "rel2")
    oc.save_release(d2, tiny["params"], tiny["state"], tiny["cfg"], dtype=None, max_shard_bytes=1 << 20)
    with open(os.path.join(d2, INDEX_NAME)) as f:
        index = json.load(f)
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00099.safetensors"
    with open(os.path.join(d2, INDEX_NAME), "w") as f:
        json.dump(index, f)
    with pytest.raises(FileNotFoundError, match="model-00001-of-00099.safetensors"):
        oc.load_release(d2)
    index["weight_map"]["model.norm.weight"] = "model-00001-of-" + index["weight_map"]["lm_head.weight"][-17:]
    with open(os.path.join(d2, INDEX_NAME), "w") as f:
        json.dump(index, f)
    with pytest.raises(ValueError, match=r"not in the shard the index names \['model.norm.weight'\]"):
        oc.load_release(d2)
    # pickles are refused, with the way out
    d3 = tmp_path / "pickled"
    d3.mkdir()
    (d3 / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(FileNotFoundError, match="never loads"):
        oc.import_release(str(d3), tiny["cfg"], tiny["ap"], None, exclude=("vocoder",))


# ------------------------------------------------------------------ omni_jax workdirs and the CLI


def test_workdir_as_source_and_export_checks(tiny, tmp_path):
    """An omni_jax workdir (what config.init.checkpoint may name) is read with the same checks."""
    from launch import convert as cli
    from omni_jax.train.checkpoint import Checkpointer
    from omni_jax.train.step import TrainState

    run = str(tmp_path / "run")
    ck = Checkpointer(os.path.join(run, "checkpoints"), async_save=False)
    ts = TrainState(step=np.int32(7), params=tiny["params"], opt_state={"mu": tiny["params"]["audio_embed"]},
                    rng=np.zeros(2, np.uint32), model_state=tiny["state"])
    ck.save(7, ts, {"stage": "s", "stage_index": 0, "stage_step": 7, "step": 7}, {}, force=True)
    ck.close()
    params, state = oc.import_release(run, tiny["model"], tiny["ap"], tiny["ast"])
    _assert_same(params, tiny["params"])
    _assert_same(state, tiny["state"])
    with pytest.raises(ConversionError, match=r"params/llm/norm/scale: got \(128,\), expected \(64,\)"):
        small = dict(tiny["ap"], llm=dict(tiny["ap"]["llm"], norm={"scale": jax.ShapeDtypeStruct((64,), np.float32)}))
        oc.import_release(run, tiny["cfg"], small, None)
    with pytest.raises(ValueError, match="no step 3"):
        oc.import_release(run, tiny["cfg"], tiny["ap"], None, step=3)
    with pytest.raises(cli.app.UsageError, match="task is 'lm'"):
        cli.export_release(ml_collections.ConfigDict(dict(task="lm", model=tiny["model"])), run, str(tmp_path / "o"))
    # a run whose tree has a training-only component: the CLI names the flag
    ck = Checkpointer(os.path.join(run, "checkpoints"), async_save=False)
    ts = ts.replace(params=dict(tiny["params"], audio_text_adapter={"kernel": np.zeros((4, 128), np.float32)}))
    ck.save(8, ts, {"stage": "s"}, {}, force=True)
    ck.close()
    config = ml_collections.ConfigDict(dict(task="omni", model=tiny["model"]))
    with pytest.raises(cli.app.UsageError, match="(?s)training only.*--exclude=NAME"):
        cli.export_release(config, run, str(tmp_path / "o"))
    cli.export_release(config, run, str(tmp_path / "o"), dtype=None, exclude=["audio_text_adapter"])
    _assert_same(oc.load_release(str(tmp_path / "o")).params, tiny["params"])


def test_cli_commands(tiny, tmp_path):
    """Both whole-model modes through absl flags (a subprocess each, as a user runs them)."""
    import subprocess
    import sys

    from omni_jax.train.checkpoint import Checkpointer
    from omni_jax.train.step import TrainState

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = tmp_path / "run"
    ck = Checkpointer(str(run / "checkpoints"), async_save=False)
    ck.save(3, TrainState(step=np.int32(3), params=tiny["params"], opt_state={}, rng=np.zeros(2, np.uint32),
                          model_state=tiny["state"]), {"stage": "s"}, {}, force=True)
    ck.close()
    cfg_file = tmp_path / "omni_cfg.py"
    cfg_file.write_text("import ml_collections\nfrom configs.common import omni15_model\n\n\ndef get_config(arg=None):\n"
                        "    return ml_collections.ConfigDict(dict(task='omni', model=omni15_model('tiny')))\n")
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")

    def cli(*args):
        p = subprocess.run([sys.executable, "-m", "launch.convert", *args], cwd=root, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout

    out = cli("--mode=export_release", f"--config={cfg_file}", f"--workdir={run}", f"--out={tmp_path / 'rel'}",
              "--vocoder_weight_norm=false")
    assert "wrote" in out
    assert load_state_dict(str(tmp_path / "rel"))["lm_head.weight"].dtype.name == "bfloat16"
    out = cli("--mode=import_release", f"--src={tmp_path / 'rel'}", f"--out={tmp_path / 'imp'}")
    assert f"--config.init.checkpoint={tmp_path / 'imp'}" in out
    params, state = oc.import_release(str(tmp_path / "imp"), tiny["cfg"], tiny["ap"], tiny["ast"])
    _assert_same(params, _bf16_values(tiny["params"]) | {"vocoder": tiny["params"]["vocoder"]})
    _assert_same(state, _bf16_values(tiny["state"]))
